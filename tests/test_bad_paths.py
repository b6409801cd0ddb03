"""Paths a new user gets wrong: relative paths read later from another directory, a workdir
that is a file, ``predict`` outputs that cannot be written (refused before any work)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tedloc.artifacts.store import ArtifactHeader, write_manifest
from tests.helpers_cli import assert_one_line_error, invoke
from tests.helpers_data import draw_image, make_wsol_tree
from tests.helpers_model import save_tiny_checkpoint

TINY = ["--encoder", "tiny-cnn", "--input-size", "32", "--batch-size", "4", "--shard-size", "4",
        "--num-workers", "0", "--device", "cpu"]
EVALUATE = ["stage", "evaluate", "--num-workers", "0", "--device", "cpu", "--batch-size", "4",
            "--num-overlays", "0"]


def _model_from(workdir: Path, class_names: list[str]) -> None:
    """A tiny random model in ``workdir/train`` over the pseudo-labels already there."""
    save_tiny_checkpoint(workdir / "train" / "model.pt", class_names)
    write_manifest(workdir / "train", ArtifactHeader("tedloc.train", 1, {}, "tiny", ""), files=["model.pt"])


# ----------------------------------------------------------------------------- relative paths

def test_relative_dataset_is_read_from_where_it_was_given(tmp_path, monkeypatch):
    """``--dataset data`` given in one directory; evaluate run from another directory that
    has its own ``data`` folder reads the first one (it used to read the second, silently)."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    make_wsol_tree(project, splits={"train": 6, "test": 6}, num_classes=2)
    make_wsol_tree(elsewhere, splits={"train": 4, "test": 2}, num_classes=2, seed=7)
    workdir = tmp_path / "w"
    monkeypatch.chdir(project)
    result = invoke("--workdir", workdir, "stage", "pseudo-labels", "--dataset", "data", *TINY)
    assert result.exit_code == 0, result.output
    manifest = json.loads((workdir / "pseudo_labels" / "manifest.json").read_text())
    assert manifest["dataset"] == manifest["config"]["dataset"] == str(project / "data")
    _model_from(workdir, ["class0", "class1"])

    monkeypatch.chdir(elsewhere)
    result = invoke("--workdir", workdir, *EVALUATE)
    assert result.exit_code == 0, result.output
    results = json.loads((workdir / "evaluate" / "data-test" / "results.json").read_text())
    assert results["num_images"] == 6  # the project's test split, not elsewhere's 2 images
    assert json.loads((workdir / "evaluate" / "data-test" / "manifest.json").read_text())["dataset"] == str(project / "data")


def test_relative_dataset_in_messages_is_shown_as_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("--workdir", "w", "stage", "pseudo-labels", "--dataset", "mydata", *TINY)
    assert_one_line_error(result, "error: mydata: dataset not found")
    assert not (tmp_path / "w" / "pseudo_labels" / "manifest.json").exists()


def test_relative_text_embed_paths_are_stored_absolute(tmp_path, monkeypatch):
    from tests.helpers_data import save_tiny_clip

    make_wsol_tree(tmp_path, splits={"train": 4}, num_classes=2)
    save_tiny_clip(tmp_path / "clip")
    (tmp_path / "names.csv").write_text("class0,red thing\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n")
    monkeypatch.chdir(tmp_path)
    args = ["--workdir", "w", "stage", "text-embed", "--dataset", "data", "--class-name-map", "names.csv",
            "--templates-file", "templates.txt", "--text-encoder", "clip:clip", "--device", "cpu"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "w" / "text_embed" / "manifest.json").read_text())
    assert manifest["config"]["dataset"] == manifest["dataset"] == str(tmp_path / "data")
    assert manifest["config"]["class_name_map"] == str(tmp_path / "names.csv")
    assert manifest["config"]["templates_file"] == str(tmp_path / "templates.txt")
    assert manifest["config"]["text_encoder"] == manifest["text_encoder"] == f"clip:{tmp_path / 'clip'}"
    # The same files spelt absolute are the same run (nothing to redo), not a changed config.
    absolute = [str(tmp_path / a) if a in ("data", "names.csv", "templates.txt") else a for a in args]
    absolute[absolute.index("clip:clip")] = f"clip:{tmp_path / 'clip'}"
    again = invoke(*absolute)
    assert again.exit_code == 0, again.output


def test_relative_encoder_folder_is_found_by_predict_from_anywhere(tmp_path, monkeypatch):
    """A model trained with ``--encoder clip:clip`` rebuilds its encoder from the path in
    its checkpoint; predict run from a directory with another ``clip`` folder (other
    weights) still uses the one trained with."""
    from tests.helpers_data import save_tiny_clip

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    make_wsol_tree(project, splits={"train": 6}, num_classes=2)
    save_tiny_clip(project / "clip")
    save_tiny_clip(elsewhere / "clip", seed=5)
    workdir = tmp_path / "w"
    monkeypatch.chdir(project)
    for args in (["text-embed", "--dataset", "data", "--text-encoder", "clip:clip", "--device", "cpu"],
                 ["pseudo-labels", "--dataset", "data", "--encoder", "clip:clip", "--method", "cam",
                  "--batch-size", "4", "--num-workers", "0", "--device", "cpu"],
                 ["train", "--epochs", "1", "--batch-size", "4", "--width", "16", "--depth", "1",
                  "--patch-hidden", "8", "--num-workers", "0", "--device", "cpu", "--no-progress"]):
        result = invoke("--workdir", workdir, "stage", *args)
        assert result.exit_code == 0, result.output
    manifest = json.loads((workdir / "pseudo_labels" / "manifest.json").read_text())
    assert manifest["encoder"] == manifest["config"]["encoder"] == f"clip:{project / 'clip'}"
    photo = project / "data" / "images" / "train" / "0001.png"
    here = invoke("--workdir", workdir, "predict", photo, "--device", "cpu")
    assert here.exit_code == 0, here.output
    monkeypatch.chdir(elsewhere)
    there = invoke("--workdir", workdir, "predict", photo, "--device", "cpu")
    assert there.exit_code == 0, there.output
    assert json.loads(there.stdout)["predictions"] == json.loads(here.stdout)["predictions"]


def test_old_artifact_with_a_relative_dataset_warns(tmp_path, monkeypatch, caplog):
    from tedloc.paths import recorded_dataset

    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING"):
        assert recorded_dataset("data", "w/pseudo_labels/manifest.json") == "data"
    assert "relative to the directory it was made in" in caplog.text and str(tmp_path / "data") in caplog.text
    caplog.clear()
    for spec in ("demo", "hf:user/name", str(tmp_path / "data")):
        recorded_dataset(spec, "m.json")
    assert not caplog.text


# ----------------------------------------------------------------------------- workdir

def test_workdir_that_is_a_file(tmp_path):
    root = make_wsol_tree(tmp_path, splits={"train": 4}, num_classes=2)
    (tmp_path / "notes.txt").write_text("mine\n")
    result = invoke("--workdir", tmp_path / "notes.txt", "stage", "pseudo-labels", "--dataset", root, *TINY)
    assert_one_line_error(result, str(tmp_path / "notes.txt"), "the workdir is a file", "--workdir")
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_workdir_below_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    result = invoke("--workdir", tmp_path / "notes.txt" / "run", "demo", "--quick")
    assert_one_line_error(result, str(tmp_path / "notes.txt"), "is a file", "--workdir")


def test_stage_folder_that_is_a_file(tmp_path):
    root = make_wsol_tree(tmp_path, splits={"train": 4}, num_classes=2)
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "pseudo_labels").write_text("not a folder\n")
    result = invoke("--workdir", workdir, "stage", "pseudo-labels", "--dataset", root, *TINY)
    assert_one_line_error(result, str(workdir / "pseudo_labels"), "move it")
    assert (workdir / "pseudo_labels").read_text() == "not a folder\n"


# ----------------------------------------------------------------------------- predict outputs

@pytest.fixture
def model(tmp_path):
    workdir = tmp_path / "w"
    _model_from(workdir, ["class0", "class1"])
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        image, _ = draw_image(rng, i % 2, (60, 50))
        cv2.imwrite(str(photos / f"p{i}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return workdir, photos


@pytest.fixture
def nothing_computed(monkeypatch):
    """Fails the test if predict decodes a single image."""
    from tedloc.stages import predict

    def refuse(path):
        raise AssertionError(f"{path} was decoded before the outputs were checked")

    monkeypatch.setattr(predict, "load_rgb", refuse)


def test_predict_out_json_that_is_a_folder(model, tmp_path, nothing_computed):
    workdir, photos = model
    (tmp_path / "out").mkdir()
    result = invoke("--workdir", workdir, "predict", photos, "--out-json", tmp_path / "out", "--device", "cpu")
    assert_one_line_error(result, str(tmp_path / "out"), "is a folder", "--out-json")


def test_predict_out_json_below_a_file(model, tmp_path, nothing_computed):
    workdir, photos = model
    (tmp_path / "notes.txt").write_text("mine\n")
    result = invoke("--workdir", workdir, "predict", photos, "--out-json", tmp_path / "notes.txt" / "p.json",
                    "--device", "cpu")
    assert_one_line_error(result, str(tmp_path / "notes.txt"), "is a file", "--out-json")
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_predict_overlays_that_is_a_file(model, tmp_path, nothing_computed):
    workdir, photos = model
    (tmp_path / "notes.txt").write_text("mine\n")
    result = invoke("--workdir", workdir, "predict", photos, "--overlays", tmp_path / "notes.txt",
                    "--device", "cpu")
    assert_one_line_error(result, str(tmp_path / "notes.txt"), "not a folder", "--overlays")
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_predict_same_path_for_json_and_overlays(model, tmp_path, nothing_computed):
    workdir, photos = model
    out = tmp_path / "out"
    result = invoke("--workdir", workdir, "predict", photos, "--out-json", out, "--overlays", out, "--device", "cpu")
    assert_one_line_error(result, str(out), "both --out-json and --overlays")
    assert not out.exists()


def test_predict_writes_both_outputs_when_they_are_fine(model, tmp_path):
    """The checks refuse only what cannot work: new folders are created as before."""
    workdir, photos = model
    out, pictures = tmp_path / "new" / "p.json", tmp_path / "new" / "pictures"
    result = invoke("--workdir", workdir, "predict", photos, "--out-json", out, "--overlays", pictures,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())["predictions"]) == 3
    assert len(list(pictures.glob("*.png"))) == 3


def test_predict_folder_without_images(model, tmp_path):
    workdir, _ = model
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here\n")
    result = invoke("--workdir", workdir, "predict", tmp_path / "empty", "--device", "cpu")
    assert_one_line_error(result, str(tmp_path / "empty"), "no image files")


def test_predict_missing_image_file(model, tmp_path, nothing_computed):
    workdir, photos = model
    result = invoke("--workdir", workdir, "predict", photos / "p0.jpg", photos / "p9.jpg", "--device", "cpu")
    assert_one_line_error(result, str(photos / "p9.jpg"), "image file not found")


def test_predict_without_a_trained_model(tmp_path, nothing_computed):
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.zeros((8, 8, 3), np.uint8))
    result = invoke("--workdir", tmp_path / "w", "predict", photo, "--device", "cpu")
    assert_one_line_error(result, str(tmp_path / "w" / "train" / "model.pt"), "checkpoint not found", "--checkpoint")
