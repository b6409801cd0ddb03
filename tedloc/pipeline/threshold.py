"""Choose the map threshold τ without ground truth: on training images, against pseudo boxes.

Each training image's map (grid resolution) is processed exactly as evaluate processes
maps (bicubic upsampling to ``size``, min–max normalization when ``normalize``), its
largest-contour box is taken at every τ of the grid 0, step, …, < 1, and compared with
the image's pseudo box (rescaled from ``input_size`` to ``size``).  Criteria:

* ``mean_iou`` (default): the τ with the highest mean IoU (smooth, uses every image);
* ``iou50``: the τ with the highest share of images with IoU ≥ 0.5 (MaxBoxAccV1 against
  pseudo boxes); ties go to the higher mean IoU.

Remaining ties go to the lowest τ.  No GT box is read.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tedloc.pipeline import box_search, metrics
from tedloc.pipeline.boxes import rescale_boxes


@dataclasses.dataclass
class ThresholdChoice:
    """threshold: the chosen τ; thresholds (T,), mean_iou (T,), iou50 (T,) the curves."""

    threshold: float
    criterion: str
    thresholds: np.ndarray
    mean_iou: np.ndarray
    iou50: np.ndarray

    def summary(self) -> dict:
        i = int(np.argmin(np.abs(self.thresholds - self.threshold)))
        return {"threshold": self.threshold, "criterion": self.criterion,
                "mean_iou": float(self.mean_iou[i]), "iou50": float(self.iou50[i])}


def choose_threshold(grid_maps: np.ndarray, pseudo_boxes: np.ndarray, *, input_size: int, size: int = 224,
                     step: float = 0.01, criterion: str = "mean_iou", normalize: bool = True) -> ThresholdChoice:
    """Pick τ on N training maps against their pseudo boxes.

    Args:
        grid_maps: float (N, h, w) maps in [0, 1] at grid resolution.
        pseudo_boxes: float (N, 4) ``x0y0x1y1`` boxes in pixels of the ``input_size`` square.
        input_size: side of the square the pseudo boxes are given in.
        size: side at which maps and boxes are compared (evaluate's ``eval_size``).
        step: threshold grid step.
        criterion: ``mean_iou`` or ``iou50`` (see the module docstring).
        normalize: min–max normalize each upsampled map (evaluate's ``normalize_maps``).
    """
    if criterion not in ("mean_iou", "iou50"):
        raise ValueError(f"unknown threshold criterion {criterion!r}")
    thresholds = metrics.threshold_grid(step)
    if len(grid_maps) == 0:
        raise ValueError("no maps to choose a threshold on")
    boxes = rescale_boxes(np.asarray(pseudo_boxes, np.float32), (input_size, input_size), (size, size))
    ious = np.empty((len(grid_maps), len(thresholds)))
    for n, grid_map in enumerate(np.asarray(grid_maps, np.float32)):
        scoremap = metrics.evaluation_map(grid_map, size, normalize=normalize, image_id=f"train map {n}")
        ious[n] = box_search.best_ious(scoremap, boxes[n:n + 1].astype(np.int64), thresholds, multi_contour=False)
    mean_iou = ious.mean(axis=0)
    iou50 = (ious >= 0.5).mean(axis=0)
    if criterion == "mean_iou":
        best = int(np.argmax(mean_iou))
    else:
        # lexicographic: share first, then mean IoU; argmax takes the lowest τ among ties
        best = int(np.argmax(iou50 * 1e6 + mean_iou))
    return ThresholdChoice(threshold=round(float(thresholds[best]), 6), criterion=criterion,
                           thresholds=thresholds, mean_iou=mean_iou, iou50=iou50)
