"""Classes matched by name: a dataset (or an upstream artifact) listing the model's classes
in another order is mapped, with the same results; different classes are refused naming
every missing and extra one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest
import torch

from tedloc.data.classes import match_classes
from tedloc.errors import ConfigError
from tests.helpers_artifacts import make_pseudo_labels, make_text_embed
from tests.helpers_cli import assert_one_line_error, invoke
from tests.helpers_data import make_wsol_tree
from tests.helpers_model import make_model_workdir

NAMES = ["zebra", "apple", "mango"]  # not alphabetical: an ImageFolder sorts them otherwise


def _evaluate(workdir: Path, dataset: Path, *extra: str):
    # One image per forward: each map is then computed exactly alike whatever the order.
    return invoke("--workdir", workdir, "stage", "evaluate", "--dataset", dataset, "--num-workers", "0",
                  "--device", "cpu", "--batch-size", "1", "--num-overlays", "0", "--overwrite", *extra)


def _metrics(results: dict) -> dict:
    return {key: {"overall": method["overall"], "per_class": method.get("per_class")}
            for key, method in results["methods"].items()}


def _imagefolder_copy(root: Path, target: Path, split: str = "test") -> Path:
    """``root``'s split as ``target/<split>/<class name>/<file>`` with a boxes.csv."""
    names = (root / "metadata" / "class_names.txt").read_text().split()
    meta = root / "metadata" / split
    labels = dict(line.rsplit(",", 1) for line in (meta / "class_labels.txt").read_text().split())
    lines = ["relative_path,x0,y0,x1,y1"]
    for line in (meta / "localization.txt").read_text().split():
        image_id, *box = line.split(",")
        relative = f"{names[int(labels[image_id])]}/{Path(image_id).name}"
        (target / split / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / image_id, target / split / relative)
        lines.append(",".join([relative, *box]))
    (target / split / "boxes.csv").write_text("\n".join(lines) + "\n")
    return target


@pytest.fixture
def model(tmp_path):
    root = make_wsol_tree(tmp_path, splits={"train": 6, "test": 9}, num_classes=3)
    (root / "metadata" / "class_names.txt").write_text("\n".join(NAMES) + "\n")
    return make_model_workdir(tmp_path / "w", root), root


def test_imagefolder_of_the_models_classes_gives_the_same_metrics(model, tmp_path):
    workdir, root = model
    result = _evaluate(workdir, root)
    assert result.exit_code == 0, result.output
    original = json.loads((workdir / "evaluate" / "data-test" / "results.json").read_text())
    assert "label_map" not in original

    folder = _imagefolder_copy(root, tmp_path / "folder")
    result = _evaluate(workdir, folder)
    assert result.exit_code == 0, result.output
    mapped = json.loads((workdir / "evaluate" / "folder-test" / "results.json").read_text())
    assert mapped["dataset_class_names"] == sorted(NAMES)
    # dataset label -> model class: apple 0 -> 1, mango 1 -> 2, zebra 2 -> 0
    assert mapped["label_map"] == [1, 2, 0]
    assert json.loads((workdir / "evaluate" / "folder-test" / "manifest.json").read_text())["label_map"] == [1, 2, 0]
    assert mapped["class_names"] == NAMES and mapped["num_images"] == original["num_images"] == 9
    assert mapped["methods"]["tedloc"]["overall"]["max_box_acc_v2"] is not None
    assert _metrics(mapped) == _metrics(original)
    # Each prediction's GT label is the model's index of the image's class.
    for line in (workdir / "evaluate" / "folder-test" / "predictions.jsonl").read_text().splitlines():
        item = json.loads(line)
        assert item["label_name"] == item["image_id"].split("/")[0]


def test_reordered_class_names_file_gives_the_same_metrics(model, tmp_path):
    """A wsolevaluation copy whose class_names.txt (and labels) list the classes in another order."""
    workdir, root = model
    # A second workdir with the same model: in one workdir the reordered split would be
    # recognized as the evaluation already done (same images, labels and model).
    second = tmp_path / "w2"
    shutil.copytree(workdir, second)
    assert _evaluate(workdir, root).exit_code == 0
    original = json.loads((workdir / "evaluate" / "data-test" / "results.json").read_text())
    other = tmp_path / "reordered"
    shutil.copytree(root, other)
    order = ["mango", "zebra", "apple"]
    (other / "metadata" / "class_names.txt").write_text("\n".join(order) + "\n")
    labels = other / "metadata" / "test" / "class_labels.txt"
    lines = [line.rsplit(",", 1) for line in labels.read_text().split()]
    labels.write_text("".join(f"{i},{order.index(NAMES[int(k)])}\n" for i, k in lines))
    result = _evaluate(second, other)
    assert result.exit_code == 0, result.output
    mapped = json.loads((second / "evaluate" / "reordered-test" / "results.json").read_text())
    assert mapped["label_map"] == [2, 0, 1]
    assert _metrics(mapped) == _metrics(original)


def test_different_classes_name_every_missing_and_extra_one(model, tmp_path):
    workdir, root = model
    other = tmp_path / "other"
    shutil.copytree(root, other)
    (other / "metadata" / "class_names.txt").write_text("zebra\npear\nkiwi\n")
    line = assert_one_line_error(_evaluate(workdir, other), str(other), str(workdir / "train" / "model.pt"),
                                 "2 of its 3 classes missing: apple, mango", "2 not among them: pear, kiwi")
    assert "..." not in line
    assert not (workdir / "evaluate" / "other-test").exists()


def test_match_classes_by_name(caplog):
    assert match_classes(["a", "b"], ["a", "b"], found_where="d", wanted_where="m", hint="h") is None
    with caplog.at_level("INFO", logger="tedloc.data.classes"):
        assert match_classes(["b", "c", "a"], ["a", "b", "c"], found_where="d", wanted_where="m",
                             hint="h") == [1, 2, 0]
    assert "d lists the classes of m in another order" in caplog.text and "'b' 0->1" in caplog.text
    with pytest.raises(ConfigError, match=r"^d: the classes differ from m's \(1 of its 2 classes missing: b\); h$"):
        match_classes(["a"], ["a", "b"], found_where="d", wanted_where="m", hint="h")
    with pytest.raises(ConfigError, match="class names repeat"):
        match_classes(["a", "b", "a"], ["b", "a", "a"], found_where="d", wanted_where="m", hint="h")


# ----------------------------------------------------------------------------- train

def _train_args(workdir: Path) -> list[str]:
    return ["--workdir", str(workdir), "stage", "train", "--epochs", "2", "--batch-size", "8", "--width", "16",
            "--depth", "1", "--num-workers", "0", "--device", "cpu", "--no-progress", "--threshold-size", "64",
            "--inference-scale", "1"]


def _pseudo_labels_named(workdir: Path, names: list[str], order: list[str]) -> None:
    """Synthetic pseudo-labels whose manifest lists ``order``; labels re-indexed to it."""
    from tedloc.artifacts.integrity import seal_file

    make_pseudo_labels(workdir, num_classes=len(names))
    stage = workdir / "pseudo_labels"
    for shard in sorted((stage / "shards").glob("*.h5")):
        with h5py.File(shard, "r+") as handle:
            labels = handle["label"][()]
            handle["label"][...] = [order.index(names[k]) if names[k] in order else k for k in labels]
        seal_file(shard)  # edited on purpose: its checksum is made again, as a writer would
    manifest = json.loads((stage / "manifest.json").read_text())
    manifest["class_names"] = order
    (stage / "manifest.json").write_text(json.dumps(manifest))


def test_train_maps_pseudo_labels_listed_in_another_order(tmp_path):
    from tedloc.artifacts.checkpoint import load_checkpoint

    names = ["class0", "class1", "class2"]
    runs = {}
    for name, order in (("same", names), ("reordered", ["class2", "class0", "class1"])):
        workdir = tmp_path / name
        make_text_embed(workdir, num_classes=3)
        _pseudo_labels_named(workdir, names, order)
        result = invoke(*_train_args(workdir))
        assert result.exit_code == 0, result.output
        runs[name] = load_checkpoint(workdir / "train" / "model.pt")
    assert runs["reordered"]["class_names"] == names
    for key, value in runs["same"]["head_state"].items():
        assert torch.equal(value, runs["reordered"]["head_state"][key]), key


def test_train_refuses_pseudo_labels_of_other_classes(tmp_path):
    workdir = tmp_path / "w"
    make_text_embed(workdir, num_classes=3)
    _pseudo_labels_named(workdir, ["class0", "class1", "class2"], ["class0", "dog", "class1"])
    assert_one_line_error(invoke(*_train_args(workdir)), str(workdir / "pseudo_labels" / "manifest.json"),
                          "text_embed.h5", "1 of its 3 classes missing: class2", "1 not among them: dog")
    assert not (workdir / "train" / "manifest.json").exists()
