"""``tedloc inspect``: describe artifacts in words and check their files (``--verify``);
``--image`` renders one image's arrays (:mod:`tedloc.artifacts.inspect_image`).

``describe`` accepts an HDF5 file, a stage directory (``manifest.json`` + ``shards/``) or
a whole workdir (every stage directory in it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tedloc.artifacts import integrity
from tedloc.artifacts.atomic import TMP_SUFFIX
from tedloc.artifacts.evaluations import render_evaluations, stage_dirs
from tedloc.artifacts.store import (
    MANIFEST,
    SHARD_DIR,
    check_format,
    is_shard_name,
    stage_file_problems,
    stage_files,
)
from tedloc.errors import ArtifactError

log = logging.getLogger(__name__)

#: How many skipped ids ``describe`` lists by name (the rest are counted).
MAX_LISTED = 20


def decode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OS":
        return [decode_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: ``format_version`` values this tedloc reads; any other is refused rather than misdescribed.
SUPPORTED_VERSIONS = (1,)


def _check_version(where: Path, fmt: Any, version: Any) -> None:
    """Refuse a tedloc artifact of an unknown ``format_version`` (other files pass)."""
    if isinstance(fmt, str) and fmt.startswith("tedloc."):
        check_format(where, fmt, version, fmt, SUPPORTED_VERSIONS)


def is_stage_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path / SHARD_DIR).is_dir() or any(path.glob("*.h5"))


# ------------------------------------------------------------------------------ describe

def describe(path: str | Path) -> str:
    """A readable description of an HDF5 file, a stage directory or a workdir."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: not found")
    if path.is_file():
        return _describe_h5(path)
    if is_stage_dir(path):
        return _describe_stage(path)
    stages = stage_dirs(path, is_stage_dir)
    if not stages:
        raise ArtifactError(f"{path}: no stage directories (manifest.json or shards/) found here")
    names = ", ".join(p.relative_to(path).as_posix() for p in stages)  # evaluations: evaluate/<name>
    parts = [f"workdir {path}: {len(stages)} stage(s): {names}", *map(_describe_stage, stages)]
    return "\n\n".join(p for p in [*parts, render_evaluations(path)] if p)


def _describe_h5(path: Path, indent: str = "", *, root_attrs: bool = True) -> str:
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ArtifactError(f"{path}: not a readable HDF5 file ({exc})") from None
    lines = [f"{indent}{path.name}"]
    with handle:
        _check_version(path, decode_value(handle.attrs.get("format")), decode_value(handle.attrs.get("format_version")))
        attrs = {k: decode_value(v) for k, v in handle.attrs.items()} if root_attrs else {}
        config = attrs.pop("config_json", None)
        for key in sorted(attrs):
            lines.append(f"{indent}  @{key} = {_short(attrs[key])}")
        if config is not None:
            lines.append(f"{indent}  config:")
            try:
                for key, value in sorted(json.loads(config).items()):
                    lines.append(f"{indent}    {key} = {_short(value)}")
            except (json.JSONDecodeError, AttributeError):
                lines.append(f"{indent}    {_short(config)}")

        def visit(name: str, obj: Any) -> None:
            depth = indent + "  " * (name.count("/") + 1)
            if isinstance(obj, h5py.Dataset):
                extra = []
                if obj.compression:
                    extra.append(obj.compression)
                if obj.chunks:
                    extra.append(f"chunks {obj.chunks}")
                lines.append(f"{depth}{name}: {obj.dtype} {obj.shape}"
                             + (f"  [{', '.join(extra)}]" if extra else ""))
            else:
                lines.append(f"{depth}{name}/ (group, {len(obj)} members)")
            for key, value in obj.attrs.items():
                lines.append(f"{depth}  @{key} = {_short(decode_value(value))}")

        handle.visititems(visit)
        # External links (a shard's feature grids live in its grid file): not visited above.
        for name in handle:
            link = handle.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                lines.append(f"{indent}  {name} -> {link.filename}:{link.path}  (external link)")
                try:
                    visit(name, handle[name])
                except (OSError, KeyError) as exc:
                    lines.append(f"{indent}    unresolved ({exc})")
    return "\n".join(lines)


def shard_files(stage: Path) -> list[Path]:
    if not (stage / SHARD_DIR).is_dir():
        return []
    return sorted(p for p in (stage / SHARD_DIR).glob("*.h5") if is_shard_name(p.name))


def _linked_files(stage: Path) -> list[Path]:
    """Files in ``shards/`` that shards link to (the pseudo-labels' grid files)."""
    if not (stage / SHARD_DIR).is_dir():
        return []
    return sorted(p for p in (stage / SHARD_DIR).glob("*.h5") if not is_shard_name(p.name))


def _describe_stage(stage: Path) -> str:
    lines = [f"stage {stage.name} ({stage})"]
    manifest = None
    if (stage / MANIFEST).is_file():
        try:
            manifest = json.loads((stage / MANIFEST).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            lines.append(f"  manifest.json: unreadable ({exc})")
    if isinstance(manifest, dict):
        _check_version(stage / MANIFEST, manifest.get("format"), manifest.get("format_version"))
    finished = bool(manifest and manifest.get("complete"))
    lines.append(f"  finished: {'yes' if finished else 'no (no manifest; resumable)'}")
    if manifest:
        for key in ("format", "format_version", "config_hash", "upstream_hash", "tedloc_version", "created"):
            lines.append(f"  {key}: {manifest.get(key)}")
        shown = {"format", "format_version", "config_hash", "upstream_hash", "tedloc_version", "created",
                 "config", "files", "skipped", "complete"}
        for key in sorted(set(manifest) - shown):
            lines.append(f"  {key}: {_short(manifest[key])}")
        lines.append("  config:")
        for key, value in sorted((manifest.get("config") or {}).items()):
            lines.append(f"    {key} = {_short(value)}")

    shards = shard_files(stage)
    if shards:
        done, skipped, first, missing = 0, {}, None, set()
        for shard in shards:
            try:
                with h5py.File(shard, "r") as handle:
                    done += len(handle["image_ids"]) if "image_ids" in handle else 0
                    skipped.update(json.loads(handle.attrs.get("skipped_json", "{}")))
                    links = [handle.get(name, getlink=True) for name in handle]
                    missing.update(link.filename for link in links if isinstance(link, h5py.ExternalLink)
                                   and not (shard.parent / link.filename).is_file())
            except (OSError, KeyError) as exc:
                lines.append(f"  shard {shard.name}: unreadable ({exc})")
                continue
            first = first or shard
        if manifest is not None and "skipped" in manifest:
            skipped = dict(manifest["skipped"])
        lines.append(f"  images done: {done} in {len(shards)} shard(s); skipped: {len(skipped)}")
        linked = _linked_files(stage)
        if linked:
            size = sum(p.stat().st_size for p in linked) / 1e6
            lines.append(f"  files the shards link to (external links, same folder): {len(linked)}, {size:.1f} MB")
        if missing:
            lines.append(f"  MISSING files the shards link to: {', '.join(sorted(missing))} "
                         "(restore them, or rerun the stage with --overwrite)")
        for image_id, reason in list(sorted(skipped.items()))[:MAX_LISTED]:
            lines.append(f"    skipped {image_id}: {reason}")
        if len(skipped) > MAX_LISTED:
            lines.append(f"    ... and {len(skipped) - MAX_LISTED} more")
        if first is not None:
            lines.append("  datasets (first shard; the others have the same, with their own N):")
            lines.append(_describe_h5(first, indent="    ", root_attrs=False))
    tmp = sorted(stage.rglob(f"*{TMP_SUFFIX}"))
    if tmp:
        lines.append(f"  unfinished temporary files (removed by the next run): {len(tmp)}")
    locks = sorted(p.name for p in stage.glob(".lock*"))
    if locks:
        lines.append(f"  lock files: {', '.join(locks)} (a run is in progress, or was killed)")
    for other in sorted(stage.glob("*.h5")):
        lines.append(_describe_h5(other, indent="  "))
    for other in sorted(p for p in stage.iterdir() if p.is_file() and p.suffix not in (".h5", ".json")
                        and not p.name.startswith(".") and not p.name.endswith(TMP_SUFFIX)):
        lines.append(f"  {other.name}: {other.stat().st_size} bytes")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ verify

@dataclasses.dataclass
class VerifyReport:
    """What ``tedloc inspect --verify`` found: ``problems`` (file, problem) of every missing
    or damaged file; ``unverified`` files without a checksum (written before tedloc recorded
    them); ``checked`` how many files were checked; ``lines`` the report as text."""

    problems: list[tuple[Path, str]]
    unverified: list[Path]
    checked: int
    lines: list[str]

    def render(self) -> str:
        return "\n".join(self.lines)


def verify(path: str | Path) -> VerifyReport:
    """Check every file of an artifact against its checksum: a file, a stage directory
    (the files its manifest lists, and every other HDF5 file and checkpoint in it) or a
    workdir (each stage directory in it)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: not found")
    report = VerifyReport([], [], 0, [])
    if path.is_file():
        _verify_files(report, [(path, {})])
    elif is_stage_dir(path):
        _verify_stage(report, path)
    else:
        stages = stage_dirs(path, is_stage_dir)
        if not stages:
            raise ArtifactError(f"{path}: no stage directories (manifest.json or shards/) found here")
        for stage in stages:
            _verify_stage(report, stage)
    summary = (f"{len(report.problems)} of {report.checked} files damaged or missing" if report.problems
               else f"all {report.checked} files intact")
    if report.unverified:
        summary += f" ({len(report.unverified)} without a checksum, not verified)"
    report.lines.append(summary)
    return report


def _verify_files(report: VerifyReport, files: list[tuple[Path, dict[str, Any]]], indent: str = "") -> None:
    for file, record in files:
        report.checked += 1
        problem = integrity.file_problem(file, record)
        if problem is not None:
            report.problems.append((file, problem))
            report.lines.append(f"{indent}{file}: {problem}")
        elif file.is_file() and not integrity.has_checksum(file):
            report.unverified.append(file)
            report.lines.append(f"{indent}{file}: no checksum (written before tedloc recorded them); not verified")


def _verify_stage(report: VerifyReport, stage: Path) -> None:
    """The files of one stage directory: those its manifest lists, then every other HDF5
    file and checkpoint in it (shards and staging files of an unfinished run)."""
    before, lines_before = len(report.problems), len(report.lines)
    listed: dict[str, dict[str, Any]] = {}
    checked_before = report.checked
    manifest_path = stage / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            manifest = None
            report.problems.append((manifest_path, f"damaged (not valid JSON: {exc})"))
            report.lines.append(f"  {manifest_path}: damaged (not valid JSON: {exc})")
        if isinstance(manifest, dict):
            _check_version(manifest_path, manifest.get("format"), manifest.get("format_version"))
            listed = stage_files(stage, manifest)
            found = stage_file_problems(stage, manifest)
            report.checked += len(listed)
            for name in listed:
                if name in found:
                    report.problems.append((stage / name, found[name]))
                    report.lines.append(f"  {stage / name}: {found[name]}")
                elif (stage / name).is_file() and not integrity.has_checksum(stage / name):
                    report.unverified.append(stage / name)
                    report.lines.append(f"  {stage / name}: no checksum (written before tedloc recorded them); "
                                        "not verified")
    others = sorted(p for pattern in ("*.h5", "*.pt") for p in stage.rglob(pattern)
                    if p.relative_to(stage).as_posix() not in listed and not p.name.endswith(TMP_SUFFIX))
    _verify_files(report, [(p, {}) for p in others], indent="  ")
    damaged = len(report.problems) - before
    state = f"{damaged} damaged or missing" if damaged else "all intact"
    count = report.checked - checked_before
    report.lines.insert(lines_before, f"stage {stage.name} ({stage}): {count} file{'s' * (count != 1)} "
                                      f"checked, {state}")
