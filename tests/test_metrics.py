"""WSOL metrics on cases worked out by hand (wsolevaluation conventions)."""

import numpy as np
import pytest

from tedloc.pipeline.box_search import best_ious
from tedloc.pipeline.boxes import iou_matrix
from tedloc.pipeline.metrics import (
    LocalizationAccumulator,
    check_scoremap,
    evaluation_map,
    gt_boxes_at_eval_size,
    normalize_scoremap,
    threshold_grid,
    topk_hits,
)
from tedloc.pipeline.pxap import PxapAccumulator, pxap_from_histograms

GRID = threshold_grid(0.01)


def _acc(num_classes=2, **kwargs):
    return LocalizationAccumulator(num_classes, GRID, **kwargs)


def _two_blobs():
    """20×20 map: a big blob (8×8 at x, y 2..9) and a small one (4×4 at x, y 14..17)."""
    m = np.zeros((20, 20))
    m[2:10, 2:10] = 1.0
    m[14:18, 14:18] = 1.0
    return m


def test_iou_plus_one_convention_hand_cases():
    # [1,2,5,6] is 5×5 = 25 px, [3,1,4,5] is 2×5 = 10 px, overlap x 3..4, y 2..5 = 8 px:
    # 8 / (25 + 10 - 8) = 8/27.
    assert iou_matrix([[1, 2, 5, 6]], [[3, 1, 4, 5]])[0, 0] == pytest.approx(8 / 27)
    # A one-pixel box with itself is 1, not 0/0.
    assert iou_matrix([[4, 4, 4, 4]], [[4, 4, 4, 4]])[0, 0] == 1.0
    assert iou_matrix([[0, 0, 1, 1]], [[2, 2, 3, 3]])[0, 0] == 0.0


def test_gt_boxes_rescaled_to_224_and_truncated():
    # (200, 100) image -> 224: x * 1.12, y * 2.24, truncated like wsolevaluation's resize_bbox.
    out = gt_boxes_at_eval_size(np.array([[10, 20, 99, 49]], np.float32), (200, 100), 224)
    assert out.tolist() == [[11, 44, 110, 109]]
    assert out.dtype == np.int64


def test_threshold_grid_endpoints():
    assert len(GRID) == 100
    assert GRID[0] == 0.0
    assert GRID[-1] == pytest.approx(0.99)
    assert (np.diff(GRID) > 0).all()
    with pytest.raises(ValueError):
        threshold_grid(0.0)


def test_threshold_grid_endpoints_select_expected_regions():
    # A 1.0 core (x, y 8..11) inside a 0.5 plateau (x, y 4..15): τ = 0 keeps every nonzero
    # pixel, τ = 0.99 keeps the pixels above int(0.99·255) = 252, i.e. the core only.
    m = np.zeros((20, 20))
    m[4:16, 4:16] = 0.5
    m[8:12, 8:12] = 1.0
    ious = best_ious(m, np.array([[8, 8, 11, 11]]), [0.0, 0.99], multi_contour=False)
    # τ=0: box (4,4,16,16) (boundingRect x+w), 13×13 = 169 px ⊃ 16 GT px -> 16/169.
    assert ious[0] == pytest.approx(16 / 169)
    # τ=0.99: box (8,8,12,12), 25 px ⊃ 16 -> 16/25.
    assert ious[1] == pytest.approx(16 / 25)


def test_two_blobs_v1_uses_largest_v2_uses_all():
    m = _two_blobs()
    small_gt = np.array([[14, 14, 17, 17]])
    # V1: the largest contour's box (2,2,10,10) misses the small blob entirely.
    assert best_ious(m, small_gt, GRID, multi_contour=False).max() == 0.0
    # V2: the small blob's box is (14,14,18,18) (boundingRect's x+w): 16 / 25 = 0.64.
    v2 = best_ious(m, small_gt, GRID, multi_contour=True)
    assert v2 == pytest.approx(np.full(len(GRID), 0.64))

    acc = _acc()
    acc.add(m, np.array([2.0, 1.0]), 0, small_gt)
    overall = acc.compute()["overall"]
    assert overall["max_box_acc_v1"] == 0.0
    # 0.64 passes δ = 30 and 50, fails 70: (100 + 100 + 0) / 3.
    assert overall["max_box_acc_v2_iou30"] == 100.0
    assert overall["max_box_acc_v2_iou50"] == 100.0
    assert overall["max_box_acc_v2_iou70"] == 0.0
    assert overall["max_box_acc_v2"] == pytest.approx(200 / 3)


def test_loc_with_every_contour_is_reported_beside_the_largest_contour():
    # Two objects, each with its GT box: the largest contour finds the big one only, every
    # contour finds both.  Image 1: GT = the small blob -> a hit with every contour only.
    # Image 2: GT = the big blob -> a hit either way.  Image 3: right box, wrong class.
    m = _two_blobs()
    small, big = np.array([[14, 14, 17, 17]]), np.array([[2, 2, 9, 9]])
    for multi in (False, True):
        acc = _acc(stored_threshold=0.5, loc_multi_contour=multi)
        acc.add(m, np.array([2.0, 1.0]), 0, small)
        acc.add(m, np.array([2.0, 1.0]), 0, big)
        acc.add(m, np.array([1.0, 2.0]), 0, small)
        overall = acc.compute()["overall"]
        # The Loc mode's keys follow loc_multi_contour; the *_all_contours keys never change.
        assert overall["gt_known_loc"] == pytest.approx(100.0 if multi else 100 / 3)
        assert overall["top1_loc"] == pytest.approx(200 / 3 if multi else 100 / 3)
        assert overall["gt_known_loc_all_contours"] == pytest.approx(100.0)
        assert overall["top1_loc_all_contours"] == pytest.approx(200 / 3)
        assert overall["top5_loc_all_contours"] == pytest.approx(100.0)  # 2 classes: always in the top 5
        assert overall["gt_known_loc_oracle_all_contours"] == pytest.approx(100.0)
        assert overall["top1_loc_oracle_all_contours"] == pytest.approx(200 / 3)
        assert overall["oracle_threshold_all_contours"] == 0.0  # every τ keeps both blobs: the first


def test_loc_with_every_contour_is_none_without_a_classifier_or_stored_threshold():
    acc = _acc(classifies=False)
    acc.add(_two_blobs(), None, 0, np.array([[14, 14, 17, 17]]))
    overall = acc.compute()["overall"]
    assert overall["gt_known_loc_oracle_all_contours"] == 100.0
    assert overall["gt_known_loc_all_contours"] is None
    assert overall["top1_loc_all_contours"] is None and overall["top1_loc_oracle_all_contours"] is None


def test_multiple_gt_boxes_take_the_best_match():
    m = _two_blobs()
    gts = np.array([[14, 14, 17, 17], [2, 2, 9, 9]])
    # V1's box (2,2,10,10) = 81 px against the 64-px GT box: 64/81 ≈ 0.79.
    assert best_ious(m, gts, [0.5], multi_contour=False)[0] == pytest.approx(64 / 81)
    acc = _acc()
    acc.add(m, np.array([2.0, 1.0]), 0, gts)
    overall = acc.compute()["overall"]
    assert overall["max_box_acc_v1"] == 100.0
    assert overall["max_box_acc_v2"] == 100.0


def test_empty_map_predicts_no_box_and_scores_zero():
    acc = _acc(stored_threshold=0.5)
    result = acc.add(np.zeros((20, 20)), np.array([2.0, 1.0]), 0, np.array([[5, 5, 10, 10]]))
    assert result.boxes.tolist() == [[0, 0, 0, 0]]
    assert result.iou == 0.0
    overall = acc.compute()["overall"]
    assert overall["max_box_acc_v1"] == 0.0
    assert overall["max_box_acc_v2"] == 0.0
    assert overall["gt_known_loc"] == 0.0


def test_constant_map_normalizes_to_zeros():
    assert not normalize_scoremap(np.full((7, 7), 0.7)).any()
    assert not evaluation_map(np.full((7, 7), 0.3), 224).any()
    ramp = normalize_scoremap(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert ramp.tolist() == [[0.0, 0.25], [0.5, 1.0]]
    up = evaluation_map(np.random.default_rng(0).random((7, 7)), 224)
    assert up.shape == (224, 224) and up.dtype == np.float32
    assert up.min() == 0.0 and up.max() == 1.0


def test_nan_map_is_refused_naming_the_image():
    m = np.zeros((20, 20))
    m[3, 3] = np.nan
    acc = _acc()
    with pytest.raises(ValueError, match="img/007.jpg.*NaN"):
        acc.add(m, np.array([1.0, 0.0]), 0, np.array([[1, 1, 5, 5]]), image_id="img/007.jpg")
    with pytest.raises(ValueError, match="a.png.*NaN"):
        evaluation_map(m, 224, image_id="a.png")
    with pytest.raises(ValueError, match="NaN"):
        normalize_scoremap(m)


def test_out_of_range_map_is_refused():
    with pytest.raises(ValueError, match=r"x.jpg.*\[0, 1\]"):
        check_scoremap(np.full((4, 4), 1.5), "x.jpg")
    with pytest.raises(ValueError, match="2-D"):
        check_scoremap(np.zeros((2, 4, 4)), "x.jpg")


def test_pxap_perfect_map_is_100_and_reversed_map_is_low():
    fg = np.zeros((10, 10), bool)
    fg[2:6, 2:6] = True  # 16 foreground px, 84 background px
    perfect = PxapAccumulator(GRID)
    perfect.add(fg.astype(np.float64), fg)
    assert perfect.compute() == pytest.approx(100.0)

    reversed_ = PxapAccumulator(GRID)
    reversed_.add((~fg).astype(np.float64), fg)
    # Only the lowest bin reaches any recall, at precision 16/100.
    assert reversed_.compute() == pytest.approx(16.0)


def test_pxap_histograms_from_pixel_bins_equal_the_sorted_ones():
    # Values on bin edges (0, 0.5, 0.99), at 1.0 (the [1, 2) bin) and in between.
    acc = PxapAccumulator(GRID)
    rng = np.random.default_rng(6)
    scoremap = rng.random((30, 30))
    scoremap.flat[:5] = [0.0, GRID[50], GRID[99], 1.0, 0.995]
    foreground = rng.random((30, 30)) > 0.6
    ignore = rng.random((30, 30)) > 0.8
    bins = acc.pixel_bins(scoremap)
    assert bins.flat[:5].tolist() == [0, 50, 99, 100, 99]
    sorted_ = acc.histograms(scoremap, foreground, ignore)
    counted = acc.histograms(scoremap, foreground, ignore, pixel_bins=bins)
    for a, b in zip(sorted_, counted, strict=True):
        np.testing.assert_array_equal(a, b)


def test_pxap_ignore_mask_leaves_pixels_out():
    fg = np.zeros((10, 10), bool)
    fg[2:6, 2:6] = True
    ignore = np.zeros((10, 10), bool)
    ignore[8:, :] = True  # 20 background px ignored
    acc = PxapAccumulator(GRID)
    acc.add(np.where(fg, 0.0, 0.0), fg, ignore)  # constant map: AP = FG share of scored px
    assert acc.compute() == pytest.approx(100.0 * 16 / 80)
    with pytest.raises(ValueError, match="no foreground"):
        pxap_from_histograms(np.zeros(5), np.ones(5))


def test_top1_loc_needs_right_class_and_iou_at_least_half():
    good_map = np.zeros((20, 20))
    good_map[4:12, 4:12] = 1.0  # box (4,4,12,12): 81 px ⊃ 64-px GT -> IoU 0.79
    bad_map = np.zeros((20, 20))
    bad_map[15:19, 15:19] = 1.0  # disjoint from the GT
    gt = np.array([[4, 4, 11, 11]])
    right = np.array([0.1, 3.0, 0.2, 0.0, -1.0, -2.0, -3.0])  # label 1 is top-1
    second = np.array([3.0, 2.0, 0.2, 0.0, -1.0, -2.0, -3.0])  # label 1 is 2nd: top-5 only
    outside = np.array([3.0, -9.0, 2.9, 2.8, 2.7, 2.6, 2.5])  # label 1 is last: not in top-5
    acc = LocalizationAccumulator(7, GRID, stored_threshold=0.5)
    acc.add(good_map, right, 1, gt)     # top-1 loc
    acc.add(good_map, second, 1, gt)    # top-5 loc, gt-known
    acc.add(bad_map, right, 1, gt)      # right class, wrong box: no loc
    acc.add(good_map, outside, 1, gt)   # gt-known only
    overall = acc.compute()["overall"]
    assert overall["top1_cls"] == 50.0
    assert overall["top5_cls"] == 75.0
    assert overall["gt_known_loc"] == 75.0
    assert overall["top1_loc"] == 25.0
    assert overall["top5_loc"] == 50.0
    # The oracle threshold cannot rescue the disjoint map: same values, labelled as oracle.
    assert overall["top1_loc_oracle"] == 25.0
    assert overall["gt_known_loc_oracle"] == 75.0
    assert overall["stored_threshold"] == 0.5


def test_stored_versus_oracle_threshold_differ():
    # Core 1.0 (x, y 8..11) in a 0.3 plateau (x, y 2..17); GT = the core.  At a stored
    # τ = 0.1 the box is the plateau (16×16 + border): IoU 16/289 -> miss; the oracle finds
    # the core (τ ≥ int-threshold above 0.3·255).
    m = np.zeros((20, 20))
    m[2:18, 2:18] = 0.3
    m[8:12, 8:12] = 1.0
    acc = _acc(stored_threshold=0.1)
    acc.add(m, np.array([2.0, 0.0]), 0, np.array([[8, 8, 11, 11]]))
    overall = acc.compute()["overall"]
    assert overall["gt_known_loc"] == 0.0
    assert overall["top1_loc"] == 0.0
    assert overall["gt_known_loc_oracle"] == 100.0
    assert overall["top1_loc_oracle"] == 100.0
    assert overall["oracle_threshold"] == pytest.approx(0.3)  # first τ with int(τ·255) ≥ 76


def test_per_class_and_curves_and_images_without_boxes():
    m = _two_blobs()
    acc = _acc(num_classes=3)
    acc.add(m, np.array([2.0, 1.0, 0.0]), 0, np.array([[2, 2, 9, 9]]))   # class 0 hit
    acc.add(m, np.array([2.0, 1.0, 0.0]), 1, np.array([[0, 0, 1, 1]]))   # class 1 miss
    acc.add(m, np.array([0.0, 1.0, 0.0]), 1, None)                      # no boxes: cls only
    result = acc.compute(["a", "b", "c"])
    overall = result["overall"]
    assert overall["num_images"] == 3
    assert overall["num_images_with_boxes"] == 2
    assert overall["max_box_acc_v1"] == 50.0
    assert overall["top1_cls"] == pytest.approx(200 / 3)
    assert set(result["per_class"]) == {"a", "b"}
    assert result["per_class"]["a"]["max_box_acc_v1"] == 100.0
    assert result["per_class"]["b"]["max_box_acc_v1"] == 0.0
    assert result["per_class"]["b"]["top1_cls"] == 50.0
    assert len(result["curves"]["v1"]) == 100
    assert set(result["curves"]) == {"v1", "v2_iou30", "v2_iou50", "v2_iou70"}


def test_topk_hits_caps_k_at_num_classes():
    assert topk_hits(np.array([0.0, 1.0]), 0, (1, 5)) == {1: False, 5: True}


def _boxes_reference(scoremap_u8, threshold, multi_contour):
    """wsolevaluation's per-threshold box extraction, written out plainly."""
    import cv2

    height, width = scoremap_u8.shape
    _, binary = cv2.threshold(scoremap_u8, int(threshold * np.max(scoremap_u8)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return np.zeros((1, 4), np.int64)
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    return np.asarray(boxes, np.int64)


def test_boxes_at_every_threshold_match_the_reference_on_random_maps():
    import cv2

    from tedloc.pipeline.boxes import boxes_at_thresholds, scoremap_to_uint8
    from tedloc.pipeline.metrics import evaluation_map, threshold_grid

    rng = np.random.default_rng(3)
    thresholds = threshold_grid(0.01)
    for k in range(40):  # blobby and noisy maps: many contours and holes
        grid = cv2.GaussianBlur(rng.random((14, 14)).astype(np.float32), (0, 0), 0.3 + 0.3 * (k % 5))
        u8 = scoremap_to_uint8(evaluation_map(grid, 224))
        for multi in (True, False):
            got = boxes_at_thresholds(u8, thresholds, multi_contour=multi)
            for tau, boxes in zip(thresholds, got, strict=True):
                np.testing.assert_array_equal(boxes, _boxes_reference(u8, tau, multi))


def test_boxes_at_every_threshold_match_the_reference_on_maps_with_plateaus():
    """Few distinct values (thresholds that keep the same pixels reuse the boxes found
    before), rings with holes, regions touching the border, equal areas, empty maps."""
    from tedloc.pipeline.boxes import boxes_at_thresholds, contour_boxes
    from tedloc.pipeline.metrics import threshold_grid

    rng = np.random.default_rng(5)
    thresholds = threshold_grid(0.01)
    ring = np.zeros((40, 50), np.uint8)
    ring[5:35, 10:40] = 200
    ring[12:28, 18:32] = 0       # a hole
    ring[15:25, 21:29] = 255     # an island inside the hole
    twins = np.zeros((30, 30), np.uint8)
    twins[2:8, 2:8] = twins[20:26, 20:26] = 90  # two regions of equal area: V1 takes the first
    border = np.zeros((32, 32), np.uint8)
    border[:, :5] = 120
    border[0, :] = 60
    maps = [ring, twins, border, np.zeros((16, 16), np.uint8), np.full((16, 16), 7, np.uint8)]
    maps += [(rng.integers(0, 4, (24, 24)) * 80).astype(np.uint8) for _ in range(10)]
    for u8 in maps:
        for multi in (True, False):
            got = boxes_at_thresholds(u8, thresholds, multi_contour=multi)
            for tau, boxes in zip(thresholds, got, strict=True):
                np.testing.assert_array_equal(boxes, _boxes_reference(u8, tau, multi))
            for tau in thresholds[::7]:  # one threshold alone: no pixel count, same boxes
                alone = boxes_at_thresholds(u8, [tau], multi_contour=multi)
                np.testing.assert_array_equal(alone[0], _boxes_reference(u8, tau, multi))
        unordered = contour_boxes(u8, thresholds, largest=False, any_order=True).per_threshold(multi_contour=True)
        for tau, boxes in zip(thresholds, unordered, strict=True):  # RETR_LIST: same boxes, any order
            np.testing.assert_array_equal(np.unique(boxes, axis=0), np.unique(_boxes_reference(u8, tau, True), axis=0))


def test_one_contour_search_gives_v1_and_v2():
    from tedloc.pipeline.box_search import best_ious, best_ious_of
    from tedloc.pipeline.boxes import contour_boxes
    from tedloc.pipeline.metrics import threshold_grid

    rng = np.random.default_rng(8)
    thresholds = threshold_grid(0.05)
    scoremap = rng.random((32, 32)).astype(np.float32)
    gt = np.array([[3, 4, 20, 25], [10, 0, 31, 12]])
    found = contour_boxes((scoremap * 255).astype(np.uint8), thresholds)
    assert found.counts.sum() == len(found.boxes) and (found.counts >= 1).all()
    for multi in (True, False):
        np.testing.assert_array_equal(best_ious_of(found, gt, multi_contour=multi),
                                      best_ious(scoremap, gt, thresholds, multi_contour=multi))
    any_order = contour_boxes((scoremap * 255).astype(np.uint8), thresholds, largest=False, any_order=True)
    np.testing.assert_array_equal(any_order.counts, found.counts)
    for got, want in zip(any_order.per_threshold(multi_contour=True), found.per_threshold(multi_contour=True),
                         strict=True):  # the same boxes, in some order
        np.testing.assert_array_equal(np.unique(got, axis=0), np.unique(want, axis=0))
    v2_only = contour_boxes((scoremap * 255).astype(np.uint8), thresholds, largest=False)
    with pytest.raises(ValueError, match="largest"):
        best_ious_of(v2_only, gt, multi_contour=False)


def _maps_and_gt_boxes(rng, count):
    """Smooth and noisy 224×224 uint8-ready maps, each with 1-3 GT boxes of any size (a
    pixel to the whole map) anywhere, some at the map's edges."""
    import cv2

    from tedloc.pipeline.metrics import evaluation_map

    for k in range(count):
        grid = cv2.GaussianBlur(rng.random((14, 14)).astype(np.float32), (0, 0), 0.3 + 0.4 * (k % 4))
        count = int(rng.integers(1, 4))
        xs, ys = (np.sort(rng.integers(0, 224, (count, 2)), axis=1) for _ in range(2))
        gt = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
        if k % 5 == 0:
            gt[0] = [0, 0, 223, 223]
        yield evaluation_map(grid, 224), gt.astype(np.int64)


def test_box_iou_bounds_are_upper_bounds_of_every_box():
    from tedloc.pipeline.box_search import box_iou_bounds
    from tedloc.pipeline.boxes import contour_boxes, iou_matrix, scoremap_to_uint8
    from tedloc.pipeline.metrics import threshold_grid

    thresholds = threshold_grid(0.01)
    rng = np.random.default_rng(11)
    below = 0
    for scoremap, gt in _maps_and_gt_boxes(rng, 30):
        u8 = scoremap_to_uint8(scoremap)
        bounds = box_iou_bounds(u8, gt, thresholds)
        found = contour_boxes(u8, thresholds, largest=False, any_order=True)
        for tau, bound, boxes in zip(thresholds, bounds, found.per_threshold(multi_contour=True), strict=True):
            if (u8 > int(tau * u8.max())).any():
                assert iou_matrix(boxes, gt).max() <= bound
                below += bound < 0.3
            else:
                assert bound == np.inf
    assert below > 0  # the bound leaves some thresholds out of reach on these maps
    empty = np.zeros((8, 8), np.uint8)
    assert (box_iou_bounds(empty, np.array([[0, 0, 3, 3]]), thresholds) == np.inf).all()


def test_floor_skips_searches_but_not_hits():
    from tedloc.pipeline.box_search import best_ious
    from tedloc.pipeline.metrics import threshold_grid

    thresholds = threshold_grid(0.01)
    rng = np.random.default_rng(12)
    for scoremap, gt in _maps_and_gt_boxes(rng, 30):
        for multi in (True, False):
            exact = best_ious(scoremap, gt, thresholds, multi_contour=multi)
            floored = best_ious(scoremap, gt, thresholds, multi_contour=multi, floor=0.3)
            kept = floored > 0
            np.testing.assert_array_equal(floored[kept], exact[kept])
            assert (exact[~kept] < 0.3).all()
            for delta in (0.3, 0.5, 0.7):
                np.testing.assert_array_equal(floored >= delta, exact >= delta)


def test_accumulator_counts_equal_the_counts_of_every_threshold_searched():
    from tedloc.pipeline.box_search import best_ious
    from tedloc.pipeline.metrics import LocalizationAccumulator, threshold_grid

    thresholds = threshold_grid(0.01)
    rng = np.random.default_rng(13)
    for loc_multi_contour in (False, True):
        acc = LocalizationAccumulator(2, thresholds, loc_multi_contour=loc_multi_contour)
        v1_hits = np.zeros(len(thresholds), np.int64)
        v2_hits = np.zeros((3, len(thresholds)), np.int64)
        loc_hits = np.zeros(len(thresholds), np.int64)
        for scoremap, gt in _maps_and_gt_boxes(rng, 25):
            acc.add(scoremap, np.array([1.0, 0.0]), 0, gt)
            v1 = best_ious(scoremap, gt, thresholds, multi_contour=False)
            v2 = best_ious(scoremap, gt, thresholds, multi_contour=True)
            v1_hits += v1 >= 0.5
            v2_hits += np.stack([v2 >= delta / 100 for delta in (30, 50, 70)])
            loc_hits += (v2 if loc_multi_contour else v1) >= 0.5
        np.testing.assert_array_equal(acc.v1_hits[0], v1_hits)
        np.testing.assert_array_equal(acc.v2_hits[0], v2_hits)
        np.testing.assert_array_equal(acc.loc_hits[0], loc_hits)
        assert v2_hits[0].max() > 0 and v1_hits.max() > 0  # the maps do score somewhere
