"""What scoring one image produces, and the image-independent part of scoring a map reused
for many images (the centre prior).  The counting lives in
:class:`tedloc.pipeline.metrics.LocalizationAccumulator`, whose ``score`` builds these.

Boxes are int64 ``x0y0x1y1`` at eval size (inclusive corners); thresholds index the
accumulator's τ grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tedloc.pipeline.boxes import ThresholdBoxes, contour_boxes, scoremap_to_uint8
from tedloc.pipeline.pxap import PxapAccumulator
from tedloc.pipeline.scoremaps import check_scoremap


@dataclasses.dataclass
class ImageResult:
    """What one image contributed, for per-image outputs.

    ``boxes`` / ``box`` are int64 ``x0y0x1y1`` at eval size, at the stored threshold (every
    contour / the largest); ``iou`` the best IoU there in the Loc mode (None without GT boxes
    or without a stored threshold); ``top1`` / ``top5`` whether the class is right (None for a
    method without a classifier).
    """

    top1: bool | None
    top5: bool | None
    iou: float | None
    boxes: np.ndarray | None
    box: np.ndarray | None


@dataclasses.dataclass
class ImageScore:
    """Everything one image adds to the counts of a :class:`LocalizationAccumulator`, from
    :meth:`LocalizationAccumulator.score`: the same score can be added to several
    accumulators (a split's and its groups'), so a map is searched for boxes once.

    ``v1``, ``loc``: bool (T,) hit at each threshold (MaxBoxAccV1; GT-known Loc in the Loc
    mode); ``v2``: bool (D, T), one row per IoU cut of MaxBoxAccV2; ``stored``: bool (3,)
    GT-known, Top-1 and Top-5 Loc at the stored threshold; ``loc_all`` and ``stored_all`` the
    same as ``loc`` and ``stored`` with every contour's box (whatever the Loc mode).  All None for an image without GT
    boxes (``stored`` also without a stored threshold).  ``top1`` / ``top5`` are None for a
    method without a classifier; ``masks`` the int64 (B,) foreground and background PxAP
    histograms, or None without masks.
    """

    label: int
    top1: bool | None
    top5: bool | None
    v1: np.ndarray | None
    v2: np.ndarray | None
    loc: np.ndarray | None
    stored: np.ndarray | None
    masks: tuple[np.ndarray, np.ndarray] | None
    result: ImageResult
    loc_all: np.ndarray | None = None
    stored_all: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class FixedMap:
    """What scoring a map needs that does not depend on the image, for one map scored for
    many images (the centre prior): from :func:`fix_map`.

    ``scoremap``: float64 (S, S) in [0, 1]; ``boxes``: its :func:`contour_boxes` at every
    threshold of the grid (largest contours recorded); ``pixel_bins``: int64 (S, S), each
    pixel's PxAP bin (:meth:`PxapAccumulator.pixel_bins`).
    """

    scoremap: np.ndarray
    boxes: ThresholdBoxes
    pixel_bins: np.ndarray


def fix_map(scoremap: np.ndarray, thresholds: np.ndarray) -> FixedMap:
    """The :class:`FixedMap` of a float (S, S) map in [0, 1] for a threshold grid: one
    contour search per threshold, once."""
    scoremap = check_scoremap(scoremap)
    return FixedMap(scoremap, contour_boxes(scoremap_to_uint8(scoremap), thresholds, largest=True),
                    PxapAccumulator(thresholds).pixel_bins(scoremap))
