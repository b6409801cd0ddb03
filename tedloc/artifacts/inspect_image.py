"""``tedloc inspect --image``: render one image's arrays as a PNG.

``render_image`` draws the 2-D arrays stored for one image id (maps such as ``cam`` or
``map``) with OpenCV's JET colormap, as a heat overlay on the image when the artifact's
manifest names a dataset and split that can be opened, otherwise the map alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

from tedloc.artifacts.evaluations import stage_dirs
from tedloc.artifacts.inspect import decode_value, is_stage_dir, shard_files
from tedloc.artifacts.manifest import MANIFEST, SHARD_DIR
from tedloc.errors import ArtifactError, TedlocError

log = logging.getLogger(__name__)

#: Side of each rendered tile, pixels (the image's aspect ratio is kept).
TILE = 256
#: Weight of the heat map in an overlay (the rest is the image).
OVERLAY_ALPHA = 0.5


def _find_image(path: Path, image_id: str) -> list[tuple[Path, Path | None]]:
    """(HDF5 file holding image_id, its stage dir or None) for every match under ``path``."""
    if path.is_file():
        stage = path.parent.parent if path.parent.name == SHARD_DIR else path.parent
        candidates = [(path, stage if (stage / MANIFEST).is_file() else None)]
    elif is_stage_dir(path):
        candidates = [(f, path) for f in [*shard_files(path), *sorted(path.glob("*.h5"))]]
    else:
        candidates = [(f, stage) for stage in stage_dirs(path, is_stage_dir)
                      for f in [*shard_files(stage), *sorted(stage.glob("*.h5"))]]
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
    return [decode_value(v) for v in handle["image_ids"][()]]


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
                    attrs[name] = {k: decode_value(v) for k, v in dset.attrs.items()}
        elif isinstance(handle.get(image_id), h5py.Group):
            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    out[name] = np.asarray(obj[()])
                    attrs[name] = {k: decode_value(v) for k, v in obj.attrs.items()}

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
