"""The centre prior: its map worked out by hand, its MaxBoxAccV2 on hand-made boxes, and
its boxes searched once for every image."""

import math

import numpy as np
import pytest

from tedloc.pipeline import metrics
from tedloc.pipeline.centre_prior import centre_prior, centre_prior_map

GRID = metrics.threshold_grid(0.01)


def test_map_at_four_pixels_by_hand():
    # Pixel centres at (i + ½)/4 - ½ = ±1/8, ±3/8; with 2σ² = 1/8 the inner 4 pixels
    # (d² = 2/64) give e^{-1/4}, the 8 edge pixels (d² = 10/64) e^{-5/4}, the corners
    # (d² = 18/64) e^{-9/4}.  Min–max: 1, (e^{-5/4} - e^{-9/4}) / (e^{-1/4} - e^{-9/4}) =
    # 1 / (1 + e), 0.
    mid = 1 / (1 + math.e)
    want = np.array([[0, mid, mid, 0], [mid, 1, 1, mid], [mid, 1, 1, mid], [0, mid, mid, 0]])
    np.testing.assert_allclose(centre_prior_map(4, 0.25), want, rtol=1e-6)
    assert centre_prior_map(4, 0.25).dtype == np.float32


def test_map_is_centred_and_its_boxes_are_centred():
    prior = centre_prior(224, 0.25, tuple(GRID))
    m = prior.scoremap
    np.testing.assert_array_equal(m, m[::-1, :])
    np.testing.assert_array_equal(m, m[:, ::-1])
    np.testing.assert_array_equal(m, m.T)
    assert m.max() == 1.0 and m[111:113, 111:113].min() == 1.0 and m[0, 0] == 0.0
    boxes = prior.boxes.boxes[prior.boxes.largest]  # one region per threshold: a disc
    assert (prior.boxes.counts == 1).all()
    # A region spanning pixels a..223-a has the box [a, a, 224-a, 224-a] (x1 = x + w, as
    # wsolevaluation's), clipped to 223 for the whole image.
    far = np.where(boxes[:, 0] == 0, 223, 224 - boxes[:, 0])
    np.testing.assert_array_equal(boxes, np.stack([boxes[:, 0], boxes[:, 0], far, far], axis=1))
    side = boxes[:, 2] - boxes[:, 0] + 1
    assert (np.diff(side) <= 0).all()  # higher thresholds, smaller boxes
    assert side[0] == 224 and side[-1] < 20  # from the whole image to a small centred box


def test_max_box_acc_v2_of_hand_made_boxes():
    # At 4×4 (map above) the uint8 map is 255 inside, int(255 / (1 + e)) = 68 on the edges,
    # 0 at the corners: τ ≤ 0.26 (int(τ·255) < 68) gives the box [0, 0, 3, 3], τ ≥ 0.27
    # the inner [1, 1, 2, 2].  GT boxes:
    #   A = [1, 1, 2, 2]: IoU 1 for τ ≥ 0.27, 4/16 below;
    #   B = [0, 0, 3, 3]: IoU 1 for τ ≤ 0.26, 4/16 above;
    #   C = [0, 0, 2, 2]: 9/16 = 0.5625 for τ ≤ 0.26, 4/9 = 0.444 above.
    # δ = 30: 2 of 3 at every τ; δ = 50: B and C for τ ≤ 0.26; δ = 70: one at every τ.
    # MaxBoxAccV2 = (2/3 + 2/3 + 1/3) / 3 · 100 = 500 / 9.
    prior = centre_prior(4, 0.25, tuple(GRID))
    acc = metrics.LocalizationAccumulator(1, GRID, classifies=False)
    for gt in ([[1, 1, 2, 2]], [[0, 0, 3, 3]], [[0, 0, 2, 2]]):
        acc.add(None, None, 0, np.array(gt), fixed=prior)
    overall = acc.compute()["overall"]
    assert overall["max_box_acc_v2"] == pytest.approx(500 / 9)
    assert overall["max_box_acc_v2_iou30"] == pytest.approx(200 / 3)
    assert overall["max_box_acc_v2_iou50"] == pytest.approx(200 / 3)
    assert overall["max_box_acc_v2_iou70"] == pytest.approx(100 / 3)
    assert overall["oracle_threshold"] == 0.0 and overall["gt_known_loc_oracle"] == pytest.approx(200 / 3)
    # No classifier, no threshold chosen without GT: those metrics are not computed.
    for key in ("top1_cls", "top5_cls", "top1_loc", "top5_loc", "top1_loc_oracle", "top5_loc_oracle",
                "gt_known_loc", "stored_threshold"):
        assert overall[key] is None, key


def test_gt_box_of_the_thresholded_region_is_found_at_its_threshold():
    # At 224 px pixel x sits at (x - 111.5)/224; σ = 0.25 (2σ² = 1/8).  The map's maximum
    # (d² = 2·(1/448)²) is e^{-0.0000797} = 0.99992, its minimum (the corners, d² =
    # 2·(111.5/224)²) e^{-3.9644} = 0.01898.  τ = 0.5 keeps uint8 values > int(0.5·255) = 127,
    # i.e. g' ≥ 128/255: g ≥ 0.01898 + (128/255)(0.99992 - 0.01898) = 0.51137,
    # d² ≤ -ln(0.51137)/8 = 0.083832.  The widest rows (y = ±0.5/224) reach
    # |x - 111.5| ≤ 224·√(0.083832 - 0.0000050) = 64.85: pixels 47..176, the box
    # [47, 47, 177, 177] (x1 = x + w).
    prior = centre_prior(224, 0.25, tuple(GRID))
    at_half = int(np.flatnonzero(np.isclose(GRID, 0.5))[0])
    box = prior.boxes.boxes[prior.boxes.largest[at_half]]
    np.testing.assert_array_equal(box, [47, 47, 177, 177])
    # That box as GT: IoU 1 at τ = 0.5, a hit at every δ, MaxBoxAccV2 100.
    acc = metrics.LocalizationAccumulator(1, GRID, classifies=False)
    acc.add(None, None, 0, np.array([[47, 47, 177, 177]]), fixed=prior)
    overall = acc.compute()["overall"]
    assert overall["max_box_acc_v2"] == 100.0 and overall["max_box_acc_v2_iou70"] == 100.0
    assert acc.compute()["curves"]["v2_iou70"][at_half] == 100.0
    # A box in the corner meets no centred box with IoU ≥ 0.3.
    acc = metrics.LocalizationAccumulator(1, GRID, classifies=False)
    acc.add(None, None, 0, np.array([[0, 0, 20, 20]]), fixed=prior)
    assert acc.compute()["overall"]["max_box_acc_v2"] == 0.0


def test_boxes_found_once_give_the_counts_of_a_search(monkeypatch):
    prior = centre_prior(64, 0.25, tuple(GRID))
    rng = np.random.default_rng(2)
    searched = metrics.LocalizationAccumulator(2, GRID, classifies=False)
    once = metrics.LocalizationAccumulator(2, GRID, classifies=False)
    cases = []
    for _ in range(30):
        x0, y0 = rng.integers(0, 40, size=2)
        cases.append((int(rng.integers(0, 2)), np.array([[x0, y0, x0 + rng.integers(3, 24), y0 + rng.integers(3, 24)]])))
    fg = np.zeros((64, 64), bool)
    fg[20:40, 16:48] = True
    for label, gt in cases:
        searched.add(prior.scoremap, None, label, gt, foreground=fg)

    def no_search(*args, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr(metrics, "boxes_within_reach", no_search)
    monkeypatch.setattr(metrics, "contour_boxes", no_search)
    for label, gt in cases:
        once.add(None, None, label, gt, foreground=fg, fixed=prior)
    assert once.compute(["a", "b"]) == searched.compute(["a", "b"])
    assert searched.compute()["overall"]["max_box_acc_v2"] > 0


def test_class_scores_must_match_whether_the_method_classifies():
    prior = centre_prior(16, 0.25, tuple(GRID))
    with pytest.raises(ValueError, match="without a classifier"):
        metrics.LocalizationAccumulator(2, GRID, classifies=False).add(None, np.zeros(2), 0, None, fixed=prior)
    with pytest.raises(ValueError, match="missing"):
        metrics.LocalizationAccumulator(2, GRID).add(prior.scoremap, None, 0, None)
    with pytest.raises(ValueError, match="sigma"):
        centre_prior_map(16, 0.0)
