"""Pseudo-label quality diagnostics on hand-made boxes, maps and masks."""

import numpy as np
import pytest

from tedloc.pipeline.boxes import boxes_from_map
from tedloc.pipeline.pseudo_quality import best_box_iou, mask_iou, region, summarize


def test_best_box_iou_takes_the_best_gt_box_and_scores_no_region_zero():
    gts = np.array([[0, 0, 9, 9], [20, 20, 29, 29]])
    # [20, 20, 29, 34] (10×15 px) holds the second GT box (10×10): 100 / 150.
    assert best_box_iou(np.array([20, 20, 29, 34]), gts) == pytest.approx(100 / 150)
    assert best_box_iou(np.zeros(4), gts) == 0.0


def test_region_is_what_boxes_are_drawn_from():
    m = np.zeros((20, 20))
    m[2:10, 2:10] = 0.4
    m[4:8, 4:8] = 1.0
    # Above 0.3 of the max: the 8×8 plateau; above 0.5: the 4×4 core.
    assert region(m, 0.3).sum() == 64 and region(m, 0.5).sum() == 16
    for level in (0.3, 0.5):
        ys, xs = np.nonzero(region(m, level))
        x0, y0, x1, y1 = boxes_from_map(m, level)[0]
        # boundingRect's far corner is x + w (one past the region), as in wsolevaluation
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_mask_iou_hand_case():
    m = np.zeros((10, 10))
    m[0:4, 0:4] = 1.0                 # 16 px
    mask = np.zeros((10, 10), bool)
    mask[2:6, 0:4] = True             # 16 px, 8 shared
    assert mask_iou(m, 0.5, mask) == pytest.approx(8 / 24)
    assert mask_iou(np.zeros((10, 10)), 0.5, np.zeros((10, 10), bool)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        mask_iou(m, 0.5, np.zeros((5, 5), bool))


def test_summarize_overall_and_by_group():
    ious = [0.9, 0.2, 0.5, 0.0]
    groups = [{"size": "small"}, {"size": "small"}, {"size": "large"}, {"size": "large"}]
    out = summarize(ious, groups)
    assert out["num_images"] == 4 and out["mean_iou"] == pytest.approx(0.4) and out["iou50"] == 0.5
    assert out["groups"]["size"]["small"] == {"num_images": 2, "mean_iou": pytest.approx(0.55), "iou50": 0.5}
    assert out["groups"]["size"]["large"]["iou50"] == 0.5
    assert summarize([])["mean_iou"] is None
    with pytest.raises(ValueError, match="group entries"):
        summarize(ious, groups[:2])
