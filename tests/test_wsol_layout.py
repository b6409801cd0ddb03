"""The wsolevaluation repository's own layout: metadata apart from the images.

There, ``metadata/<DATASET>/<split>/{image_ids,class_labels,image_sizes,localization}.txt``
index images (and masks) under ``dataset/<DATASET>/``, with no class_names.txt; a user gives
``--dataset dataset/CUB --metadata metadata/CUB``.  The demo's test split copied into that
layout must give the numbers of the demo's own layout, and every stage must read it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tedloc.artifacts.store import ArtifactHeader, write_manifest
from tedloc.data.demo import demo_root
from tests.helpers_cli import assert_one_line_error, invoke
from tests.helpers_data import make_wsol_tree, save_tiny_clip
from tests.helpers_model import save_tiny_checkpoint

INDEX_FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt")


def wsolevaluation_copy(source: Path, target: Path, name: str, splits: tuple[str, ...]) -> tuple[Path, Path]:
    """``source`` (a tedloc wsol tree) as ``target/metadata/<name>/<split>/*.txt`` and
    ``target/dataset/<name>/<ids and masks>``; returns (image root, metadata folder)."""
    images, metadata = target / "dataset" / name, target / "metadata" / name
    for split in splits:
        (metadata / split).mkdir(parents=True)
        for index in INDEX_FILES:
            shutil.copy(source / "metadata" / split / index, metadata / split / index)
        for line in (source / "metadata" / split / "localization.txt").read_text().splitlines():
            for relative in line.split(",")[1:]:
                if relative and not relative.replace(".", "").isdigit() and (source / relative).is_file():
                    (images / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(source / relative, images / relative)
        for image_id in (source / "metadata" / split / "image_ids.txt").read_text().split():
            (images / image_id).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / image_id, images / image_id)
    return images, metadata


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory):
    return wsolevaluation_copy(demo_root(), tmp_path_factory.mktemp("wsol"), "DEMO", ("test",))


def _evaluate(workdir: Path, *extra) -> dict:
    result = invoke("--workdir", workdir, "stage", "evaluate", "--num-workers", "0", "--device", "cpu",
                    "--batch-size", "8", "--limit", "24", "--num-overlays", "0", *extra)
    assert result.exit_code == 0, result.output
    return result


def test_demo_test_split_in_the_reference_layout_gives_the_same_numbers(demo_copy, tmp_path):
    images, metadata = demo_copy
    assert not (metadata / "class_names.txt").exists() and not (images / "metadata").exists()
    check = invoke("data", "check", images, "--metadata", metadata, "--split", "test", "--no-decode")
    assert check.exit_code == 0 and "no problems found" in check.output, check.output
    # The class names come from the image ids' folders (test/bird/...): the demo's own.
    assert "class names from class folders of" in check.output

    names = (demo_root() / "metadata" / "class_names.txt").read_text().split()
    workdir = tmp_path / "w"
    save_tiny_checkpoint(workdir / "train" / "model.pt", names)
    write_manifest(workdir / "train", ArtifactHeader("tedloc.train", 1, {}, "tiny", ""), files=["model.pt"])
    _evaluate(workdir, "--dataset", "demo")
    _evaluate(workdir, "--dataset", images, "--metadata", metadata)
    own = json.loads((workdir / "evaluate" / "demo-test" / "results.json").read_text())
    reference = json.loads((workdir / "evaluate" / "DEMO-test" / "results.json").read_text())
    assert reference["num_images"] == own["num_images"] == 24
    assert reference["class_names"] == own["class_names"] == names
    assert reference["methods"] == own["methods"]
    overall = reference["methods"]["tedloc"]["overall"]
    assert overall["num_images_with_masks"] == 24 and overall["max_box_acc_v2"] is not None
    lines = [(workdir / "evaluate" / n / "predictions.jsonl").read_text() for n in ("demo-test", "DEMO-test")]
    assert lines[0] == lines[1]
    manifest = json.loads((workdir / "evaluate" / "DEMO-test" / "manifest.json").read_text())
    assert manifest["config"]["metadata"] == str(metadata)


def test_metadata_root_instead_of_its_dataset_folder_is_one_line(demo_copy, tmp_path):
    images, metadata = demo_copy
    assert_one_line_error(invoke("--workdir", tmp_path / "w", "stage", "text-embed", "--dataset", images,
                                 "--metadata", metadata.parent, "--split", "test"),
                          f"{metadata.parent / 'test'}: split 'test' not found",
                          f"holds the metadata of DEMO: give that folder, e.g. {metadata}")


def test_metadata_with_the_demo_spec_is_one_line(demo_copy, tmp_path):
    _, metadata = demo_copy
    assert_one_line_error(invoke("--workdir", tmp_path / "w", "stage", "pseudo-labels", "--dataset", "demo",
                                 "--metadata", metadata),
                          str(metadata), "--metadata is for a wsolevaluation layout kept apart from its images")


def test_every_stage_reads_the_reference_layout(tmp_path):
    """text-embed, pseudo-labels, train (encoding the images again) and evaluate on
    metadata/<name>/ apart from dataset/<name>/, the options recorded for later stages."""
    tree = make_wsol_tree(tmp_path, splits={"train": 8, "test": 4}, num_classes=2, size=(40, 32))
    images, metadata = wsolevaluation_copy(tree, tmp_path / "ref", "TOY", ("train", "test"))
    names = tmp_path / "names.txt"
    names.write_text("red square\ngreen square\n")
    clip = save_tiny_clip(tmp_path / "clip")
    workdir = tmp_path / "w"
    data = ["--dataset", images, "--metadata", metadata, "--class-names", names]
    for args in (["text-embed", *data, "--text-encoder", f"clip:{clip}", "--device", "cpu"],
                 ["pseudo-labels", *data, "--encoder", "tiny-cnn", "--no-diagnostic", "--batch-size", "4",
                  "--num-workers", "0", "--device", "cpu", "--cache-features", "off"],
                 ["train", "--epochs", "1", "--batch-size", "4", "--width", "16", "--depth", "1",
                  "--patch-hidden", "8", "--num-workers", "0", "--device", "cpu", "--no-progress",
                  "--features", "encoder"]):
        result = invoke("--workdir", workdir, "stage", *args)
        assert result.exit_code == 0, (args[0], result.output)
    text = json.loads((workdir / "text_embed" / "manifest.json").read_text())
    assert text["class_names_source"] == f"--class-names {names}"
    pseudo = json.loads((workdir / "pseudo_labels" / "manifest.json").read_text())
    assert pseudo["class_names"] == ["red square", "green square"] and pseudo["config"]["metadata"] == str(metadata)
    # evaluate without --dataset: the pseudo-labels' dataset, metadata and names.
    result = invoke("--workdir", workdir, "stage", "evaluate", "--num-workers", "0", "--device", "cpu",
                    "--num-overlays", "0")
    assert result.exit_code == 0, result.output
    results = json.loads((workdir / "evaluate" / "TOY-test" / "results.json").read_text())
    assert results["num_images"] == 4 and results["class_names"] == ["red square", "green square"]
