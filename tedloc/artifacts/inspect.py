"""``tedloc inspect``: describe artifacts in words, check their files (``--verify``), and
render one image's arrays as a PNG.

``describe`` accepts an HDF5 file, a stage directory (``manifest.json`` + ``shards/``) or
a whole workdir (every stage directory in it).  ``render_image`` draws the 2-D arrays
stored for one image id (maps such as ``cam`` or ``map``) with OpenCV's JET colormap, as a
heat overlay on the image when the artifact's manifest names a dataset and split that can
be opened, otherwise the map alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import cv2
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
from tedloc.errors import ArtifactError, TedlocError

log = logging.getLogger(__name__)

#: How many skipped ids ``describe`` lists by name (the rest are counted).
MAX_LISTED = 20
#: Side of each rendered tile, pixels (the image's aspect ratio is kept).
TILE = 256
#: Weight of the heat map in an overlay (the rest is the image).
OVERLAY_ALPHA = 0.5


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OS":
        return [_decode(v) for v in value.tolist()]
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


def _is_stage_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path / SHARD_DIR).is_dir() or any(path.glob("*.h5"))


# ------------------------------------------------------------------------------ describe

def describe(path: str | Path) -> str:
    """A readable description of an HDF5 file, a stage directory or a workdir."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: not found")
    if path.is_file():
        return _describe_h5(path)
    if _is_stage_dir(path):
        return _describe_stage(path)
    stages = stage_dirs(path, _is_stage_dir)
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
        _check_version(path, _decode(handle.attrs.get("format")), _decode(handle.attrs.get("format_version")))
        attrs = {k: _decode(v) for k, v in handle.attrs.items()} if root_attrs else {}
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
                lines.append(f"{depth}  @{key} = {_short(_decode(value))}")

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


def _shard_files(stage: Path) -> list[Path]:
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

    shards = _shard_files(stage)
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
    elif _is_stage_dir(path):
        _verify_stage(report, path)
    else:
        stages = stage_dirs(path, _is_stage_dir)
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


# ------------------------------------------------------------------------------ render

def _find_image(path: Path, image_id: str) -> list[tuple[Path, Path | None]]:
    """(HDF5 file holding image_id, its stage dir or None) for every match under ``path``."""
    if path.is_file():
        stage = path.parent.parent if path.parent.name == SHARD_DIR else path.parent
        candidates = [(path, stage if (stage / MANIFEST).is_file() else None)]
    elif _is_stage_dir(path):
        candidates = [(f, path) for f in [*_shard_files(path), *sorted(path.glob("*.h5"))]]
    else:
        candidates = [(f, stage) for stage in stage_dirs(path, _is_stage_dir)
                      for f in [*_shard_files(stage), *sorted(stage.glob("*.h5"))]]
    found = []
    for file, stage in candidates:
        try:
            with h5py.File(file, "r") as handle:
                if image_id in _ids(handle) or image_id in handle:
                    found.append((file, stage))
        except OSError:
            continue
    return found


def _ids(handle: h5py.File) -> list[str]:
    if "image_ids" not in handle:
        return []
    return [_decode(v) for v in handle["image_ids"][()]]


def _arrays_of(file: Path, image_id: str) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Every array stored for ``image_id`` (its row of stacked datasets, or its group), and
    each dataset's attributes."""
    out: dict[str, np.ndarray] = {}
    attrs: dict[str, dict[str, Any]] = {}
    with h5py.File(file, "r") as handle:
        ids = _ids(handle)
        if image_id in ids:
            row = ids.index(image_id)
            for name, dset in handle.items():
                if isinstance(dset, h5py.Dataset) and name != "image_ids" and dset.shape[:1] == (len(ids),):
                    out[name] = np.asarray(dset[row])
                    attrs[name] = {k: _decode(v) for k, v in dset.attrs.items()}
        elif isinstance(handle.get(image_id), h5py.Group):
            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    out[name] = np.asarray(obj[()])
                    attrs[name] = {k: _decode(v) for k, v in obj.attrs.items()}

            handle[image_id].visititems(visit)
    return out, attrs


def _boxes_of(arrays: dict[str, np.ndarray], attrs: dict[str, dict[str, Any]],
              stage: Path | None) -> dict[str, tuple[np.ndarray, float]]:
    """name -> (float (K, 4) x0y0x1y1 boxes, side of the square they are measured in).

    Boxes are drawn only when their frame is known: the manifest's ``input_size`` (boxes of
    the resized square input, as pseudo-labels store them)."""
    manifest = _manifest(stage) or {}
    side = manifest.get("input_size") or (manifest.get("config") or {}).get("input_size")
    if not side:
        return {}
    out = {}
    for name, array in arrays.items():
        is_box = attrs.get(name, {}).get("box_format") == "x0y0x1y1" or name.endswith("box")
        if is_box and array.dtype.kind in "fiu" and array.size and array.shape[-1] == 4 and array.ndim <= 2:
            out[name] = (array.reshape(-1, 4).astype(np.float64), float(side))
    return out


def _manifest(stage: Path | None) -> dict[str, Any] | None:
    if stage is None or not (stage / MANIFEST).is_file():
        return None
    try:
        return json.loads((stage / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _load_image(stage: Path | None, image_id: str) -> np.ndarray | None:
    """The image of ``image_id`` from the dataset (and split) the stage's manifest names."""
    from tedloc.data.source import DatasetSource

    manifest = _manifest(stage) or {}
    source = DatasetSource.recorded(manifest, stage / MANIFEST) if stage is not None else None
    split = manifest.get("split") or (manifest.get("config") or {}).get("split")
    if source is None or not split:
        return None
    try:
        dataset = source.open(str(split))
        record = dataset.by_id().get(image_id)
        return dataset.load_image(record) if record is not None else None
    except TedlocError as exc:
        log.warning("cannot open the image of %s from dataset %s [%s] (%s); drawing the map alone",
                    image_id, source, split, exc)
        return None


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(tile, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _heat(scoremap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """BGR uint8 JET rendering of a 2-D map, min-max normalized, resized to ``size`` (w, h)."""
    values = np.nan_to_num(scoremap.astype(np.float32))
    low, high = float(values.min()), float(values.max())
    values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    values = cv2.resize(values, size, interpolation=cv2.INTER_LINEAR)
    return cv2.applyColorMap((values * 255).astype(np.uint8), cv2.COLORMAP_JET)


def render_image(path: str | Path, image_id: str, out_png: str | Path) -> Path:
    """Draw every 2-D array stored for ``image_id`` under ``path`` into ``out_png``.

    One tile per map (``TILE`` pixels high), labelled with the dataset name and its value
    range; over the image when it can be opened, beside the image itself.  Returns the
    PNG path.  Raises :class:`ArtifactError` when the id or a 2-D array is not found.
    """
    path, out_png = Path(path), Path(out_png)
    if not path.exists():
        raise ArtifactError(f"{path}: not found")
    matches = _find_image(path, image_id)
    if not matches:
        raise ArtifactError(f"{path}: no image {image_id!r} in this artifact")
    rows = []
    for file, stage in matches:
        arrays, attrs = _arrays_of(file, image_id)
        maps = {name: a for name, a in arrays.items()
                if a.ndim == 2 and min(a.shape) > 1 and a.shape[-1] != 4 and a.dtype.kind in "fiub"}
        if not maps:
            continue
        image = _load_image(stage, image_id)
        if image is not None:
            height = TILE
            width = max(1, round(image.shape[1] * TILE / image.shape[0]))
            base = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), (width, height), interpolation=cv2.INTER_AREA)
            tiles = [_label(base.copy(), "image")]
        else:
            first = next(iter(maps.values()))
            height, width = TILE, max(1, round(first.shape[1] * TILE / first.shape[0]))
            base, tiles = None, []
        boxes = _boxes_of(arrays, attrs, stage)
        for name, scoremap in maps.items():
            heat = _heat(scoremap, (width, height))
            if base is not None:
                heat = cv2.addWeighted(heat, OVERLAY_ALPHA, base, 1 - OVERLAY_ALPHA, 0)
            for box_name, (box_array, side) in boxes.items():
                scale = np.array([width / side, height / side] * 2)
                for x0, y0, x1, y1 in (box_array * scale).round().astype(int):
                    cv2.rectangle(heat, (x0, y0), (x1, y1), (255, 255, 255), 2)
                log.debug("drew %s on %s", box_name, name)
            stage_name = stage.name if stage is not None else file.stem
            tiles.append(_label(heat, f"{stage_name}/{name} [{float(scoremap.min()):.2g}, "
                                      f"{float(scoremap.max()):.2g}]"))
        rows.append(np.concatenate(tiles, axis=1))
    if not rows:
        raise ArtifactError(f"{path}: image {image_id!r} has no 2-D array to draw")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    out_png.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", np.concatenate(rows, axis=0))
    if not ok:
        raise ArtifactError(f"{out_png}: could not encode the PNG")
    out_png.write_bytes(data.tobytes())
    return out_png
