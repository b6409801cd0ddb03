"""Results by object size and count: bins of hand-made boxes, and group metrics that equal
the metrics of the group's images alone, each map searched once."""

import numpy as np
import pytest

from tedloc.pipeline import metrics
from tedloc.pipeline.groups import (
    GroupedAccumulator,
    box_fraction_keys,
    image_groups,
    largest_box_fraction,
)

EDGES = (0.05, 0.15, 0.30)
GRID = metrics.threshold_grid(0.01)


def _bin(boxes, size=(100, 100)):
    return image_groups(np.asarray(boxes, np.float64), size, EDGES).get("by_box_fraction")


def test_bin_keys_name_their_edges():
    assert box_fraction_keys(EDGES) == ["<0.05", "0.05-0.15", "0.15-0.30", ">=0.30"]
    assert box_fraction_keys((0.1, 0.125)) == ["<0.10", "0.10-0.125", ">=0.125"]
    assert box_fraction_keys((0.5,)) == ["<0.50", ">=0.50"]


def test_box_fraction_uses_plus_one_areas_in_original_pixels():
    # 100×100 image = 10 000 px; x0y0x1y1 corners inclusive: [0, 0, 24, 19] is 25×20 = 500 px.
    assert largest_box_fraction(np.array([[0, 0, 24, 19]]), (100, 100)) == 0.05
    # Float corners: (10.5 - 0.5 + 1)² = 121 px of a 200×50 image.
    assert largest_box_fraction(np.array([[0.5, 0.5, 10.5, 10.5]]), (200, 50)) == pytest.approx(121 / 10000)
    assert largest_box_fraction(np.zeros((0, 4)), (100, 100)) is None


def test_each_edge_opens_its_bin():
    # Exactly on an edge: the bin above (bins are [lower, upper)).
    assert _bin([[0, 0, 24, 19]]) == "0.05-0.15"   # 500 / 10000 = 0.05
    assert _bin([[0, 0, 29, 49]]) == "0.15-0.30"   # 30×50 = 1500 -> 0.15
    assert _bin([[0, 0, 59, 49]]) == ">=0.30"      # 60×50 = 3000 -> 0.30
    # One row less: just below the edge.
    assert _bin([[0, 0, 24, 18]]) == "<0.05"       # 25×19 = 475
    assert _bin([[0, 0, 29, 48]]) == "0.05-0.15"   # 30×49 = 1470
    assert _bin([[0, 0, 59, 48]]) == "0.15-0.30"   # 60×49 = 2940
    assert _bin([[0, 0, 99, 99]]) == ">=0.30"      # the whole image
    # The same counts of pixels in a 200×50 image (also 10 000 px): the area decides, not the shape.
    assert _bin([[0, 0, 49, 9]], (200, 50)) == "0.05-0.15"  # 50×10 = 500


def test_image_with_two_boxes_is_binned_by_the_largest():
    small, large = [0, 0, 9, 9], [50, 50, 89, 89]  # 100 px (0.01) and 40×40 = 1600 px (0.16)
    for boxes in ([small, large], [large, small]):
        assert image_groups(np.array(boxes, np.float64), (100, 100), EDGES) == {
            "by_box_fraction": "0.15-0.30", "by_num_boxes": "2+"}
    assert image_groups(np.array([small], np.float64), (100, 100), EDGES) == {
        "by_box_fraction": "<0.05", "by_num_boxes": "1"}


def test_image_without_boxes_is_in_no_group():
    assert image_groups(np.zeros((0, 4), np.float32), (100, 100), EDGES) == {}
    acc = GroupedAccumulator(metrics.LocalizationAccumulator(2, GRID, stored_threshold=0.5), EDGES)
    acc.add(np.ones((20, 20)), np.array([1.0, 0.0]), 0, None, groups={})
    result = acc.compute(["a", "b"])
    assert result["overall"]["num_images"] == 1 and result["overall"]["num_images_with_boxes"] == 0
    assert all(group["num_images"] == 0 for family in ("by_box_fraction", "by_num_boxes")
               for group in result[family].values())


def _plateau_map():
    """20×20 map: a 1.0 core (x, y 8..11) in a 0.3 plateau (x, y 2..17)."""
    m = np.zeros((20, 20))
    m[2:18, 2:18] = 0.3
    m[8:12, 8:12] = 1.0
    return m


def test_groups_have_their_own_oracle_and_the_methods_stored_threshold():
    # GT = the core: hit at τ ≥ 0.3 only (above the plateau, int(τ·255) ≥ 76); GT = the
    # plateau: hit at τ < 0.3.  In a 20×20 image the core covers 16/400 = 0.04 ("<0.05"),
    # the plateau 256/400 = 0.64 (">=0.30").
    core, plateau = np.array([[8, 8, 11, 11]]), np.array([[2, 2, 17, 17]])
    acc = GroupedAccumulator(metrics.LocalizationAccumulator(2, GRID, stored_threshold=0.5), EDGES)
    for gt in (core, plateau):
        groups = image_groups(gt.astype(np.float64), (20, 20), EDGES)
        acc.add(_plateau_map(), np.array([2.0, 0.0]), 0, gt, groups=groups)
    result = acc.compute(["a", "b"])
    overall = result["overall"]
    small, large = result["by_box_fraction"]["<0.05"], result["by_box_fraction"][">=0.30"]
    # The split: one hit at every τ; its oracle is the first maximum, τ = 0.
    assert overall["oracle_threshold"] == 0.0 and overall["gt_known_loc_oracle"] == 50.0
    assert small["oracle_threshold"] == pytest.approx(0.3) and small["gt_known_loc_oracle"] == 100.0
    assert large["oracle_threshold"] == 0.0 and large["gt_known_loc_oracle"] == 100.0
    # At the stored τ = 0.5 only the core is found, in both the split and its group.
    assert small["stored_threshold"] == large["stored_threshold"] == 0.5
    assert (overall["gt_known_loc"], small["gt_known_loc"], large["gt_known_loc"]) == (50.0, 100.0, 0.0)
    assert small["max_box_acc_v1"] == large["max_box_acc_v1"] == 100.0
    assert overall["max_box_acc_v1"] == 50.0
    assert result["by_num_boxes"]["1"]["num_images"] == 2 and result["by_num_boxes"]["2+"]["num_images"] == 0


def _random_images(rng, count):
    """(map, logits, label, gt boxes at eval size, original boxes, foreground mask or None);
    64×64 images scored at 64×64."""
    images = []
    for i in range(count):
        scoremap = metrics.evaluation_map(rng.random((7, 7)).astype(np.float32), 64)
        k = int(rng.integers(0, 3))
        x0, y0 = rng.integers(0, 30, size=k), rng.integers(0, 30, size=k)
        boxes = np.stack([x0, y0, x0 + rng.integers(1, 33, size=k), y0 + rng.integers(1, 33, size=k)], 1)
        gt = boxes.astype(np.int64) if k else None  # original size = eval size here
        foreground = None
        if i % 3 == 0:  # some images have a mask: groups get PxAP
            foreground = np.zeros((64, 64), bool)
            foreground[int(rng.integers(0, 30)):40, int(rng.integers(0, 30)):50] = True
        images.append((scoremap, rng.normal(size=3), int(rng.integers(0, 3)), gt, boxes.astype(np.float64),
                       foreground))
    return images


def test_group_metrics_equal_an_accumulator_of_the_groups_images_alone(monkeypatch):
    images = _random_images(np.random.default_rng(3), 40)
    settings = dict(stored_threshold=0.4)
    grouped = GroupedAccumulator(metrics.LocalizationAccumulator(3, GRID, **settings), EDGES)
    alone: dict[tuple[str, str], metrics.LocalizationAccumulator] = {}
    searches = []
    search = metrics.boxes_within_reach
    monkeypatch.setattr(metrics, "boxes_within_reach", lambda *a, **k: searches.append(1) or search(*a, **k))
    for scoremap, logits, label, gt, boxes, foreground in images:
        groups = image_groups(boxes, (64, 64), EDGES)
        grouped.add(scoremap, logits, label, gt, groups=groups, foreground=foreground)
        for family, key in groups.items():
            alone.setdefault((family, key), metrics.LocalizationAccumulator(3, GRID, **settings))
    # Each map with boxes searched once, not once per group.
    assert len(searches) == sum(image[3] is not None for image in images)
    monkeypatch.setattr(metrics, "boxes_within_reach", search)
    for scoremap, logits, label, gt, boxes, foreground in images:
        for family, key in image_groups(boxes, (64, 64), EDGES).items():
            alone[(family, key)].add(scoremap, logits, label, gt, foreground=foreground)
    result = grouped.compute(["a", "b", "c"])
    assert len(alone) >= 4  # the random boxes do fill several groups
    assert sum("pxap" in result[family][key] for family, key in alone) >= 3
    for (family, key), acc in alone.items():
        assert result[family][key] == acc.compute()["overall"], (family, key)
    with_boxes = result["overall"]["num_images_with_boxes"]
    for family in ("by_box_fraction", "by_num_boxes"):
        assert sum(g["num_images"] for g in result[family].values()) == with_boxes


def test_merged_parts_equal_one_accumulator():
    images = _random_images(np.random.default_rng(4), 30)
    whole = GroupedAccumulator(metrics.LocalizationAccumulator(3, GRID, stored_threshold=0.4), EDGES)
    parts = [whole.empty_like(), whole.empty_like()]
    for i, (scoremap, logits, label, gt, boxes, foreground) in enumerate(images):
        groups = image_groups(boxes, (64, 64), EDGES)
        whole.add(scoremap, logits, label, gt, groups=groups, foreground=foreground)
        parts[i % 2].add(scoremap, logits, label, gt, groups=groups, foreground=foreground)
    parts[0].merge(parts[1])
    assert parts[0].compute(["a", "b", "c"]) == whole.compute(["a", "b", "c"])
    other = GroupedAccumulator(metrics.LocalizationAccumulator(3, GRID, stored_threshold=0.4), (0.1,))
    with pytest.raises(ValueError, match="bins"):
        whole.merge(other)
