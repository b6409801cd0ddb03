"""WSOL metrics, following wsolevaluation (Choe et al., CVPR 2020) so that numbers compare.

Conventions (each value comes from the evaluate stage's config; defaults are the
field's):

* Maps and boxes are compared at ``eval_size``×``eval_size`` (224): a map is upsampled
  bicubically to that size and min–max normalized (a constant map becomes zeros, as
  wsolevaluation's ``normalize_scoremap``); GT boxes are rescaled from the original image
  size and truncated to integers (wsolevaluation's ``resize_bbox``).
* Boxes are ``x0y0x1y1`` integer pixels with inclusive corners; IoU uses the "+1"
  convention (:func:`tedloc.pipeline.boxes.iou_matrix`).
* A box from threshold τ: :func:`tedloc.pipeline.boxes.boxes_from_map` (largest contour for
  V1, every contour for V2); an image's score at τ is its best IoU over predicted × GT boxes.
* Threshold grid τ ∈ {0, i, 2i, …} below 1 (``np.arange(0, 1, i)``, i = 0.01 by default).
* MaxBoxAcc(δ) = max over τ of the percentage of images whose score is ≥ δ/100;
  V1: largest contour, δ = 50; V2: every contour, mean over δ ∈ {30, 50, 70}.
* PxAP: pixel precision–recall from score histograms over the grid's bins (plus [1, 2) and
  [2, 3]), ignore-mask pixels left out, AP = Σ precision × Δrecall (wsolevaluation's
  ``MaskEvaluator``).
* Top-1 Loc = top-1 class right AND IoU ≥ ``loc_iou``; Top-5 Loc = label among the top 5 AND
  IoU ≥ ``loc_iou``; GT-known Loc = IoU ≥ ``loc_iou``.  Given at a stored (non-oracle)
  threshold and at the oracle one (the τ maximizing GT-known Loc on the split).

Every number is a percentage.  Accumulators are streaming: they keep per-threshold counts
and histograms, never the maps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from tedloc.pipeline.boxes import (
    ThresholdBoxes,
    contour_boxes,
    iou_matrix,
    rescale_boxes,
    scoremap_to_uint8,
)


def threshold_grid(interval: float = 0.01) -> np.ndarray:
    """float64 (T,) thresholds ``0, interval, 2·interval, …`` strictly below 1
    (wsolevaluation's ``np.arange(0, 1, cam_curve_interval)``; 0.01 gives 0 … 0.99)."""
    if not 0 < interval < 1:
        raise ValueError(f"threshold interval must be in (0, 1), got {interval}")
    return np.arange(0, 1, interval)


def check_scoremap(scoremap: np.ndarray, image_id: str = "<map>") -> np.ndarray:
    """Validate a score map: 2-D, no NaN, values in [0, 1]; return it as float64.

    Raises ValueError naming ``image_id`` (a NaN map is never silently repaired).
    """
    scoremap = np.asarray(scoremap)
    if scoremap.ndim != 2:
        raise ValueError(f"{image_id}: score map must be 2-D (H, W), got shape {scoremap.shape}")
    scoremap = scoremap.astype(np.float64, copy=False)
    if np.isnan(scoremap).any():
        raise ValueError(f"{image_id}: score map contains NaN")
    if scoremap.size and (scoremap.min() < 0 or scoremap.max() > 1):
        raise ValueError(f"{image_id}: score map values must be in [0, 1], "
                         f"got min {scoremap.min():.4g}, max {scoremap.max():.4g}")
    return scoremap


def normalize_scoremap(scoremap: np.ndarray, image_id: str = "<map>") -> np.ndarray:
    """Min–max normalize a float (H, W) map to [0, 1]; a constant map gives zeros.

    Same as wsolevaluation's ``normalize_scoremap`` except that NaN is refused (ValueError
    naming ``image_id``) instead of being turned into zeros: NaN means a broken model.
    """
    scoremap = np.asarray(scoremap, dtype=np.float64)
    if np.isnan(scoremap).any():
        raise ValueError(f"{image_id}: score map contains NaN")
    low, high = scoremap.min(), scoremap.max()
    if low == high:
        return np.zeros_like(scoremap)
    return (scoremap - low) / (high - low)


def evaluation_map(grid_map: np.ndarray, size: int = 224, *, normalize: bool = True,
                   image_id: str = "<map>") -> np.ndarray:
    """A model's map at grid resolution → the float32 (size, size) map that is scored.

    Bicubic upsampling, then min–max normalization (wsolevaluation's CAMComputer), or
    with ``normalize=False`` a clip to [0, 1] (bicubic overshoots).
    """
    grid_map = np.asarray(grid_map, dtype=np.float32)
    if grid_map.ndim != 2:
        raise ValueError(f"{image_id}: map must be 2-D (h, w), got shape {grid_map.shape}")
    if np.isnan(grid_map).any():
        raise ValueError(f"{image_id}: score map contains NaN")
    if normalize and grid_map.min() == grid_map.max():
        # Interpolation adds float noise to a constant map, which min–max would blow up.
        return np.zeros((size, size), np.float32)
    resized = cv2.resize(grid_map, (size, size), interpolation=cv2.INTER_CUBIC)
    if normalize:
        return normalize_scoremap(resized, image_id).astype(np.float32)
    return np.clip(resized, 0.0, 1.0)


def gt_boxes_at_eval_size(boxes: np.ndarray, image_size: tuple[int, int], eval_size: int = 224
                          ) -> np.ndarray:
    """``x0y0x1y1`` boxes in original pixels of a (width, height) image → int64 (K, 4) at
    ``eval_size``×``eval_size``, truncated like wsolevaluation's ``resize_bbox``."""
    scaled = rescale_boxes(boxes, image_size, (eval_size, eval_size))
    return scaled.astype(np.int64)


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


def topk_hits(logits: np.ndarray, label: int, ks: Sequence[int] = (1, 5)) -> dict[int, bool]:
    """Whether ``label`` is among the ``k`` highest of float (C,) ``logits``, for each k
    (k is capped at C).  Ties are broken by lower class index, like ``np.argsort``."""
    order = np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")
    return {k: bool(label in order[:min(k, len(order))]) for k in ks}


def pxap_from_histograms(true_hist: np.ndarray, false_hist: np.ndarray) -> float:
    """PxAP (percent) from score histograms of foreground and background pixels.

    Histograms are in ascending bin order (last bins [1, 2), [2, 3]); precision and recall
    are taken at each bin's left edge from the top, AP = Σ precision[i] · (recall[i] −
    recall[i−1]) over points where something is predicted (wsolevaluation's MaskEvaluator).
    Raises ValueError when there is no foreground pixel or no prediction at all.
    """
    tp = np.asarray(true_hist, dtype=np.float64)[::-1].cumsum()
    fp = np.asarray(false_hist, dtype=np.float64)[::-1].cumsum()
    num_true = tp[-1] if len(tp) else 0.0
    if num_true <= 0:
        raise ValueError("PxAP: no foreground pixel in the ground-truth masks")
    predicted = tp + fp
    if (predicted <= 0).all():
        raise ValueError("PxAP: no pixel predicted as foreground")
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1), 0.0)
    recall = tp / num_true
    keep = predicted[1:] > 0
    return float((precision[1:] * np.diff(recall))[keep].sum() * 100.0)


class PxapAccumulator:
    """Streaming PxAP: histograms of map values over foreground and background pixels.

    Bins: ``[τ_0, τ_1), …, [τ_{T-1}, 1), [1, 2), [2, 3]`` (wsolevaluation's right edges
    ``thresholds + [1, 2, 3]``).
    """

    def __init__(self, thresholds: np.ndarray):
        self.edges = np.append(np.asarray(thresholds, dtype=np.float64), [1.0, 2.0, 3.0])
        self.true_hist = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.false_hist = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.count = 0

    def add(self, scoremap: np.ndarray, foreground: np.ndarray, ignore: np.ndarray | None = None) -> None:
        """Add one image: float (H, W) map in [0, 1], bool (H, W) foreground mask, optional
        bool (H, W) ignore mask (ignored pixels that are not foreground are not scored)."""
        foreground = np.asarray(foreground, dtype=bool)
        if foreground.shape != scoremap.shape:
            raise ValueError(f"mask shape {foreground.shape} differs from map shape {scoremap.shape}")
        background = ~foreground
        if ignore is not None:
            background &= ~np.asarray(ignore, dtype=bool)
        self.true_hist += np.histogram(scoremap[foreground], bins=self.edges)[0]
        self.false_hist += np.histogram(scoremap[background], bins=self.edges)[0]
        self.count += 1

    def compute(self) -> float:
        return pxap_from_histograms(self.true_hist, self.false_hist)


@dataclasses.dataclass
class ImageResult:
    """What one image contributed, for per-image outputs.

    ``boxes`` / ``box`` are int64 ``x0y0x1y1`` at eval size, at the stored threshold (every
    contour / the largest); ``iou`` the best IoU there in the Loc mode (None without GT boxes
    or without a stored threshold); ``top1`` / ``top5`` whether the class is right.
    """

    top1: bool
    top5: bool
    iou: float | None
    boxes: np.ndarray | None
    box: np.ndarray | None


class LocalizationAccumulator:
    """Streaming WSOL metrics of one method over a split (overall and per class).

    Args:
        num_classes: C.
        thresholds: the τ grid (:func:`threshold_grid`).
        iou_thresholds: δ values in percent for MaxBoxAccV2 (30, 50, 70).
        v1_iou: δ of MaxBoxAccV1 (50).
        loc_iou: δ of Top-1 / Top-5 / GT-known Loc (50).
        loc_multi_contour: whether the Loc metrics use every contour (V2-style) or the
            largest one (the classic single box).
        stored_threshold: the non-oracle τ (chosen without GT), or None.
    """

    def __init__(self, num_classes: int, thresholds: np.ndarray, *,
                 iou_thresholds: Sequence[int] = (30, 50, 70), v1_iou: int = 50, loc_iou: int = 50,
                 loc_multi_contour: bool = False, stored_threshold: float | None = None):
        self.num_classes = num_classes
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.iou_thresholds = tuple(int(d) for d in iou_thresholds)
        self.v1_iou = int(v1_iou)
        self.loc_iou = int(loc_iou)
        self.loc_multi_contour = loc_multi_contour
        self.stored_threshold = stored_threshold
        #: The lowest IoU that any count compares with (δ/100, as wsolevaluation).
        self.lowest_cut = min(*self.iou_thresholds, self.v1_iou, self.loc_iou) / 100
        num_t, num_d = len(self.thresholds), len(self.iou_thresholds)
        c = num_classes
        self.n_images = np.zeros(c, np.int64)          # every image (classification)
        self.n_boxed = np.zeros(c, np.int64)           # images with ≥ 1 GT box (box metrics)
        self.top1 = np.zeros(c, np.int64)
        self.top5 = np.zeros(c, np.int64)
        self.v1_hits = np.zeros((c, num_t), np.int64)  # IoU ≥ v1_iou, largest contour
        self.v2_hits = np.zeros((c, num_d, num_t), np.int64)
        self.loc_hits = np.zeros((c, num_t), np.int64)  # GT-known at loc_iou, Loc mode
        self.top1_loc_hits = np.zeros((c, num_t), np.int64)
        self.top5_loc_hits = np.zeros((c, num_t), np.int64)
        self.stored_hits = np.zeros((c, 3), np.int64)   # GT-known, Top-1, Top-5 Loc at stored τ
        self.pxap = PxapAccumulator(self.thresholds)

    def add(self, scoremap: np.ndarray, logits: np.ndarray, label: int, gt_boxes: np.ndarray | None,
            *, image_id: str = "<map>", foreground: np.ndarray | None = None,
            ignore: np.ndarray | None = None) -> ImageResult:
        """Add one image.

        Args:
            scoremap: float (S, S) map at eval size, values in [0, 1] (validated: ValueError
                naming ``image_id`` on NaN or out-of-range values).
            logits: float (C,) class scores of the method.
            label: the GT class.
            gt_boxes: int (K, 4) ``x0y0x1y1`` GT boxes at eval size; None or K = 0: the image
                counts for classification (and PxAP) only.
            foreground, ignore: bool (S, S) GT masks for PxAP, or None.
        """
        scoremap = check_scoremap(scoremap, image_id)
        if not 0 <= label < self.num_classes:
            raise ValueError(f"{image_id}: label {label} outside 0..{self.num_classes - 1}")
        hits = topk_hits(logits, label, (1, 5))
        self.n_images[label] += 1
        self.top1[label] += hits[1]
        self.top5[label] += hits[5]
        if foreground is not None:
            self.pxap.add(scoremap, foreground, ignore)

        boxes = box = None
        iou = None
        u8 = scoremap_to_uint8(scoremap)
        if self.stored_threshold is not None:  # one search gives every contour's box and the largest's
            stored = contour_boxes(u8, [self.stored_threshold])
            boxes = stored.per_threshold(multi_contour=True)[0]
            box = stored.per_threshold(multi_contour=False)[0]
        if gt_boxes is None or len(gt_boxes) == 0:
            return ImageResult(hits[1], hits[5], None, boxes, box)

        gt_boxes = np.asarray(gt_boxes).reshape(-1, 4)
        self.n_boxed[label] += 1
        # Only IoUs at or above the lowest cut are counted: thresholds at which no box can
        # reach it are not searched (their IoUs stay 0; every count is unchanged).
        # One search for V1 and V2.
        searched, found = boxes_within_reach(u8, gt_boxes, self.thresholds, self.lowest_cut)
        v1, v2 = np.zeros(len(self.thresholds)), np.zeros(len(self.thresholds))
        if found is not None:
            v1[searched] = best_ious_of(found, gt_boxes, multi_contour=False)
            v2[searched] = best_ious_of(found, gt_boxes, multi_contour=True)
        # Compare IoU with δ/100 exactly as wsolevaluation does (iou >= delta / 100).
        self.v1_hits[label] += v1 >= self.v1_iou / 100
        for d, delta in enumerate(self.iou_thresholds):
            self.v2_hits[label, d] += v2 >= delta / 100
        loc_curve = (v2 if self.loc_multi_contour else v1) >= self.loc_iou / 100
        self.loc_hits[label] += loc_curve
        self.top1_loc_hits[label] += loc_curve & hits[1]
        self.top5_loc_hits[label] += loc_curve & hits[5]
        if self.stored_threshold is not None:
            iou = float(iou_matrix(boxes if self.loc_multi_contour else box, gt_boxes).max())
            ok = iou >= self.loc_iou / 100
            self.stored_hits[label] += [ok, ok and hits[1], ok and hits[5]]
        return ImageResult(hits[1], hits[5], iou, boxes, box)

    _COUNTS = ("n_images", "n_boxed", "top1", "top5", "v1_hits", "v2_hits", "loc_hits",
               "top1_loc_hits", "top5_loc_hits", "stored_hits")

    def empty_like(self) -> LocalizationAccumulator:
        """A fresh accumulator with the same settings (for a worker's share of the images)."""
        return LocalizationAccumulator(
            self.num_classes, self.thresholds, iou_thresholds=self.iou_thresholds, v1_iou=self.v1_iou,
            loc_iou=self.loc_iou, loc_multi_contour=self.loc_multi_contour,
            stored_threshold=self.stored_threshold)

    def merge(self, other: LocalizationAccumulator) -> None:
        """Add the counts of ``other`` (same settings) to this one: sums, so the result does
        not depend on how the images were split."""
        if (other.num_classes, other.iou_thresholds, other.stored_threshold) != (
                self.num_classes, self.iou_thresholds, self.stored_threshold) or not np.array_equal(
                other.thresholds, self.thresholds):
            raise ValueError("cannot merge accumulators with different settings")
        for name in self._COUNTS:
            getattr(self, name).__iadd__(getattr(other, name))
        self.pxap.true_hist += other.pxap.true_hist
        self.pxap.false_hist += other.pxap.false_hist
        self.pxap.count += other.pxap.count

    # ------------------------------------------------------------------ results

    def _overall(self) -> dict[str, Any]:
        """Metrics over every class."""
        rows = slice(None)
        n_images = int(self.n_images.sum())
        n_boxed = int(self.n_boxed.sum())

        def pct(count: Any, total: int) -> float | None:
            return float(100.0 * count / total) if total else None

        out: dict[str, Any] = {
            "num_images": n_images,
            "num_images_with_boxes": n_boxed,
            "top1_cls": pct(self.top1[rows].sum(), n_images),
            "top5_cls": pct(self.top5[rows].sum(), n_images),
        }
        if n_boxed:
            v1_curve = 100.0 * self.v1_hits[rows].sum(axis=0) / n_boxed
            v2_curves = 100.0 * self.v2_hits[rows].sum(axis=0) / n_boxed  # (D, T)
            loc_curve = 100.0 * self.loc_hits[rows].sum(axis=0) / n_boxed
            # The oracle τ of the Loc metrics: the one maximizing GT-known Loc (first maximum).
            oracle = int(np.argmax(loc_curve))
            out["max_box_acc_v1"] = float(v1_curve.max())
            out["max_box_acc_v1_threshold"] = float(self.thresholds[int(np.argmax(v1_curve))])
            per_delta = v2_curves.max(axis=1)
            for delta, value in zip(self.iou_thresholds, per_delta, strict=True):
                out[f"max_box_acc_v2_iou{delta}"] = float(value)
            out["max_box_acc_v2"] = float(np.mean(per_delta))
            out["oracle_threshold"] = float(self.thresholds[oracle])
            out["gt_known_loc_oracle"] = float(loc_curve[oracle])
            out["top1_loc_oracle"] = float(100.0 * self.top1_loc_hits[rows].sum(axis=0)[oracle] / n_boxed)
            out["top5_loc_oracle"] = float(100.0 * self.top5_loc_hits[rows].sum(axis=0)[oracle] / n_boxed)
            if self.stored_threshold is not None:
                stored = self.stored_hits[rows].sum(axis=0)
                out["gt_known_loc"] = pct(stored[0], n_boxed)
                out["top1_loc"] = pct(stored[1], n_boxed)
                out["top5_loc"] = pct(stored[2], n_boxed)
        return out

    def curves(self) -> dict[str, list[float]]:
        """BoxAcc (percent) at each threshold: ``v1`` and ``v2_iou<δ>`` for each δ."""
        n_boxed = int(self.n_boxed.sum())
        if not n_boxed:
            return {}
        out = {"v1": (100.0 * self.v1_hits.sum(axis=0) / n_boxed).tolist()}
        v2 = 100.0 * self.v2_hits.sum(axis=0) / n_boxed
        for delta, curve in zip(self.iou_thresholds, v2, strict=True):
            out[f"v2_iou{delta}"] = curve.tolist()
        return out

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """Overall metrics, per-class metrics and BoxAcc curves.

        Overall MaxBoxAcc values are maxima over the grid (each δ its own best τ, as
        wsolevaluation).  Per-class box metrics are read at the split's thresholds (the
        overall best τ of each metric's curve), so a class cannot pick its own oracle.
        """
        overall = self._overall()
        if self.pxap.count:
            overall["pxap"] = self.pxap.compute()
        overall["num_images_with_masks"] = self.pxap.count
        if self.stored_threshold is not None:
            overall["stored_threshold"] = float(self.stored_threshold)
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        per_class = {}
        for c, name in enumerate(names):
            if not self.n_images[c]:
                continue
            per_class[name] = self._per_class(c)
        return {"overall": overall, "per_class": per_class, "curves": self.curves(),
                "thresholds": self.thresholds.tolist()}

    def _per_class(self, c: int) -> dict[str, Any]:
        n_boxed = int(self.n_boxed[c])
        out: dict[str, Any] = {
            "num_images": int(self.n_images[c]),
            "top1_cls": float(100.0 * self.top1[c] / self.n_images[c]),
            "top5_cls": float(100.0 * self.top5[c] / self.n_images[c]),
        }
        total_boxed = int(self.n_boxed.sum())
        if not n_boxed or not total_boxed:
            return out
        v1_best = int(np.argmax(self.v1_hits.sum(axis=0)))
        v2_best = np.argmax(self.v2_hits.sum(axis=0), axis=1)  # (D,)
        loc_best = int(np.argmax(self.loc_hits.sum(axis=0)))
        out["max_box_acc_v1"] = float(100.0 * self.v1_hits[c, v1_best] / n_boxed)
        out["max_box_acc_v2"] = float(np.mean(
            [100.0 * self.v2_hits[c, d, t] / n_boxed for d, t in enumerate(v2_best)]))
        out["gt_known_loc_oracle"] = float(100.0 * self.loc_hits[c, loc_best] / n_boxed)
        out["top1_loc_oracle"] = float(100.0 * self.top1_loc_hits[c, loc_best] / n_boxed)
        if self.stored_threshold is not None:
            out["gt_known_loc"] = float(100.0 * self.stored_hits[c, 0] / n_boxed)
            out["top1_loc"] = float(100.0 * self.stored_hits[c, 1] / n_boxed)
            out["top5_loc"] = float(100.0 * self.stored_hits[c, 2] / n_boxed)
        return out


def ranked_classes(logits: np.ndarray, names: Sequence[str], k: int = 5) -> tuple[np.ndarray, list[dict]]:
    """Softmax of one image's class logits (C,) and its top-``k`` classes, best first.

    Returns ``(probs float64 (C,), [{"class", "class_name", "score"}, ...])``; scores are
    rounded to 6 decimals; ties keep class order.
    """
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max())
    probs = z / z.sum()
    order = np.argsort(-probs, kind="stable")[:k]
    return probs, [{"class": int(c), "class_name": names[int(c)], "score": round(float(probs[c]), 6)}
                   for c in order]
