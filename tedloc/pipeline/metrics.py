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

from collections.abc import Sequence
from typing import Any

import numpy as np

from tedloc.pipeline.box_search import best_ious_of, boxes_within_reach
from tedloc.pipeline.boxes import contour_boxes, iou_matrix, scoremap_to_uint8
from tedloc.pipeline.image_score import FixedMap, ImageResult, ImageScore
from tedloc.pipeline.pxap import PxapAccumulator
from tedloc.pipeline.ranking import ranked_classes, topk_hits  # noqa: F401 (re-exported)
from tedloc.pipeline.scoremaps import (  # noqa: F401 (re-exported)
    check_scoremap,
    evaluation_map,
    gt_boxes_at_eval_size,
    normalize_scoremap,
    threshold_grid,
)


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
        stored_threshold: the non-oracle τ (chosen without GT), or None: GT-known, Top-1 and
            Top-5 Loc are then given at the oracle threshold only.
        classifies: False for a method without class scores (the centre prior): Top-1/Top-5
            Cls and Top-1/Top-5 Loc are not computed (None); ``logits`` must then be None.
        per_class: False: one row of counts for every class (for groups of images, whose
            per-class figures are not reported); labels are still checked.
    """

    def __init__(self, num_classes: int, thresholds: np.ndarray, *,
                 iou_thresholds: Sequence[int] = (30, 50, 70), v1_iou: int = 50, loc_iou: int = 50,
                 loc_multi_contour: bool = False, stored_threshold: float | None = None,
                 classifies: bool = True, per_class: bool = True):
        self.num_classes = num_classes
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.iou_thresholds = tuple(int(d) for d in iou_thresholds)
        self.v1_iou = int(v1_iou)
        self.loc_iou = int(loc_iou)
        self.loc_multi_contour = loc_multi_contour
        self.stored_threshold = stored_threshold
        self.classifies = classifies
        self.per_class = per_class
        #: The lowest IoU that any count compares with (δ/100, as wsolevaluation).
        self.lowest_cut = min(*self.iou_thresholds, self.v1_iou, self.loc_iou) / 100
        num_t, num_d = len(self.thresholds), len(self.iou_thresholds)
        c = num_classes if per_class else 1
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
        # The same Loc counts with every contour's box, reported beside the Loc mode's.
        self.loc_all_hits = np.zeros((c, num_t), np.int64)
        self.top1_loc_all_hits = np.zeros((c, num_t), np.int64)
        self.stored_all_hits = np.zeros((c, 3), np.int64)
        self.pxap = PxapAccumulator(self.thresholds)

    def add(self, scoremap: np.ndarray | None, logits: np.ndarray | None, label: int, gt_boxes: np.ndarray | None,
            *, image_id: str = "<map>", foreground: np.ndarray | None = None,
            ignore: np.ndarray | None = None, fixed: FixedMap | None = None) -> ImageResult:
        """Add one image (:meth:`score`, then :meth:`accumulate`); arguments as :meth:`score`."""
        score = self.score(scoremap, logits, label, gt_boxes, image_id=image_id, foreground=foreground,
                           ignore=ignore, fixed=fixed)
        self.accumulate(score)
        return score.result

    def score(self, scoremap: np.ndarray | None, logits: np.ndarray | None, label: int, gt_boxes: np.ndarray | None,
              *, image_id: str = "<map>", foreground: np.ndarray | None = None,
              ignore: np.ndarray | None = None, fixed: FixedMap | None = None) -> ImageScore:
        """Score one image without counting it (:meth:`accumulate` counts it).

        Args:
            scoremap: float (S, S) map at eval size, values in [0, 1] (validated: ValueError
                naming ``image_id`` on NaN or out-of-range values); None with ``fixed``.
            logits: float (C,) class scores of the method; None without a classifier.
            label: the GT class.
            gt_boxes: int (K, 4) ``x0y0x1y1`` GT boxes at eval size; None or K = 0: the image
                counts for classification (and PxAP) only.
            foreground, ignore: bool (S, S) GT masks for PxAP, or None.
            fixed: for a map scored for many images (the centre prior), its
                :func:`fix_map` for this grid, in place of ``scoremap`` (pass None): no
                contour search, no sort for PxAP.  The counts are those of a search (a
                threshold left unsearched is one where no box reaches a cut).
        """
        if (scoremap is None) == (fixed is None):
            raise ValueError(f"{image_id}: give either a score map or a fixed map")
        if fixed is not None:
            if len(fixed.boxes.counts) != len(self.thresholds):
                raise ValueError(f"{image_id}: fixed map boxes at {len(fixed.boxes.counts)} thresholds "
                                 f"for a grid of {len(self.thresholds)}")
            scoremap = fixed.scoremap  # checked by fix_map
        else:
            scoremap = check_scoremap(scoremap, image_id)
        if not 0 <= label < self.num_classes:
            raise ValueError(f"{image_id}: label {label} outside 0..{self.num_classes - 1}")
        if (logits is not None) != self.classifies:
            raise ValueError(f"{image_id}: class scores are {'missing' if self.classifies else 'given'} "
                             f"for a method {'with' if self.classifies else 'without'} a classifier")
        top1 = top5 = None
        if logits is not None:
            hits = topk_hits(logits, label, (1, 5))
            top1, top5 = hits[1], hits[5]
        masks = None
        if foreground is not None:
            masks = self.pxap.histograms(scoremap, foreground, ignore,
                                         pixel_bins=None if fixed is None else fixed.pixel_bins)

        stored_boxes = stored_box = None
        u8 = scoremap_to_uint8(scoremap) if fixed is None or self.stored_threshold is not None else None
        if self.stored_threshold is not None:  # one search gives every contour's box and the largest's
            stored = contour_boxes(u8, [self.stored_threshold])
            stored_boxes = stored.per_threshold(multi_contour=True)[0]
            stored_box = stored.per_threshold(multi_contour=False)[0]
        if gt_boxes is None or len(gt_boxes) == 0:
            return ImageScore(label, top1, top5, None, None, None, None, masks,
                              ImageResult(top1, top5, None, stored_boxes, stored_box))

        gt_boxes = np.asarray(gt_boxes).reshape(-1, 4)
        num_t = len(self.thresholds)
        if fixed is None:
            # Only IoUs at or above the lowest cut are counted: thresholds at which no box can
            # reach it are not searched (their IoUs stay 0; every count is unchanged).
            # One search for V1 and V2.
            searched, found = boxes_within_reach(u8, gt_boxes, self.thresholds, self.lowest_cut)
        else:
            searched, found = np.ones(num_t, bool), fixed.boxes
        v1, v2 = np.zeros(num_t), np.zeros(num_t)
        if found is not None:
            v1[searched] = best_ious_of(found, gt_boxes, multi_contour=False)
            v2[searched] = best_ious_of(found, gt_boxes, multi_contour=True)
        # Compare IoU with δ/100 exactly as wsolevaluation does (iou >= delta / 100).
        v1_hits = v1 >= self.v1_iou / 100
        v2_hits = np.stack([v2 >= delta / 100 for delta in self.iou_thresholds])
        # Loc with the largest contour ([0]) and with every contour ([1]): both are reported.
        loc = [curve >= self.loc_iou / 100 for curve in (v1, v2)]
        ious = stored = [None, None]
        if self.stored_threshold is not None:
            ious = [float(iou_matrix(boxes, gt_boxes).max()) for boxes in (stored_box, stored_boxes)]
            stored = [np.array([ok, ok and bool(top1), ok and bool(top5)])
                      for ok in (value >= self.loc_iou / 100 for value in ious)]
        mode = int(self.loc_multi_contour)
        return ImageScore(label, top1, top5, v1_hits, v2_hits, loc[mode], stored[mode], masks,
                          ImageResult(top1, top5, ious[mode], stored_boxes, stored_box), loc[1], stored[1])

    def accumulate(self, score: ImageScore) -> None:
        """Count one image's :meth:`score` (of this accumulator or one with the same settings)."""
        row = score.label if self.per_class else 0
        self.n_images[row] += 1
        if score.top1 is not None:
            self.top1[row] += score.top1
            self.top5[row] += score.top5
        if score.masks is not None:
            self.pxap.add_histograms(*score.masks)
        if score.v1 is None:
            return
        self.n_boxed[row] += 1
        self.v1_hits[row] += score.v1
        self.v2_hits[row] += score.v2
        self.loc_hits[row] += score.loc
        if score.top1 is not None:
            self.top1_loc_hits[row] += score.loc & score.top1
            self.top5_loc_hits[row] += score.loc & score.top5
        if score.stored is not None:
            self.stored_hits[row] += score.stored
        if score.loc_all is not None:
            self.loc_all_hits[row] += score.loc_all
            if score.top1 is not None:
                self.top1_loc_all_hits[row] += score.loc_all & score.top1
        if score.stored_all is not None:
            self.stored_all_hits[row] += score.stored_all

    _COUNTS = ("n_images", "n_boxed", "top1", "top5", "v1_hits", "v2_hits", "loc_hits",
               "top1_loc_hits", "top5_loc_hits", "stored_hits", "loc_all_hits", "top1_loc_all_hits",
               "stored_all_hits")

    def empty_like(self, *, per_class: bool | None = None) -> LocalizationAccumulator:
        """A fresh accumulator with the same settings (for a worker's share of the images, or
        with ``per_class=False`` for a group of them)."""
        return LocalizationAccumulator(
            self.num_classes, self.thresholds, iou_thresholds=self.iou_thresholds, v1_iou=self.v1_iou,
            loc_iou=self.loc_iou, loc_multi_contour=self.loc_multi_contour,
            stored_threshold=self.stored_threshold, classifies=self.classifies,
            per_class=self.per_class if per_class is None else per_class)

    def _settings(self) -> tuple:
        return (self.num_classes, self.iou_thresholds, self.v1_iou, self.loc_iou, self.loc_multi_contour,
                self.stored_threshold, self.classifies, self.per_class)

    def merge(self, other: LocalizationAccumulator) -> None:
        """Add the counts of ``other`` (same settings) to this one: sums, so the result does
        not depend on how the images were split."""
        if other._settings() != self._settings() or not np.array_equal(other.thresholds, self.thresholds):
            raise ValueError("cannot merge accumulators with different settings")
        for name in self._COUNTS:
            getattr(self, name).__iadd__(getattr(other, name))
        self.pxap.merge(other.pxap)

    # ------------------------------------------------------------------ results

    def _overall(self) -> dict[str, Any]:
        """Metrics over every class."""
        n_images = int(self.n_images.sum())
        n_boxed = int(self.n_boxed.sum())

        def pct(count: Any, total: int) -> float | None:
            return float(100.0 * count / total) if total and count is not None else None

        classified = self.classifies or None  # None: the label metrics are not computed
        out: dict[str, Any] = {
            "num_images": n_images,
            "num_images_with_boxes": n_boxed,
            "top1_cls": pct(classified and self.top1.sum(), n_images),
            "top5_cls": pct(classified and self.top5.sum(), n_images),
        }
        if n_boxed:
            v1_curve = 100.0 * self.v1_hits.sum(axis=0) / n_boxed
            v2_curves = 100.0 * self.v2_hits.sum(axis=0) / n_boxed  # (D, T)
            loc_curve = 100.0 * self.loc_hits.sum(axis=0) / n_boxed
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
            out["top1_loc_oracle"] = pct(classified and self.top1_loc_hits.sum(axis=0)[oracle], n_boxed)
            out["top5_loc_oracle"] = pct(classified and self.top5_loc_hits.sum(axis=0)[oracle], n_boxed)
            stored = self.stored_hits.sum(axis=0) if self.stored_threshold is not None else [None] * 3
            out["gt_known_loc"] = pct(stored[0], n_boxed)
            out["top1_loc"] = pct(classified and stored[1], n_boxed)
            out["top5_loc"] = pct(classified and stored[2], n_boxed)
            # Every contour's box (an image counts when any of them reaches loc_iou), its own oracle.
            loc_all = 100.0 * self.loc_all_hits.sum(axis=0) / n_boxed
            oracle = int(np.argmax(loc_all))
            out["oracle_threshold_all_contours"] = float(self.thresholds[oracle])
            out["gt_known_loc_oracle_all_contours"] = float(loc_all[oracle])
            out["top1_loc_oracle_all_contours"] = pct(classified and self.top1_loc_all_hits.sum(axis=0)[oracle],
                                                      n_boxed)
            stored = self.stored_all_hits.sum(axis=0) if self.stored_threshold is not None else [None] * 3
            out["gt_known_loc_all_contours"] = pct(stored[0], n_boxed)
            out["top1_loc_all_contours"] = pct(classified and stored[1], n_boxed)
            out["top5_loc_all_contours"] = pct(classified and stored[2], n_boxed)
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
        """Overall metrics, per-class metrics (none without ``per_class``) and BoxAcc curves.

        Overall MaxBoxAcc values are maxima over the grid (each δ its own best τ, as
        wsolevaluation).  Per-class box metrics are read at the split's thresholds (the
        overall best τ of each metric's curve), so a class cannot pick its own oracle.
        Metrics that are not computed (no classifier, no stored threshold) are None.
        """
        overall = self._overall()
        if self.pxap.count:
            overall["pxap"] = self.pxap.compute()
        overall["num_images_with_masks"] = self.pxap.count
        overall["stored_threshold"] = None if self.stored_threshold is None else float(self.stored_threshold)
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        per_class = {}
        for c, name in enumerate(names if self.per_class else ()):
            if not self.n_images[c]:
                continue
            per_class[name] = self._per_class(c)
        return {"overall": overall, "per_class": per_class, "curves": self.curves(),
                "thresholds": self.thresholds.tolist()}

    def _per_class(self, c: int) -> dict[str, Any]:
        n_boxed = int(self.n_boxed[c])

        def pct(counts: np.ndarray, index: Any, total: int) -> float | None:
            return float(100.0 * counts[index] / total) if self.classifies else None

        out: dict[str, Any] = {
            "num_images": int(self.n_images[c]),
            "top1_cls": pct(self.top1, c, self.n_images[c]),
            "top5_cls": pct(self.top5, c, self.n_images[c]),
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
        out["top1_loc_oracle"] = pct(self.top1_loc_hits, (c, loc_best), n_boxed)
        if self.stored_threshold is not None:
            out["gt_known_loc"] = float(100.0 * self.stored_hits[c, 0] / n_boxed)
            out["top1_loc"] = pct(self.stored_hits, (c, 1), n_boxed)
            out["top5_loc"] = pct(self.stored_hits, (c, 2), n_boxed)
        return out
