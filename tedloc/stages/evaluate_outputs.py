"""Evaluate, phase 2: the report's per-image files and pictures (``predictions.jsonl`` lines,
overlays, the BoxAcc curve)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tedloc.artifacts import evaluate as files
from tedloc.data.records import Dataset, Record
from tedloc.errors import InputError
from tedloc.pipeline import metrics, render
from tedloc.pipeline.boxes import boxes_in_original

log = logging.getLogger(__name__)


def overlay_sample(ids: Sequence[str], count: int) -> dict[str, int]:
    """``count`` ids spread evenly over ``ids`` (deterministic) -> their rank."""
    if not ids or count <= 0:
        return {}
    picks = np.unique(np.linspace(0, len(ids) - 1, min(count, len(ids))).round().astype(int))
    return {ids[i]: rank for rank, i in enumerate(picks)}


def prediction_line(record: Record, label: int, logits: np.ndarray, result: metrics.ImageResult,
                     label_names: Sequence[str], model_names: Sequence[str], threshold: float,
                     image_size: tuple[int, int], size: int) -> dict[str, Any]:
    """One line of predictions.jsonl: ``label`` indexes ``label_names``, the logits
    ``model_names`` (the same list unless class-agnostic)."""
    _, top5 = metrics.ranked_classes(logits, model_names)
    return {
        "image_id": record.image_id,
        "label": label,
        "label_name": label_names[label],
        "class": top5[0]["class"],
        "class_name": top5[0]["class_name"],
        "score": top5[0]["score"],
        "top5": top5,
        "threshold": threshold,
        "boxes": boxes_in_original(result.boxes, size, image_size),
        "box": (boxes_in_original(result.box, size, image_size) or [None])[0],
        "iou": None if result.iou is None else round(result.iou, 4),
        "image_size": list(image_size),
    }


def overlay_picture(dataset: Dataset, record: Record, maps: dict[str, np.ndarray],
                     results: dict[str, metrics.ImageResult], logits: dict[str, np.ndarray],
                     names: Sequence[str], image_size: tuple[int, int], size: int,
                     multi_contour: bool) -> np.ndarray:
    """TeD-Loc overlay (and the CAM baseline's beside it): map, predicted box(es) at the stored
    threshold green (the Loc metrics' boxes), GT boxes red."""
    try:
        image = dataset.load_image(record)
    except InputError as exc:  # the image was readable in phase 1; say so rather than stop
        log.warning("overlay of %s left out: %s", record.image_id, exc)
        image = np.zeros((image_size[1], image_size[0], 3), np.uint8)
    panels = []
    for key, scoremap in maps.items():
        result = results[key]
        pred = int(np.argmax(logits[key]))
        caption = f"{'TeD-Loc' if key == 'tedloc' else 'CAM (GT)'}: {names[pred]}"
        boxes = boxes_in_original(result.boxes if multi_contour else result.box, size, image_size)
        panels.append(render.overlay(image, scoremap, caption=caption,
                                     pred_boxes=np.asarray(boxes).reshape(-1, 4), gt_boxes=record.boxes))
    return np.concatenate(panels, axis=1) if len(panels) > 1 else panels[0]


def write_curve(stage_dir: Path, results: dict[str, Any], stored_threshold: float) -> None:
    """``boxacc_curve.png``: BoxAcc against the threshold, TeD-Loc's curves and the baselines'
    V1, the stored threshold marked."""
    curves: dict[str, list[float]] = {}
    for key, method in results["methods"].items():
        short = files.METHOD_SHORT_NAMES[key]
        for name, values in method.get("curves", {}).items():
            if key != "tedloc" and name != "v1":
                continue  # keep the plot readable: the baselines' V1 curves only
            label = "V1" if name == "v1" else name.replace("v2_iou", "V2 IoU")
            curves[f"{short} {label}"] = values
    if not curves:
        return
    thresholds = results["methods"]["tedloc"]["thresholds"]
    picture = render.curve_plot(thresholds, curves, markers={"stored": stored_threshold},
                                title=f"BoxAcc vs. threshold ({results['dataset']} / {results['split']})"[:70])
    files.write_png(stage_dir / files.CURVE_PNG, picture)
