"""PxAP (pixel average precision, wsolevaluation's ``MaskEvaluator``), streamed: histograms
of map values over the foreground and background pixels of the GT masks."""

from __future__ import annotations

import numpy as np


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

    def pixel_bins(self, scoremap: np.ndarray) -> np.ndarray:
        """int64 (H, W): the bin of each pixel of a float (H, W) map in [0, 1] (``np.histogram``'s:
        ``edges[i] ≤ v < edges[i + 1]``), for a map whose histograms are taken many times."""
        return np.searchsorted(self.edges, np.asarray(scoremap, np.float64), side="right") - 1

    def histograms(self, scoremap: np.ndarray, foreground: np.ndarray, ignore: np.ndarray | None = None,
                   *, pixel_bins: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One image's int64 (B,) histograms (foreground, background) over this accumulator's
        bins: float (H, W) map in [0, 1], bool (H, W) foreground mask, optional bool (H, W)
        ignore mask (ignored pixels that are not foreground are not scored).  With the map's
        :meth:`pixel_bins`, counts instead of a sort per histogram (the same counts)."""
        foreground = np.asarray(foreground, dtype=bool)
        if foreground.shape != scoremap.shape:
            raise ValueError(f"mask shape {foreground.shape} differs from map shape {scoremap.shape}")
        background = ~foreground
        if ignore is not None:
            background &= ~np.asarray(ignore, dtype=bool)
        if pixel_bins is not None:
            size = len(self.edges) - 1
            return (np.bincount(pixel_bins[foreground], minlength=size),
                    np.bincount(pixel_bins[background], minlength=size))
        return (np.histogram(scoremap[foreground], bins=self.edges)[0],
                np.histogram(scoremap[background], bins=self.edges)[0])

    def add_histograms(self, true_hist: np.ndarray, false_hist: np.ndarray) -> None:
        """Count one image from its :meth:`histograms`."""
        self.true_hist += true_hist
        self.false_hist += false_hist
        self.count += 1

    def add(self, scoremap: np.ndarray, foreground: np.ndarray, ignore: np.ndarray | None = None) -> None:
        """Add one image (:meth:`histograms`, then :meth:`add_histograms`)."""
        self.add_histograms(*self.histograms(scoremap, foreground, ignore))

    def merge(self, other: PxapAccumulator) -> None:
        """Add the histograms of ``other`` (same bins)."""
        self.true_hist += other.true_hist
        self.false_hist += other.false_hist
        self.count += other.count

    def compute(self) -> float:
        return pxap_from_histograms(self.true_hist, self.false_hist)
