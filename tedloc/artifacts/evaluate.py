"""Files of the evaluate stage: results.json / results.md, predictions.jsonl, score-map
exports (wsolevaluation layout) and PNG pictures.  Every file is written atomically.

Shards (``tedloc.evaluate``, one row per image, written through
:class:`tedloc.artifacts.store.ShardedWriter`):

========================  =============================  ===========================================
dataset                   dtype, shape                   meaning
========================  =============================  ===========================================
``map``                   float16 (N, S, S)              TeD-Loc map at eval size S (224), in [0, 1]
``cam_map``               float16 (N, S, S)              CAM baseline map for the GT class (optional)
``class_logits``          float32 (N, C)                 TeD-Loc class scores
``cam_class_logits``      float32 (N, C)                 CAM classifier scores (optional)
``label``                 int64 (N,)                     GT class
``image_size``            int32 (N, 2)                   original (width, height)
========================  =============================  ===========================================
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import cv2
import numpy as np

from tedloc.artifacts.atomic import atomic_path, write_json_atomic
from tedloc.errors import ArtifactError

FORMAT = "tedloc.evaluate"
FORMAT_VERSION = 1
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PREDICTIONS = "predictions.jsonl"
OVERLAY_DIR = "overlays"
SCOREMAP_DIR = "scoremaps"
CURVE_PNG = "boxacc_curve.png"

#: Method key -> row label, in table order.
METHOD_LABELS: dict[str, str] = {
    "tedloc": "TeD-Loc (class-agnostic map)",
    "cam_baseline": "CAM baseline (GT-known map)",
    "centre_prior": "Centre prior (no learning)",
}
#: Method key -> the short name of pictures (curve legends, overlay captions).
METHOD_SHORT_NAMES: dict[str, str] = {"tedloc": "TeD-Loc", "cam_baseline": "CAM", "centre_prior": "Centre prior"}
#: Metric key -> column title, in table order.
METRIC_COLUMNS: dict[str, str] = {
    "top1_cls": "Top-1 Cls",
    "top5_cls": "Top-5 Cls",
    "top1_loc": "Top-1 Loc",
    "top5_loc": "Top-5 Loc",
    "gt_known_loc": "GT-known Loc",
    "top1_loc_oracle": "Top-1 Loc (oracle τ)",
    "top5_loc_oracle": "Top-5 Loc (oracle τ)",
    "gt_known_loc_oracle": "GT-known Loc (oracle τ)",
    "max_box_acc_v1": "MaxBoxAccV1",
    "max_box_acc_v2": "MaxBoxAccV2",
    "max_box_acc_v2_iou30": "V2 @IoU30",
    "max_box_acc_v2_iou50": "V2 @IoU50",
    "max_box_acc_v2_iou70": "V2 @IoU70",
    "pxap": "PxAP",
}
PER_CLASS_COLUMNS: dict[str, str] = {
    "num_images": "images",
    "top1_cls": "Top-1 Cls",
    "top5_cls": "Top-5 Cls",
    "top1_loc": "Top-1 Loc",
    "gt_known_loc": "GT-known Loc",
    "top1_loc_oracle": "Top-1 Loc (oracle τ)",
    "max_box_acc_v1": "MaxBoxAccV1",
    "max_box_acc_v2": "MaxBoxAccV2",
}
#: The Loc metrics with every contour's box, in the table beside the Loc mode's.
ALL_CONTOUR_COLUMNS: dict[str, str] = {
    "top1_loc_all_contours": "Top-1 Loc",
    "top5_loc_all_contours": "Top-5 Loc",
    "gt_known_loc_all_contours": "GT-known Loc",
    "oracle_threshold_all_contours": "oracle τ",
    "top1_loc_oracle_all_contours": "Top-1 Loc (oracle τ)",
    "gt_known_loc_oracle_all_contours": "GT-known Loc (oracle τ)",
}

#: The columns of the by-group tables (keys of a group's metrics).
GROUP_COLUMNS: dict[str, str] = {
    "num_images": "images",
    "max_box_acc_v2": "MaxBoxAccV2",
    "top1_loc": "Top-1 Loc",
    "gt_known_loc": "GT-known Loc",
    "gt_known_loc_all_contours": "GT-known Loc, every contour",
    "pxap": "PxAP",
}
#: Group family -> table title.
GROUP_TITLES: dict[str, str] = {
    "by_box_fraction": "By object size (largest GT box / image area)",
    "by_num_boxes": "By number of GT boxes",
}


def _fmt(value: Any, digits: int = 2) -> str:
    """A table cell: "–" for a value not computed, floats with ``digits`` decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ordered_methods(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(key, method)`` of ``results["methods"]`` in table order (:data:`METHOD_LABELS`'s,
    unknown keys last): results.json stores them in sorted-key order."""
    methods = results["methods"]
    order = [k for k in METHOD_LABELS if k in methods] + sorted(k for k in methods if k not in METHOD_LABELS)
    return [(key, methods[key]) for key in order]


def group_table(results: Mapping[str, Any], family: str, *, digits: int = 2) -> list[str]:
    """Markdown lines of one group family (``"by_box_fraction"`` or ``"by_num_boxes"``):
    a row per method × group, :data:`GROUP_COLUMNS` as columns; [] when no method has it."""
    keys = results.get("conventions", {}).get("groups", {}).get(family)
    rows = []
    for _, method in ordered_methods(results):
        groups = method.get(family)
        if not groups:
            continue
        for key in keys or list(groups):
            values = groups.get(key, {})
            rows.append([method["label"], key] + [_fmt(values.get(k), digits) for k in GROUP_COLUMNS])
    if not rows:
        return []
    return _table(["Method", "group"] + list(GROUP_COLUMNS.values()), rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


_GROUP_NOTES = {
    "by_box_fraction": "Images binned by the share of the image's area that its largest GT box covers "
                       "(original pixels, (x1 - x0 + 1)(y1 - y0 + 1) / (width·height)); each bin holds its "
                       "lower edge, not its upper one.  Images without boxes are in no group.  Within a "
                       "group, Top-1 and GT-known Loc are at the method's stored threshold; MaxBoxAcc and "
                       "the oracle τ are the group's own best.",
    "by_num_boxes": "Images with one GT box and with several.  Images without boxes are in no group.",
}


def render_markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: one row per method × metric columns, the by-group tables (method ×
    group), then a per-class table per method."""
    methods: Mapping[str, Any] = results["methods"]
    columns = [k for k in METRIC_COLUMNS
               if any(k in m["overall"] and m["overall"][k] is not None for m in methods.values())]
    conv = results.get("conventions", {})
    lines = [
        f"# Evaluation: {results.get('dataset', '?')} / {results.get('split', '?')}",
        "",
        *([f"**Class-agnostic** ({results.get('left_out', '')}); per-class rows are the dataset's classes.", ""]
          if results.get("class_agnostic") else []),
        f"{results.get('num_images', 0)} images"
        + (f", {len(results.get('skipped', {}))} skipped" if results.get("skipped") else "")
        + ". All values in %.  Top-1/Top-5/GT-known Loc without a mark are at the method's stored "
          "(non-oracle) threshold; \"oracle τ\" columns use the threshold that maximizes GT-known Loc "
          "on this split.  – marks a value not computed"
        + (": the centre prior has no classifier (no Cls, no Top-1/Top-5 Loc) and no threshold chosen "
           "without ground truth (GT-known Loc at the oracle τ only)." if "centre_prior" in methods else "."),
        f"Conventions: maps and boxes at {conv.get('eval_size')}×{conv.get('eval_size')}, threshold grid "
        f"step {conv.get('cam_curve_interval')}, MaxBoxAccV2 over IoU {conv.get('iou_thresholds')}, "
        f"Loc at IoU {conv.get('loc_iou')} "
        f"({'every contour' if conv.get('loc_multi_contour') else 'largest contour'}).",
        "",
    ]
    header = ["Method", "uses GT label for the map", "stored τ", "oracle τ"] + [METRIC_COLUMNS[k] for k in columns]
    rows = []
    for _, method in ordered_methods(results):
        overall = method["overall"]
        rows.append([method["label"], "yes" if method.get("uses_label") else "no",
                     _fmt(overall.get("stored_threshold")), _fmt(overall.get("oracle_threshold"))]
                    + [_fmt(overall.get(k)) for k in columns])
    lines += _table(header, rows)
    lines += _all_contour_table(results)
    for family, title in GROUP_TITLES.items():
        table = group_table(results, family)
        if table:
            lines += ["", f"## {title}", "", _GROUP_NOTES[family], ""] + table
    for _, method in ordered_methods(results):
        per_class = method.get("per_class", {})
        if not per_class:
            continue
        cols = [k for k in PER_CLASS_COLUMNS if any(k in v for v in per_class.values())]
        lines += ["", f"## Per class: {method['label']}", "",
                  "Box metrics at the split's thresholds (no per-class oracle)." , ""]
        lines += _table(["Class"] + [PER_CLASS_COLUMNS[k] for k in cols],
                        [[name] + [_fmt(values.get(k)) for k in cols] for name, values in per_class.items()])
    return "\n".join(lines) + "\n"


def _all_contour_table(results: Mapping[str, Any]) -> list[str]:
    """The Loc metrics with every contour's box (an image counts when any of its boxes reaches
    the Loc IoU), a row per method; [] for results without them."""
    rows = [[method["label"], _fmt(method["overall"].get("stored_threshold"))]
            + [_fmt(method["overall"].get(k)) for k in ALL_CONTOUR_COLUMNS]
            for _, method in ordered_methods(results) if "gt_known_loc_oracle_all_contours" in method["overall"]]
    if not rows:
        return []
    return ["", "## Loc with every contour's box", "",
            "Top-1/Top-5/GT-known Loc when every region above the threshold gives a box (an image counts "
            "when any of them reaches the Loc IoU), beside the table above; the oracle τ is this curve's own.",
            ""] + _table(["Method", "stored τ"] + list(ALL_CONTOUR_COLUMNS.values()), rows)


def write_results(stage_dir: Path, results: Mapping[str, Any]) -> list[str]:
    """Write ``results.json`` and ``results.md``; return their names."""
    write_json_atomic(stage_dir / RESULTS_JSON, results)
    with atomic_path(stage_dir / RESULTS_MD) as tmp:
        tmp.write_text(render_markdown(results), encoding="utf-8")
    return [RESULTS_JSON, RESULTS_MD]


def read_results(stage_dir: str | Path) -> dict[str, Any]:
    path = Path(stage_dir) / RESULTS_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not found; run the evaluate stage first") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from None


@contextlib.contextmanager
def jsonl_writer(path: Path) -> Iterator[TextIO]:
    """A text handle for JSON lines that appears at ``path`` only once complete."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        yield handle


def write_jsonl_line(handle: TextIO, record: Mapping[str, Any]) -> None:
    handle.write(json.dumps(record, sort_keys=True) + "\n")


def scoremap_path(root: Path, image_id: str) -> Path:
    """``<root>/<image id>.npy`` as wsolevaluation's CamDataset reads it; an id that would
    leave ``root`` (absolute, or with ``..``) is refused."""
    rel = PurePosixPath(image_id.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise ArtifactError(f"{image_id!r}: image id cannot be used as a path under {root}")
    return root.joinpath(*rel.parts[:-1], rel.name + ".npy")


def save_scoremap(root: Path, image_id: str, scoremap: np.ndarray) -> Path:
    """Write a float (H, W) map in [0, 1] as float64 ``.npy`` (wsolevaluation checks np.float)."""
    path = scoremap_path(root, image_id)
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.save(handle, np.asarray(scoremap, dtype=np.float64))
    return path


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Write a uint8 RGB (H, W, 3) image as PNG, atomically."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ArtifactError(f"{path}: cannot encode PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())
    return path


def overlay_name(index: int, image_id: str) -> str:
    """A flat, filesystem-safe PNG name for an image id."""
    stem = image_id.rsplit(".", 1)[0] if "." in image_id.rsplit("/", 1)[-1] else image_id
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
    return f"{index:04d}_{safe[-80:]}.png"
