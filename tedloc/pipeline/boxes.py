"""Boxes from score maps and box IoU, following wsolevaluation (Choe et al., CVPR 2020).

Conventions: boxes are ``x0y0x1y1`` in integer pixel coordinates of the map, both corners
inclusive, so a box's width is ``x1 - x0 + 1`` (the "+1" convention of the field's code).
"""

from __future__ import annotations

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


def boxes_at_thresholds(scoremap_u8: np.ndarray, thresholds, *, multi_contour: bool) -> list[np.ndarray]:
    """:func:`boxes_from_map` of one uint8 (H, W) map at each of ``thresholds``, in order.

    The evaluation's inner loop (100 thresholds per image): the map's maximum is taken
    once and boxes are built from ``cv2.boundingRect`` without per-box Python arithmetic.
    Contours: ``cv2.findContours`` with ``RETR_TREE`` (holes included, as wsolevaluation);
    a box is ``[x, y, min(x + w, W - 1), min(y + h, H - 1)]`` of a contour's bounding rect.
    """
    height, width = scoremap_u8.shape
    top = int(scoremap_u8.max())
    out = []
    for tau in thresholds:
        _, binary = cv2.threshold(scoremap_u8, int(float(tau) * top), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        if len(contours) == 0:
            out.append(EMPTY_BOX.copy())
            continue
        if not multi_contour:
            contours = [max(contours, key=cv2.contourArea)]
        rects = np.array([cv2.boundingRect(contour) for contour in contours], dtype=np.int64)
        rects[:, 2] = np.minimum(rects[:, 0] + rects[:, 2], width - 1)
        rects[:, 3] = np.minimum(rects[:, 1] + rects[:, 3], height - 1)
        out.append(rects)
    return out


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
