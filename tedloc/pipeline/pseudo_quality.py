"""How close pseudo-labels come to the ground truth a split happens to have: a diagnostic.

Nothing here is used to make pseudo-labels or to train on them; it measures them, e.g. on a
training split whose boxes are kept for diagnostics, or on a held-out split with masks.

Conventions as :mod:`tedloc.pipeline.metrics`: boxes ``x0y0x1y1`` in integer pixels of an
S×S square with inclusive corners and the "+1" IoU; a map's region at level ``l`` is the
set of pixels with ``uint8(map·255) > int(l·255·max)`` (the box extraction's own rule), so
the region and the pseudo box drawn at the same level agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tedloc.pipeline.boxes import iou_matrix, scoremap_to_uint8


def best_box_iou(box: np.ndarray, gt_boxes: np.ndarray) -> float:
    """IoU of one ``x0y0x1y1`` box (4,) with the best-matching of ``gt_boxes`` (K ≥ 1, 4);
    the empty box ``[0, 0, 0, 0]`` (no region) scores 0."""
    box = np.asarray(box, np.float64).reshape(4)
    if not box.any():
        return 0.0
    return float(iou_matrix(box[None], np.asarray(gt_boxes).reshape(-1, 4)).max())


def region(scoremap: np.ndarray, level: float) -> np.ndarray:
    """bool (H, W): the pixels of a float map in [0, 1] above ``level`` (relative to its max),
    by the rule boxes are drawn with (see the module docstring)."""
    u8 = scoremap_to_uint8(np.asarray(scoremap))
    return u8 > int(float(level) * int(u8.max()))


def mask_iou(scoremap: np.ndarray, level: float, mask: np.ndarray) -> float:
    """IoU of the map's :func:`region` at ``level`` with the bool (H, W) GT ``mask`` (same
    shape); 0 when both are empty."""
    found = region(scoremap, level)
    mask = np.asarray(mask, bool)
    if found.shape != mask.shape:
        raise ValueError(f"map {found.shape} and mask {mask.shape} differ in shape")
    union = int(np.logical_or(found, mask).sum())
    return float(np.logical_and(found, mask).sum()) / union if union else 0.0


def summarize(ious: Sequence[float], groups: Sequence[Mapping[str, str]] | None = None) -> dict:
    """``{"num_images", "mean_iou", "iou50"}`` (IoUs as fractions, the share with IoU ≥ 0.5)
    over every image, and the same per group (``groups[i]``: family -> key of image i, as
    :func:`tedloc.pipeline.groups.image_groups` gives) under ``"groups"``."""
    values = np.asarray(ious, np.float64)

    def stats(selected: np.ndarray) -> dict:
        if not len(selected):
            return {"num_images": 0, "mean_iou": None, "iou50": None}
        return {"num_images": int(len(selected)), "mean_iou": float(selected.mean()),
                "iou50": float((selected >= 0.5).mean())}

    out = stats(values)
    if groups is not None:
        if len(groups) != len(values):
            raise ValueError(f"{len(groups)} group entries for {len(values)} images")
        members: dict[str, dict[str, list[int]]] = {}
        for i, image_groups in enumerate(groups):
            for family, key in image_groups.items():
                members.setdefault(family, {}).setdefault(key, []).append(i)
        out["groups"] = {family: {key: stats(values[rows]) for key, rows in keys.items()}
                         for family, keys in members.items()}
    return out
