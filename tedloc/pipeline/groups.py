"""Metrics by object size and by object count: the images of a split in groups, each group
scored like the split.

Groups of an image with K ≥ 1 GT boxes (images without boxes are in no group):

* ``by_box_fraction``: the fraction of the image's area covered by its *largest* GT box,
  in original image pixels with the "+1" box convention of the metrics (a box ``x0y0x1y1``
  covers ``(x1 - x0 + 1)·(y1 - y0 + 1)`` pixels, :func:`tedloc.pipeline.boxes.iou_matrix`),
  over ``width·height``.  Bins are half-open, lower edge included: with edges
  (0.05, 0.15, 0.30) they are ``[0, 0.05)`` "<0.05", ``[0.05, 0.15)`` "0.05-0.15",
  ``[0.15, 0.30)`` "0.15-0.30" and ``[0.30, ∞)`` ">=0.30" (the "+1" convention can take a
  box that spans the image slightly above 1).
* ``by_num_boxes``: "1" or "2+" GT boxes.

A group's metrics are those of the split (:class:`LocalizationAccumulator`) restricted to
its images; its oracle threshold is the group's own best, its stored threshold the
method's.  Each image's map is searched for boxes once: its score
(:meth:`LocalizationAccumulator.score`) is counted in the split's accumulator and in its
groups'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tedloc.pipeline.image_score import FixedMap, ImageResult
from tedloc.pipeline.metrics import LocalizationAccumulator

BY_BOX_FRACTION = "by_box_fraction"
BY_NUM_BOXES = "by_num_boxes"
NUM_BOXES_KEYS = ("1", "2+")


def _edge_text(edge: float) -> str:
    """An edge as a bin key: two decimals (0.30), more where two would change it."""
    text = f"{edge:.2f}"
    return text if float(text) == edge else repr(float(edge))


def box_fraction_keys(edges: Sequence[float]) -> list[str]:
    """The keys of the bins cut by increasing ``edges``: ``"<e1"``, ``"e1-e2"``, …, ``">=en"``."""
    texts = [_edge_text(e) for e in edges]
    return ([f"<{texts[0]}"] + [f"{a}-{b}" for a, b in zip(texts, texts[1:], strict=False)]
            + [f">={texts[-1]}"])


def largest_box_fraction(boxes: np.ndarray, image_size: tuple[int, int]) -> float | None:
    """The fraction of a (width, height) image covered by the largest of its float (K, 4)
    ``x0y0x1y1`` GT boxes in original pixels ("+1" areas); None when K = 0."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(boxes):
        return None
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    width, height = image_size
    return float(areas.max() / (width * height))


def image_groups(boxes: np.ndarray, image_size: tuple[int, int], edges: Sequence[float]) -> dict[str, str]:
    """The groups of one image: ``{"by_box_fraction": key, "by_num_boxes": key}`` from its
    float (K, 4) ``x0y0x1y1`` GT boxes in original pixels of a (width, height) image;
    ``{}`` without boxes."""
    fraction = largest_box_fraction(boxes, image_size)
    if fraction is None:
        return {}
    # searchsorted "right": a fraction equal to an edge goes to the bin that edge opens.
    index = int(np.searchsorted(np.asarray(edges, np.float64), fraction, side="right"))
    count = len(np.asarray(boxes).reshape(-1, 4))
    return {BY_BOX_FRACTION: box_fraction_keys(edges)[index], BY_NUM_BOXES: "1" if count == 1 else "2+"}


def group_keys(edges: Sequence[float]) -> dict[str, list[str]]:
    """Every group family and its keys, in table order."""
    return {BY_BOX_FRACTION: box_fraction_keys(edges), BY_NUM_BOXES: list(NUM_BOXES_KEYS)}


class GroupedAccumulator:
    """One method's :class:`LocalizationAccumulator` over the split and one per group.

    Args:
        overall: the split's accumulator (its settings are the groups').
        edges: increasing box-fraction bin edges (:func:`image_groups`).
    """

    def __init__(self, overall: LocalizationAccumulator, edges: Sequence[float]):
        self.overall = overall
        self.edges = tuple(float(e) for e in edges)
        # Groups report the split's figures only: one row of counts instead of C.
        self.groups = {family: {key: overall.empty_like(per_class=False) for key in keys}
                       for family, keys in group_keys(self.edges).items()}

    def add(self, scoremap: np.ndarray | None, logits: np.ndarray | None, label: int, gt_boxes: np.ndarray | None,
            *, groups: Mapping[str, str], image_id: str = "<map>", foreground: np.ndarray | None = None,
            ignore: np.ndarray | None = None, fixed: FixedMap | None = None) -> ImageResult:
        """Score one image once and count it in the split and in ``groups`` (its
        :func:`image_groups`); other arguments as :meth:`LocalizationAccumulator.score`."""
        score = self.overall.score(scoremap, logits, label, gt_boxes, image_id=image_id,
                                   foreground=foreground, ignore=ignore, fixed=fixed)
        self.overall.accumulate(score)
        for family, key in groups.items():
            self.groups[family][key].accumulate(score)
        return score.result

    def empty_like(self) -> GroupedAccumulator:
        """A fresh accumulator with the same settings (for a worker's share of the images)."""
        return GroupedAccumulator(self.overall.empty_like(), self.edges)

    def merge(self, other: GroupedAccumulator) -> None:
        """Add the counts of ``other`` (same settings and edges)."""
        if other.edges != self.edges:
            raise ValueError("cannot merge accumulators with different box-fraction bins")
        self.overall.merge(other.overall)
        for family, accs in self.groups.items():
            for key, acc in accs.items():
                acc.merge(other.groups[family][key])

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """:meth:`LocalizationAccumulator.compute` of the split, plus one entry per group
        family: ``{key: the group's "overall" metrics}``."""
        out = self.overall.compute(class_names)
        for family, accs in self.groups.items():
            out[family] = {key: acc.compute()["overall"] for key, acc in accs.items()}
        return out
