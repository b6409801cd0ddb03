"""The box search at every threshold of the grid: an image's best IoU with its GT boxes per
threshold, searching only where a box can reach the IoU that is counted.

Conventions as :mod:`tedloc.pipeline.boxes` (``x0y0x1y1`` integer pixels of the map,
inclusive corners, "+1" IoU) and :mod:`tedloc.pipeline.metrics` (thresholds relative to
the map's maximum, wsolevaluation's).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tedloc.pipeline.boxes import ThresholdBoxes, contour_boxes, iou_matrix, scoremap_to_uint8


def best_ious(scoremap: np.ndarray, gt_boxes: np.ndarray, thresholds: Sequence[float], *,
              multi_contour: bool, floor: float = 0.0) -> np.ndarray:
    """float64 (T,): at each threshold, the best IoU between the map's boxes and ``gt_boxes``.

    Args:
        scoremap: float (H, W) in [0, 1] (checked by the caller).
        gt_boxes: (K ≥ 1, 4) ``x0y0x1y1`` boxes in the map's pixels.
        thresholds: τ values in [0, 1).
        multi_contour: False for V1 (largest contour), True for V2 (every contour).
        floor: thresholds at which :func:`box_iou_bounds` shows that no box can reach this
            IoU are not searched and give 0.0 (for callers that only count IoUs ≥ floor:
            their counts are unchanged).
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    # The best IoU does not depend on the order of a threshold's boxes.
    searched, found = boxes_within_reach(scoremap_to_uint8(scoremap), gt_boxes, thresholds, floor,
                                         largest=not multi_contour, any_order=True)
    ious = np.zeros(len(thresholds))
    if found is not None:
        ious[searched] = best_ious_of(found, gt_boxes, multi_contour=multi_contour)
    return ious


def boxes_within_reach(scoremap_u8: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray, floor: float,
                       **search) -> tuple[np.ndarray, ThresholdBoxes | None]:
    """(bool (T,) thresholds searched, their :func:`contour_boxes` or None if none): every
    threshold at which :func:`box_iou_bounds` leaves some box able to reach IoU ``floor``
    with ``gt_boxes`` (all of them for ``floor`` ≤ 0).  ``search``: contour_boxes' options."""
    if floor > 0:
        searched = box_iou_bounds(scoremap_u8, gt_boxes, thresholds) >= floor
    else:
        searched = np.ones(len(thresholds), bool)
    if not searched.any():
        return searched, None
    return searched, contour_boxes(scoremap_u8, thresholds[searched], **search)


def box_iou_bounds(scoremap_u8: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """float64 (T,): at each threshold, an upper bound of the IoU of any box of the map (any
    contour's, as :func:`contour_boxes` makes them) with any of ``gt_boxes``; ``inf`` where
    no pixel is above the threshold (the empty box is not bounded).

    Every contour (outer or hole) lies in the bounding box of the pixels above the
    threshold, so every box lies in that box widened by one pixel right and down (a box's
    far corner is its rect's ``x + w``, clipped): B.  IoU(b, g) ≤ |b ∩ g| / |g| ≤ |B ∩ g| / |g|.
    Level sets shrink as the threshold rises, and so does the bound: a map's peak far
    from the GT box leaves its high thresholds out of reach.  Costs two (T, H) and (T, W)
    comparisons.
    """
    height, width = scoremap_u8.shape
    levels = (np.asarray(thresholds, np.float64) * int(scoremap_u8.max())).astype(np.int64)
    rows = scoremap_u8.max(axis=1)[None, :] > levels[:, None]   # (T, H): a pixel above in the row
    cols = scoremap_u8.max(axis=0)[None, :] > levels[:, None]   # (T, W)
    y0, y1 = rows.argmax(axis=1), height - 1 - rows[:, ::-1].argmax(axis=1)
    x0, x1 = cols.argmax(axis=1), width - 1 - cols[:, ::-1].argmax(axis=1)
    region = np.stack([x0, y0, np.minimum(x1 + 1, width - 1), np.minimum(y1 + 1, height - 1)], axis=1)
    gt = np.asarray(gt_boxes, np.int64).reshape(-1, 4)
    inter_w = np.minimum(region[:, None, 2], gt[None, :, 2]) - np.maximum(region[:, None, 0], gt[None, :, 0]) + 1
    inter_h = np.minimum(region[:, None, 3], gt[None, :, 3]) - np.maximum(region[:, None, 1], gt[None, :, 1]) + 1
    inter = np.maximum(inter_w, 0) * np.maximum(inter_h, 0)
    gt_area = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
    bounds = (inter / gt_area[None, :]).max(axis=1)
    return np.where(rows.any(axis=1), bounds, np.inf)


def best_ious_of(found: ThresholdBoxes, gt_boxes: np.ndarray, *, multi_contour: bool) -> np.ndarray:
    """float64 (T,) :func:`best_ious` from boxes already found (:func:`contour_boxes`)."""
    if not multi_contour:
        if found.largest is None:
            raise ValueError("V1 needs the largest contours (contour_boxes(..., largest=True))")
        return iou_matrix(found.boxes[found.largest], gt_boxes).max(axis=1)
    # One IoU call over every threshold's boxes (numpy overhead dominates per-call cost).
    return np.maximum.reduceat(iou_matrix(found.boxes, gt_boxes).max(axis=1), found.starts)

