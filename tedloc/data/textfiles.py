"""Reading the small text index files of datasets (UTF-8, BOM and CRLF tolerated)."""

from __future__ import annotations

from pathlib import Path

from tedloc.data.records import Problems, strict_if_none


def read_lines(path: Path, problems: Problems | None = None, *,
               optional: bool = False) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines of ``path``.

    A missing file is reported (unless ``optional``) and reads as no lines.
    """
    problems = strict_if_none(problems)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        if not optional:
            problems.report(path, "file not found")
        return []
    except UnicodeDecodeError as exc:
        problems.report(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        return []
    except OSError as exc:
        problems.report(path, f"cannot read file ({exc.strerror or exc})")
        return []
    return [(n, s.strip()) for n, s in enumerate(text.splitlines(), 1) if s.strip()]


def split_fields(text: str, sep: str | None = ",") -> list[str]:
    """Fields of one line, stripped (``sep=None`` splits on runs of whitespace)."""
    return [p.strip() for p in text.split(sep)]
