"""The evaluate stage end to end on a tiny made-up dataset: outputs, resume, identity."""

import json

import cv2
import h5py
import numpy as np
import pytest

from tedloc.artifacts.store import ShardedReader
from tedloc.configs.evaluate import Config
from tedloc.errors import ConfigMismatchError, InputError
from tedloc.pipeline import box_search, metrics
from tedloc.pipeline.localizer import Localizer
from tedloc.stages import evaluate
from tests.helpers_data import make_wsol_tree
from tests.helpers_model import THRESHOLD, make_model_workdir


class _Counter:
    """Counts the images the model runs on; can stop the run after a number of them."""

    def __init__(self, monkeypatch, stop_after=None):
        self.calls = 0
        self.stop_after = stop_after
        original = Localizer.predict_features
        counter = self

        def counted(self, grid):
            if counter.stop_after is not None and counter.calls >= counter.stop_after:
                raise KeyboardInterrupt  # as if killed
            counter.calls += len(grid)
            return original(self, grid)

        monkeypatch.setattr(Localizer, "predict_features", counted)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    root = make_wsol_tree(tmp_path, splits={"train": 6, "test": 6}, num_classes=2, size=(48, 40))
    workdir = make_model_workdir(tmp_path / "work", root)
    return workdir, root, _Counter(monkeypatch)


def _config(**kwargs):
    return Config(**{"batch_size": 4, "num_workers": 0, "shard_size": 4, "num_overlays": 3, "device": "cpu",
                     **kwargs})


def test_outputs_and_metrics_recomputed_from_shards(setup):
    workdir, root, _ = setup
    manifest_path = evaluate.run(_config(), workdir=workdir)
    stage = workdir / "evaluate" / "data-test"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["format"] == "tedloc.evaluate" and manifest["num_images"] == 6
    results = json.loads((stage / "results.json").read_text())
    assert set(results["methods"]) == {"tedloc", "cam_baseline", "centre_prior"}
    assert results["methods"]["cam_baseline"]["label"] == "CAM baseline (GT-known map)"
    assert results["methods"]["cam_baseline"]["uses_label"] is True
    overall = results["methods"]["tedloc"]["overall"]
    for key in ("max_box_acc_v1", "max_box_acc_v2", "top1_loc", "top1_loc_oracle", "gt_known_loc",
                "top1_cls", "top5_cls", "max_box_acc_v2_iou30", "max_box_acc_v2_iou70"):
        assert 0.0 <= overall[key] <= 100.0, key
    assert overall["stored_threshold"] == THRESHOLD
    assert overall["top5_cls"] == 100.0  # two classes: the label is always in the top 5

    md = (stage / "results.md").read_text()
    assert "| Method |" in md and "MaxBoxAccV2" in md and "CAM baseline (GT-known map)" in md
    assert "Per class" in md

    lines = [json.loads(x) for x in (stage / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    assert {"image_id", "class_name", "score", "top5", "boxes", "box", "threshold"} <= set(lines[0])
    for line in lines:  # boxes are in original pixels of the 48×40 images
        for x0, y0, x1, y1 in line["boxes"]:
            assert 0 <= x0 <= x1 <= 48 and 0 <= y0 <= y1 <= 40

    assert len(list((stage / "overlays").glob("*.png"))) == 3
    curve = cv2.imread(str(stage / "boxacc_curve.png"))
    assert curve is not None and curve.shape[2] == 3

    # The baseline's non-oracle τ is the pseudo-labels' box threshold (its default), and
    # its classification is the CAM classifier's own (not the GT label it maps with).
    from tedloc.configs.pseudo_labels import Config as PseudoConfig

    baseline = results["methods"]["cam_baseline"]["overall"]
    assert baseline["stored_threshold"] == PseudoConfig().box_threshold

    # Shards hold the 224×224 maps; recomputing MaxBoxAccV1 from them by hand agrees.
    with ShardedReader(stage, "tedloc.evaluate") as reader:
        cam_logits = reader.read_all("cam_class_logits")
        labels = reader.read_all("label")
        assert baseline["top1_cls"] == pytest.approx(100 * np.mean(cam_logits.argmax(1) == labels))
        assert reader.read("map", reader.ids[0]).dtype == np.float16
        assert reader.read("map", reader.ids[0]).shape == (224, 224)
        assert reader.has("cam_map") and reader.has("cam_class_logits")
        from tedloc.data.wsol import read_wsol

        records = read_wsol(root, "test").by_id()
        grid = metrics.threshold_grid(0.01)
        hits = np.zeros(len(grid))
        for image_id in reader.ids:
            rec = records[image_id]
            gt = metrics.gt_boxes_at_eval_size(rec.boxes, (48, 40), 224)
            m = reader.read("map", image_id).astype(np.float32)
            hits += box_search.best_ious(m, gt, grid, multi_contour=False) >= 0.5
    assert overall["max_box_acc_v1"] == pytest.approx(100 * hits.max() / 6)


def test_resume_computes_only_the_rest(setup):
    workdir, _, fake = setup
    fake.stop_after = 4  # killed after the first shard of 4 images
    with pytest.raises(KeyboardInterrupt):
        evaluate.run(_config(), workdir=workdir)
    assert not (workdir / "evaluate" / "data-test" / "manifest.json").exists()
    assert fake.calls == 4
    fake.stop_after, fake.calls = None, 0
    evaluate.run(_config(), workdir=workdir)
    assert fake.calls == 2  # only the 2 images not in a finished shard


def test_changed_config_is_refused_unless_overwrite(setup):
    workdir, _, fake = setup
    evaluate.run(_config(), workdir=workdir)
    fake.calls = 0
    evaluate.run(_config(), workdir=workdir)  # same identity: nothing recomputed
    assert fake.calls == 0
    with pytest.raises(ConfigMismatchError):
        evaluate.run(_config(iou_thresholds=(50,)), workdir=workdir)
    evaluate.run(_config(iou_thresholds=(50,)), workdir=workdir, overwrite=True)
    results = json.loads((workdir / "evaluate" / "data-test" / "results.json").read_text())
    assert "max_box_acc_v2_iou30" not in results["methods"]["tedloc"]["overall"]


def test_export_scoremaps_in_wsolevaluation_layout_without_recomputing(setup):
    workdir, _, fake = setup
    evaluate.run(_config(), workdir=workdir)
    fake.calls = 0
    evaluate.run(_config(export_scoremaps=True), workdir=workdir)  # not hashed: report only
    assert fake.calls == 0
    path = workdir / "evaluate" / "data-test" / "scoremaps" / "images" / "test" / "0000.png.npy"
    scoremap = np.load(path)
    assert scoremap.shape == (224, 224) and scoremap.dtype == np.float64
    assert 0.0 <= scoremap.min() and scoremap.max() <= 1.0


def test_bad_image_fails_naming_it_or_is_skipped(setup):
    workdir, root, _ = setup
    bad = root / "images" / "test" / "0002.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match="0002.png"):
        evaluate.run(_config(), workdir=workdir)
    evaluate.run(_config(on_bad_image="skip"), workdir=workdir, overwrite=True)
    results = json.loads((workdir / "evaluate" / "data-test" / "results.json").read_text())
    assert results["num_images"] == 5
    assert list(results["skipped"]) == ["images/test/0002.png"]


def test_masks_give_pxap(tmp_path):
    root = make_wsol_tree(tmp_path, splits={"train": 6, "test": 4}, num_classes=2, masks=True)
    workdir = make_model_workdir(tmp_path / "work", root)
    evaluate.run(_config(), workdir=workdir)
    results = json.loads((workdir / "evaluate" / "data-test" / "results.json").read_text())
    overall = results["methods"]["tedloc"]["overall"]
    assert overall["num_images_with_masks"] == 4
    assert 0.0 < overall["pxap"] <= 100.0
    assert "max_box_acc_v1" not in overall  # no boxes in this split
    assert "PxAP" in (workdir / "evaluate" / "data-test" / "results.md").read_text()


def test_cam_classifier_shape_mismatch_is_an_artifact_error(setup):
    workdir, _, _ = setup
    path = workdir / "pseudo_labels" / "cam_classifier.h5"
    with h5py.File(path, "r+") as handle:
        del handle["weight"]
        handle["weight"] = np.zeros((2, 5), np.float32)
    from tedloc.errors import ArtifactError

    with pytest.raises(ArtifactError, match="cam_classifier.h5"):
        evaluate.run(_config(), workdir=workdir)


def test_nan_map_from_the_model_is_refused_naming_the_image(setup, monkeypatch):
    workdir, _, _ = setup
    original = Localizer.predict_features

    def nan_maps(self, grid):
        out = original(self, grid)
        out.maps[:] = float("nan")
        return out

    monkeypatch.setattr(Localizer, "predict_features", nan_maps)
    from tedloc.errors import ArtifactError

    with pytest.raises(ArtifactError, match=r"images/test/0000.png.*NaN"):
        evaluate.run(_config(), workdir=workdir)


def test_report_is_recomputed_from_shards_identically_with_worker_processes(setup):
    workdir, _, fake = setup
    evaluate.run(_config(), workdir=workdir)
    stage = workdir / "evaluate" / "data-test"
    first = json.loads((stage / "results.json").read_text())
    (stage / "manifest.json").unlink()  # shards stay: only the report is redone
    fake.calls = 0
    evaluate.run(_config(num_workers=2), workdir=workdir)
    assert fake.calls == 0
    second = json.loads((stage / "results.json").read_text())
    assert second["methods"] == first["methods"]


def test_stage_command_through_the_cli(setup):
    from typer.testing import CliRunner

    from tedloc.cli import app

    workdir, _, _ = setup
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "stage", "evaluate", "--num-workers", "0",
                                      "--device", "cpu", "--num-overlays", "1", "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "evaluate: done" in result.output
    results = json.loads((workdir / "evaluate" / "data-test" / "results.json").read_text())
    assert results["num_images"] == 3
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "stage", "evaluate", "--on-bad-image", "maybe"])
    assert result.exit_code == 1 and "on_bad_image" in result.output
