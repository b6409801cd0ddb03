"""Boxes from score maps and box IoU, following wsolevaluation (Choe et al., CVPR 2020).

Conventions: boxes are ``x0y0x1y1`` in integer pixel coordinates of the map, both corners
inclusive, so a box's width is ``x1 - x0 + 1`` (the "+1" convention of the field's code).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

EMPTY_BOX = np.zeros((1, 4), dtype=np.int64)


def scoremap_to_uint8(scoremap: np.ndarray) -> np.ndarray:
    """float map in [0, 1], shape (H, W) -> uint8 (H, W) by truncation, as wsolevaluation."""
    return (scoremap * 255).astype(np.uint8)


def boxes_from_map(scoremap: np.ndarray, threshold: float, *, multi_contour: bool = False,
                   scoremap_u8: np.ndarray | None = None) -> np.ndarray:
    """Boxes of the regions of ``scoremap`` above ``threshold`` (relative to its maximum).

    Args:
        scoremap: float (H, W) in [0, 1].
        threshold: τ in [0, 1]; pixels with ``uint8(map·255) > int(τ·max)`` are foreground.
        multi_contour: False: the box of the largest contour (MaxBoxAccV1);
            True: one box per contour (MaxBoxAccV2).
        scoremap_u8: the map already converted by :func:`scoremap_to_uint8` (saves work
            when many thresholds are applied to one map).

    Returns:
        int64 (K, 4) ``x0y0x1y1`` boxes, clipped to the map; ``[[0, 0, 0, 0]]`` when no
        pixel is above the threshold.
    """
    image = scoremap_to_uint8(scoremap) if scoremap_u8 is None else scoremap_u8
    return boxes_at_thresholds(image, [threshold], multi_contour=multi_contour)[0]


@dataclasses.dataclass
class ThresholdBoxes:
    """The boxes of one map at T thresholds, from one contour search per threshold.

    Attributes:
        boxes: int64 (M, 4) ``x0y0x1y1`` boxes of every contour, threshold after threshold
            (a threshold with no region contributes one ``[0, 0, 0, 0]``).
        counts: int64 (T,) rows of ``boxes`` per threshold (≥ 1 each).
        largest: int64 (T,) row of ``boxes`` holding the largest contour's box at each
            threshold (the first of equal areas, as ``max``); None when not asked for.
    """

    boxes: np.ndarray
    counts: np.ndarray
    largest: np.ndarray | None

    @property
    def starts(self) -> np.ndarray:
        """int64 (T,) first row of each threshold's boxes."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def per_threshold(self, *, multi_contour: bool) -> list[np.ndarray]:
        """T arrays (K, 4): every contour's box (V2) or the largest contour's (V1)."""
        if not multi_contour:
            if self.largest is None:
                raise ValueError("the largest contours were not recorded (largest=False)")
            return [self.boxes[row:row + 1].copy() for row in self.largest]
        return [part.copy() for part in np.split(self.boxes, np.cumsum(self.counts)[:-1])]


def contour_boxes(scoremap_u8: np.ndarray, thresholds, *, largest: bool = True,
                  any_order: bool = False) -> ThresholdBoxes:
    """Boxes of every contour of one uint8 (H, W) map at each of ``thresholds``.

    wsolevaluation's box extraction: pixels with ``map > int(τ · max)`` are foreground;
    ``cv2.findContours`` with ``RETR_TREE`` (holes included); a box is ``[x, y, min(x + w,
    W - 1), min(y + h, H - 1)]`` of a contour's bounding rect.  The evaluation's inner loop
    (100 thresholds per image), so:

    * one search gives both V1's box (the largest contour, by ``cv2.contourArea``, when
      ``largest``) and V2's (every contour);
    * a threshold that keeps the same pixels as the previous one (level sets are nested,
      so the same count of pixels means the same set) reuses its boxes, and one that keeps
      none gives ``[0, 0, 0, 0]``, both without a search (counts from one histogram,
      skipped for a single threshold);
    * boxes are converted with array arithmetic once per map, not per threshold;
    * with ``any_order`` (and not ``largest``), for callers that only take the best box,
      ``RETR_LIST``: the same contours as ``RETR_TREE`` without the hierarchy, ~15% faster,
      in another order within a threshold.
    """
    height, width = scoremap_u8.shape
    top = int(scoremap_u8.max())
    # above[t]: how many pixels are > t, for t = 0..255; not counted for one threshold (it
    # cannot reuse a search, and a search that finds nothing gives the empty box anyway).
    above = None
    if len(thresholds) > 1:
        above = scoremap_u8.size - np.cumsum(np.bincount(scoremap_u8.ravel(), minlength=256))
    rects: list[tuple[int, int, int, int]] = []
    counts = np.empty(len(thresholds), np.int64)
    largest_rows = np.empty(len(thresholds), np.int64) if largest else None
    previous_count, previous_first = -1, 0
    retrieval = cv2.RETR_LIST if any_order and not largest else cv2.RETR_TREE
    for k, tau in enumerate(thresholds):
        level = int(float(tau) * top)
        count = None if above is None else int(above[min(level, 255)])
        first = len(rects)
        if count is not None and count == previous_count:
            counts[k] = counts[k - 1]
            rects.extend(rects[previous_first:first])
            if largest:
                largest_rows[k] = largest_rows[k - 1] + (first - previous_first)
        else:
            contours = []
            if count != 0:
                _, binary = cv2.threshold(scoremap_u8, level, 255, cv2.THRESH_BINARY)
                contours = cv2.findContours(binary, retrieval, cv2.CHAIN_APPROX_SIMPLE)[-2]
            if contours:
                rects.extend(map(cv2.boundingRect, contours))
                counts[k] = len(contours)
            else:
                rects.append((0, 0, 0, 0))
                counts[k] = 1
            if largest:
                areas = [cv2.contourArea(contour) for contour in contours] or [0.0]
                largest_rows[k] = first + max(range(len(areas)), key=areas.__getitem__)
        previous_count, previous_first = -1 if count is None else count, first
    boxes = np.array(rects, dtype=np.int64).reshape(-1, 4)
    boxes[:, 2] = np.minimum(boxes[:, 0] + boxes[:, 2], width - 1)
    boxes[:, 3] = np.minimum(boxes[:, 1] + boxes[:, 3], height - 1)
    return ThresholdBoxes(boxes=boxes, counts=counts, largest=largest_rows)


def boxes_at_thresholds(scoremap_u8: np.ndarray, thresholds, *, multi_contour: bool) -> list[np.ndarray]:
    """:func:`boxes_from_map` of one uint8 (H, W) map at each of ``thresholds``, in order
    (:func:`contour_boxes`, split per threshold)."""
    found = contour_boxes(scoremap_u8, thresholds, largest=not multi_contour)
    return found.per_threshold(multi_contour=multi_contour)


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``boxes_a`` (N, 4) with every box in ``boxes_b`` (M, 4) -> (N, M).

    ``x0y0x1y1`` boxes with inclusive corners (areas use ``x1 - x0 + 1``).
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.maximum(ix1 - ix0 + 1, 0) * np.maximum(iy1 - iy0 + 1, 0)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def rescale_boxes(boxes: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Rescale ``x0y0x1y1`` boxes from an image of (width, height) ``from_size`` to ``to_size``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    return boxes * np.array([sx, sy, sx, sy])


def boxes_in_original(boxes: np.ndarray | None, eval_size: int,
                      image_size: tuple[int, int]) -> list[list[float]]:
    """Boxes at ``eval_size``×``eval_size`` -> ``x0y0x1y1`` floats in original pixels (1 decimal).

    ``image_size`` is the original (width, height).  The empty box [0, 0, 0, 0] (no region
    above the threshold) is dropped, so a map without a region gives an empty list.
    """
    if boxes is None:
        return []
    kept = [b for b in np.asarray(boxes).reshape(-1, 4) if b.any()]
    if not kept:
        return []
    scaled = rescale_boxes(np.asarray(kept), (eval_size, eval_size), image_size)
    return [[round(float(v), 1) for v in box] for box in scaled]
