"""Exception types.  Library code raises these; only ``tedloc.cli`` turns them into exit codes.

Every message is one line that names the file (and line, where there is one) and the
problem, so that a user can act on it without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path


class TedlocError(Exception):
    """Base class of every error tedloc reports to the user as a one-line message."""


class ConfigError(TedlocError):
    """A configuration is invalid: unknown key, wrong type, value out of range."""


class InputError(TedlocError):
    """Bad user input: a dataset file, an image, a metadata line.

    Args:
        path: the offending file.
        problem: what is wrong with it.
        line: 1-based line number inside ``path`` when the problem is on one line.
    """

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path = Path(path)
        self.problem = problem
        self.line = line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {problem}")


class ArtifactError(TedlocError):
    """An artifact on disk is unreadable, of an unknown format or version, or incomplete."""


class DamagedFileError(ArtifactError):
    """A file of an artifact is missing, cut short, or has bytes that differ from what was
    written (its checksum does not match).

    Args:
        path: the file.
        problem: what is wrong (``"missing"``, ``"damaged (truncated: ...)"``).
        hint: what to do about it (the command that redoes it).
    """

    def __init__(self, path: str | Path, problem: str, hint: str | None = None):
        self.path = Path(path)
        self.problem = problem
        self.hint = hint
        super().__init__(f"{path}: {problem}" + (f"; {hint}" if hint else ""))


class ConfigMismatchError(ArtifactError):
    """An artifact exists with another config hash than the one asked for."""


class WorkdirLockedError(TedlocError):
    """Another live process holds the lock of the stage directory."""
