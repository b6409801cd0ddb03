"""The evaluate stage's results by object size and count, and its centre-prior row, on a
tiny made-up split whose boxes were chosen by hand."""

import json

import numpy as np
import pytest

from tedloc.configs.evaluate import Config
from tedloc.data.open import open_dataset
from tedloc.errors import ConfigError
from tedloc.pipeline import metrics
from tedloc.pipeline.centre_prior import centre_prior
from tedloc.stages import evaluate
from tedloc.stages.evaluate_report import ReportInputs, compute_report
from tests.helpers_data import make_wsol_tree
from tests.helpers_model import make_model_workdir

# 48×40 images (1920 px).  Boxes x0,y0,x1,y1 with inclusive corners ("+1" areas).
BOXES = {
    "images/test/0000.png": [[2, 2, 8, 8]],                        # 49 px: 0.026 -> <0.05
    "images/test/0001.png": [[0, 0, 19, 14], [30, 20, 35, 25]],    # 300 px: 0.156 -> 0.15-0.30, 2 boxes
    "images/test/0002.png": [[10, 5, 40, 35]],                     # 961 px: 0.50 -> >=0.30
    "images/test/0003.png": [],                                    # no box: in no group
    "images/test/0004.png": [[5, 5, 20, 15]],                      # 176 px: 0.092 -> 0.05-0.15
    "images/test/0005.png": [[30, 25, 40, 35], [0, 0, 23, 19]],    # 480 px: 0.25 -> 0.15-0.30, 2 boxes
}
GROUP_IDS = {
    ("by_box_fraction", "<0.05"): ["images/test/0000.png"],
    ("by_box_fraction", "0.05-0.15"): ["images/test/0004.png"],
    ("by_box_fraction", "0.15-0.30"): ["images/test/0001.png", "images/test/0005.png"],
    ("by_box_fraction", ">=0.30"): ["images/test/0002.png"],
    ("by_num_boxes", "1"): ["images/test/0000.png", "images/test/0002.png", "images/test/0004.png"],
    ("by_num_boxes", "2+"): ["images/test/0001.png", "images/test/0005.png"],
}


@pytest.fixture
def workdir(tmp_path):
    root = make_wsol_tree(tmp_path, splits={"train": 6, "test": 6}, num_classes=2, size=(48, 40))
    lines = [f"{image_id},{','.join(map(str, box))}" for image_id, boxes in BOXES.items() for box in boxes]
    (root / "metadata" / "test" / "localization.txt").write_text("\n".join(lines) + "\n")
    return make_model_workdir(tmp_path / "work", root), root


def _config(**kwargs):
    return Config(**{"batch_size": 4, "num_workers": 0, "shard_size": 4, "num_overlays": 0, "device": "cpu",
                     **kwargs})


def test_groups_hold_the_hand_binned_images_and_equal_evaluations_of_them_alone(workdir):
    workdir, root = workdir
    evaluate.run(_config(), workdir=workdir)
    stage = workdir / "evaluate" / "data-test"
    results = json.loads((stage / "results.json").read_text())
    assert set(results["methods"]) == {"tedloc", "cam_baseline", "centre_prior"}
    assert results["conventions"]["groups"]["by_box_fraction"] == ["<0.05", "0.05-0.15", "0.15-0.30", ">=0.30"]
    for key, method in results["methods"].items():
        overall = method["overall"]
        assert overall["num_images"] == 6 and overall["num_images_with_boxes"] == 5
        for (family, group), ids in GROUP_IDS.items():
            assert method[family][group]["num_images"] == len(ids), (key, family, group)
        for family in ("by_box_fraction", "by_num_boxes"):  # the image without boxes is in none
            assert sum(g["num_images"] for g in method[family].values()) == overall["num_images_with_boxes"]

        # Every contour's boxes include the largest one's: Loc with them is never lower.
        for values in [overall, *method["by_box_fraction"].values(), *method["by_num_boxes"].values()]:
            assert values["gt_known_loc_oracle_all_contours"] >= values["gt_known_loc_oracle"], key
            if values["gt_known_loc"] is not None:
                assert values["gt_known_loc_all_contours"] >= values["gt_known_loc"], key

    md = (stage / "results.md").read_text()
    assert "## By object size" in md and "## By number of GT boxes" in md
    assert "## Loc with every contour's box" in md and "GT-known Loc, every contour" in md
    assert "| Centre prior (no learning) | >=0.30 | 1 |" in md

    # Each group's metrics are those of the report made of its images alone (same shards;
    # it rewrites the report files).
    dataset = open_dataset(str(root), "test")
    for (family, group), ids in GROUP_IDS.items():
        alone = compute_report(stage, _config(), ReportInputs(
            dataset=dataset, records=[r for r in dataset.records if r.image_id in ids],
            class_names=results["class_names"],
            stored_threshold=results["methods"]["tedloc"]["overall"]["stored_threshold"],
            baseline_threshold=results["methods"]["cam_baseline"]["overall"]["stored_threshold"],
            checkpoint=results["checkpoint"]))
        assert alone["num_images"] == len(ids)
        for key, method in results["methods"].items():
            assert method[family][group] == alone["methods"][key]["overall"], (key, family, group)



def test_centre_prior_row_scores_the_same_map_for_every_image(workdir):
    workdir, _ = workdir
    evaluate.run(_config(num_workers=2), workdir=workdir)
    results = json.loads((workdir / "evaluate" / "data-test" / "results.json").read_text())
    method = results["methods"]["centre_prior"]
    assert method["label"] == "Centre prior (no learning)" and method["uses_label"] is False
    overall = method["overall"]
    for key in ("top1_cls", "top5_cls", "top1_loc", "top5_loc", "top1_loc_oracle", "gt_known_loc",
                "stored_threshold"):
        assert overall[key] is None, key
    # The same numbers from the prior searched per image, with the split's boxes rescaled
    # to 224 by hand.
    grid = metrics.threshold_grid(0.01)
    prior = centre_prior(224, 0.25, tuple(grid))
    acc = metrics.LocalizationAccumulator(2, grid, classifies=False)
    labels = {f"images/test/{i:04d}.png": i % 2 for i in range(6)}
    for image_id, boxes in BOXES.items():
        gt = np.array(boxes, np.float64).reshape(-1, 4) * [224 / 48, 224 / 40, 224 / 48, 224 / 40]
        acc.add(prior.scoremap, None, labels[image_id], gt.astype(np.int64) if boxes else None)
    want = acc.compute()["overall"]
    for key in ("max_box_acc_v1", "max_box_acc_v2", "gt_known_loc_oracle", "oracle_threshold", "num_images"):
        assert overall[key] == want[key], key


def test_changed_report_settings_rewrite_the_report_without_new_maps(workdir, monkeypatch):
    workdir, _ = workdir
    evaluate.run(_config(), workdir=workdir)
    from tedloc.pipeline.localizer import Localizer

    def no_forward(*args, **kwargs):
        raise AssertionError("maps were recomputed")

    monkeypatch.setattr(Localizer, "predict_features", no_forward)
    evaluate.run(_config(box_fraction_bins=(0.1,), centre_prior=False), workdir=workdir)
    results = json.loads((workdir / "evaluate" / "data-test" / "results.json").read_text())
    assert set(results["methods"]) == {"tedloc", "cam_baseline"}
    tedloc = results["methods"]["tedloc"]["by_box_fraction"]
    assert {k: g["num_images"] for k, g in tedloc.items()} == {"<0.10": 2, ">=0.10": 3}  # 0000 and 0004 below 0.10
    manifest = json.loads((workdir / "evaluate" / "data-test" / "manifest.json").read_text())
    assert manifest["report_settings"] == {"box_fraction_bins": [0.1], "centre_prior": False,
                                           "centre_prior_sigma": 0.25}


@pytest.mark.parametrize("values", [{"box_fraction_bins": ()}, {"box_fraction_bins": (0.3, 0.1)},
                                    {"box_fraction_bins": (0.0, 0.1)}, {"centre_prior_sigma": 0.0}])
def test_bad_group_and_prior_settings_are_refused(values):
    with pytest.raises(ConfigError, match=next(iter(values))):
        Config(**values)
