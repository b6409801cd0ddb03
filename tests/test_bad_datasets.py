"""Datasets and specs a new user gets wrong on a first run: each is one ``error:`` line naming
the file (or the value typed) and what to do, with nothing written as finished."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers_cli import assert_one_line_error, invoke
from tests.helpers_data import make_wsol_tree

TINY = ["--encoder", "tiny-cnn", "--input-size", "32", "--batch-size", "4", "--num-workers", "0",
        "--device", "cpu"]


def _pseudo(dataset, *extra: str) -> list[str]:
    return ["stage", "pseudo-labels", "--dataset", str(dataset), *TINY, *extra]


def _dataset_is_a_file(tmp: Path):
    (tmp / "data.zip").write_bytes(b"PK\x03\x04")
    return _pseudo(tmp / "data.zip"), [str(tmp / "data.zip"), "a dataset is a folder"]


def _missing_folder(tmp: Path):
    return _pseudo(tmp / "CUB_200_2011"), [str(tmp / "CUB_200_2011"), "dataset not found", "hf:NAME"]


def _empty_split(tmp: Path):
    meta = tmp / "empty" / "metadata" / "train"
    meta.mkdir(parents=True)
    for name in ("image_ids.txt", "class_labels.txt"):
        (meta / name).write_text("")
    return _pseudo(tmp / "empty"), [str(tmp / "empty"), "split 'train' has no images"]


def _unknown_split(tmp: Path):
    root = make_wsol_tree(tmp, splits={"train": 4, "test": 2}, num_classes=2)
    return _pseudo(root, "--split", "val"), ["split 'val' not found", "splits here: test, train"]


def _folder_of_loose_images(tmp: Path):
    root = make_wsol_tree(tmp, splits={"train": 2}, num_classes=2)
    (tmp / "photos").mkdir()
    (tmp / "photos" / "a.png").write_bytes((root / "images/train/0000.png").read_bytes())
    return _pseudo(tmp / "photos"), [str(tmp / "photos"), "not a dataset this version can read",
                                     "one subfolder per class"]


def _class_folder_without_images(tmp: Path):
    root = make_wsol_tree(tmp, splits={"train": 2}, num_classes=2)
    (tmp / "folder" / "cat").mkdir(parents=True)
    (tmp / "folder" / "dog").mkdir()
    (tmp / "folder" / "cat" / "a.png").write_bytes((root / "images/train/0000.png").read_bytes())
    (tmp / "folder" / "dog" / "notes.txt").write_text("pictures to come\n")
    return _pseudo(tmp / "folder"), [str(tmp / "folder" / "dog"), "class folder holds no image files"]


def _text_file_named_png(tmp: Path):
    root = make_wsol_tree(tmp, splits={"train": 4}, num_classes=2)
    (root / "images/train/0002.png").write_text("this is not a picture\n")
    return _pseudo(root), ["images/train/0002.png", "not a recognized image"]


def _unknown_image_encoder(tmp: Path):
    root = make_wsol_tree(tmp, splits={"train": 4}, num_classes=2)
    return ["stage", "pseudo-labels", "--dataset", str(root), "--encoder", "resnet50", "--device", "cpu"], \
        ["unknown image encoder 'resnet50'", "efficientnet-lite0", "tiny-cnn"]


def _unknown_text_encoder(tmp: Path):
    root = make_wsol_tree(tmp, splits={"train": 4}, num_classes=2)
    return ["stage", "text-embed", "--dataset", str(root), "--text-encoder", "bert"], \
        ["unknown text encoder 'bert'", "minilm"]


def _clip_folder_without_a_model(tmp: Path):
    root = make_wsol_tree(tmp, splits={"train": 4}, num_classes=2)
    (tmp / "clip").mkdir()
    return ["stage", "text-embed", "--dataset", str(root), "--text-encoder", f"clip:{tmp / 'clip'}"], \
        [str(tmp / "clip"), "no model files"]


def _template_without_braces(tmp: Path):
    root = make_wsol_tree(tmp, splits={"train": 4}, num_classes=2)
    return ["stage", "text-embed", "--dataset", str(root), "--templates", "a photo of a bird"], \
        ["template 'a photo of a bird' has no '{}'"]


def _missing_class_name_map(tmp: Path):
    root = make_wsol_tree(tmp, splits={"train": 4}, num_classes=2)
    return ["stage", "text-embed", "--dataset", str(root), "--class-name-map", str(tmp / "names.csv")], \
        [str(tmp / "names.csv"), "file not found"]


def _cuda_without_a_gpu(tmp: Path):
    root = make_wsol_tree(tmp, splits={"train": 4}, num_classes=2)
    return ["stage", "pseudo-labels", "--dataset", str(root), "--encoder", "tiny-cnn", "--device", "cuda"], \
        ["device 'cuda' asked for, but CUDA is not available"]


def _unknown_hf_key(tmp: Path):
    return _pseudo("hf:user/birds?colour=img"), ["hf:user/birds?colour=img", "unknown key 'colour'"]


def _option_typo_in_config(tmp: Path):
    (tmp / "run.toml").write_text("[pseudo_labels]\nbatchsize = 8\n")
    return ["--config", str(tmp / "run.toml"), *_pseudo(tmp)], \
        [f"{tmp / 'run.toml'} [pseudo_labels]", "unknown key(s) batchsize (did you mean batch_size?)"]


CASES = [_dataset_is_a_file, _missing_folder, _empty_split, _unknown_split, _folder_of_loose_images,
         _class_folder_without_images, _text_file_named_png, _unknown_image_encoder, _unknown_text_encoder,
         _clip_folder_without_a_model, _template_without_braces, _missing_class_name_map, _cuda_without_a_gpu,
         _unknown_hf_key, _option_typo_in_config]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_").replace("_", "-") for c in CASES])
def test_first_run_mistake_is_one_line(tmp_path, case):
    if case is _cuda_without_a_gpu and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args, needles = case(tmp_path)
    workdir = tmp_path / "w"
    assert_one_line_error(invoke("--workdir", workdir, *args), *needles)
    assert not list(workdir.rglob("manifest.json"))  # nothing claims to be finished


def test_data_check_of_a_missing_folder_says_it_once(tmp_path):
    result = invoke("data", "check", tmp_path / "nothing-here")
    assert result.exit_code == 1
    assert result.output.count("dataset not found") == 1, result.output
