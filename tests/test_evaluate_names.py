"""Named evaluations (one folder per dataset and split in <workdir>/evaluate/) and the
class-agnostic mode (any dataset with boxes or masks, whatever its classes)."""

from __future__ import annotations

import json

import pytest

from tedloc.artifacts.evaluations import default_name, list_evaluations
from tedloc.configs.evaluate import Config
from tedloc.errors import ConfigError
from tedloc.pipeline.localizer import Localizer
from tedloc.stages import evaluate
from tests.helpers_cli import assert_one_line_error, invoke
from tests.helpers_data import make_wsol_tree
from tests.helpers_model import make_model_workdir


@pytest.fixture
def model(tmp_path, monkeypatch):
    root = make_wsol_tree(tmp_path, splits={"train": 6, "test": 6}, num_classes=2)
    # Another dataset: three classes the model does not know, boxes and masks.
    other = make_wsol_tree(tmp_path, splits={"test": 6}, num_classes=3, masks=True, boxes_too=True,
                           name="street", seed=3)
    (other / "metadata" / "class_names.txt").write_text("car\nlamp\nbench\n")
    calls = []
    original = Localizer.predict_features

    def counted(self, grid):
        calls.append(len(grid))
        return original(self, grid)

    monkeypatch.setattr(Localizer, "predict_features", counted)
    return make_model_workdir(tmp_path / "w", root), root, other, calls


def _args(workdir, *extra):
    return ["--workdir", workdir, "stage", "evaluate", "--num-workers", "0", "--device", "cpu",
            "--batch-size", "4", "--num-overlays", "1", *extra]


def _results(workdir, name):
    return json.loads((workdir / "evaluate" / name / "results.json").read_text())


def test_two_datasets_in_one_workdir_keep_both_evaluations(model):
    workdir, root, other, calls = model
    assert invoke(*_args(workdir)).exit_code == 0  # the dataset trained on: data-test
    first = _results(workdir, "data-test")
    # Other classes: refused with the option that scores them anyway.
    assert_one_line_error(invoke(*_args(workdir, "--dataset", other)), "the classes differ",
                          "2 of its 2 classes missing: class0, class1", "--class-agnostic")
    result = invoke(*_args(workdir, "--dataset", other, "--class-agnostic"))
    assert result.exit_code == 0, result.output

    assert _results(workdir, "data-test") == first  # untouched, no --overwrite needed
    agnostic = _results(workdir, "street-test")
    assert agnostic["class_agnostic"] is True and agnostic["class_names"] == ["car", "lamp", "bench"]
    assert agnostic["model_class_names"] == ["class0", "class1"]
    assert set(agnostic["methods"]) == {"tedloc", "centre_prior"}  # no CAM baseline of a GT class
    overall = agnostic["methods"]["tedloc"]["overall"]
    assert 0.0 <= overall["max_box_acc_v2"] <= 100.0 and 0.0 < overall["pxap"] <= 100.0
    assert overall["num_images_with_masks"] == 6 and overall["gt_known_loc"] is not None
    for key in ("top1_cls", "top5_cls", "top1_loc", "top5_loc", "top1_loc_oracle"):
        assert overall[key] is None, key
    assert set(agnostic["methods"]["tedloc"]["per_class"]) == {"car", "lamp", "bench"}
    md = (workdir / "evaluate" / "street-test" / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method |"))
    assert "**Class-agnostic**" in md and "Top-1 Cls" not in header and "MaxBoxAccV2" in header and "PxAP" in header
    line = json.loads((workdir / "evaluate" / "street-test" / "predictions.jsonl").read_text().splitlines()[0])
    assert line["label_name"] in ("car", "lamp", "bench") and line["class_name"] in ("class0", "class1")

    names = [(s.name, s.dataset, s.split, s.num_images, s.class_agnostic) for s in list_evaluations(workdir)]
    assert names == [("data-test", str(root), "test", 6, False), ("street-test", str(other), "test", 6, True)]
    shown = invoke("inspect", workdir)
    assert shown.exit_code == 0, shown.output
    assert "evaluate/data-test" in shown.output and "evaluate/street-test" in shown.output
    assert "evaluations (2," in shown.output and "street-test: " in shown.output and "class-agnostic" in shown.output


def test_same_name_resumes_and_a_taken_name_is_refused(model):
    workdir, _, other, calls = model
    assert invoke(*_args(workdir)).exit_code == 0
    calls.clear()
    assert invoke(*_args(workdir)).exit_code == 0  # the same name resumes: nothing computed again
    assert calls == []
    # Another dataset under a taken name: refused, pointing at --name; the results stay.
    before = _results(workdir, "data-test")
    assert_one_line_error(invoke(*_args(workdir, "--dataset", other, "--class-agnostic", "--name", "data-test")),
                          "data-test/manifest.json", "another --name (both are kept)")
    assert _results(workdir, "data-test") == before and calls == []


def test_the_models_own_classes_class_agnostic_give_the_same_maps(model):
    """--class-agnostic on the model's own classes: same boxes, label metrics left out."""
    workdir, root, _, _ = model
    config = Config(batch_size=4, num_workers=0, num_overlays=0, device="cpu")
    evaluate.run(config, workdir=workdir)
    evaluate.run(config.replace(class_agnostic=True, name="agnostic"), workdir=workdir)
    full, agnostic = _results(workdir, "data-test"), _results(workdir, "agnostic")
    for key in ("max_box_acc_v1", "max_box_acc_v2", "gt_known_loc", "gt_known_loc_oracle"):
        assert agnostic["methods"]["tedloc"]["overall"][key] == full["methods"]["tedloc"]["overall"][key], key
    assert agnostic["methods"]["tedloc"]["overall"]["top1_loc"] is None


def test_class_agnostic_without_boxes_or_masks_is_one_line(model, tmp_path):
    workdir, _, _, _ = model
    photos = tmp_path / "photos"  # an ImageFolder without boxes.csv
    for name in ("cat", "dog"):
        (photos / name).mkdir(parents=True)
        (photos / name / "a.png").write_bytes((tmp_path / "data" / "images" / "test" / "0000.png").read_bytes())
    assert_one_line_error(invoke(*_args(workdir, "--dataset", photos, "--class-agnostic")),
                          f"{photos}: split 'test' has neither boxes nor masks")


def test_default_names():
    assert default_name("demo", "test") == "demo-test"
    assert default_name("/data/CUB_200_2011", "test") == "CUB_200_2011-test"
    assert default_name("/data/dataset/CUB", "val", metadata="/data/metadata/CUB") == "CUB-val"
    assert default_name("hf:user/birds?image=img", "validation") == "birds-validation"
    assert default_name("/data/my photos", "test") == "my_photos-test"


@pytest.mark.parametrize("name", ["../up", "a/b", "", ".hidden", "shards", "results.json"])
def test_bad_names_are_refused(name):
    if not name:  # '' is the default: <dataset>-<split>
        assert Config(name=name).name == ""
        return
    with pytest.raises(ConfigError, match="name"):
        Config(name=name)


def test_bad_name_on_the_command_line_is_one_line(tmp_path):
    assert_one_line_error(invoke("--workdir", tmp_path / "w", "stage", "evaluate", "--name", "../up"),
                          "name '../up' must start with a letter or digit")
