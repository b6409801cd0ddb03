"""Class names from each source, in order (tedloc/data/class_names.py), the source recorded."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from tedloc.data.class_names import clean_folder_name, read_names_file
from tedloc.data.open import open_dataset
from tedloc.errors import InputError
from tests.helpers_cli import assert_one_line_error, invoke


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), 128, np.uint8))


def _imagefolder(root: Path, folders: list[str]) -> Path:
    for folder in folders:
        _png(root / folder / "a.png")
    return root


def _wsol(root: Path, ids_labels: list[tuple[str, int]], *, names: list[str] | None = None,
          meta: Path | None = None) -> Path:
    """A wsolevaluation index for ``ids_labels`` (no pixels needed to read names)."""
    meta = meta or root / "metadata"
    (meta / "test").mkdir(parents=True, exist_ok=True)
    (meta / "test" / "image_ids.txt").write_text("".join(f"{i}\n" for i, _ in ids_labels))
    (meta / "test" / "class_labels.txt").write_text("".join(f"{i},{k}\n" for i, k in ids_labels))
    if names is not None:
        (meta / "class_names.txt").write_text("\n".join(names) + "\n")
    return root


CUB_FOLDERS = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
SYNSETS = {"n01440764": "tench, Tinca tinca", "n02012849": "crane", "n03126707": "crane",
           "n03710637": "maillot", "n03710721": "maillot, tank suit"}


def test_clean_folder_names():
    assert clean_folder_name("001.Black_footed_Albatross") == "Black footed Albatross"
    assert clean_folder_name("golden_retriever") == "golden retriever"
    assert clean_folder_name("2.5mm_drill") == "5mm drill"  # the number prefix and its dot only


def test_explicit_file_comes_first(tmp_path):
    root = _wsol(tmp_path / "d", [("bird/0.png", 0), ("fish/1.png", 1)], names=["from_metadata", "second"])
    (tmp_path / "d" / "class_names.txt").write_text("from_root\nother\n")
    names = tmp_path / "names.txt"
    names.write_text("sparrow\ntrout\n")
    dataset = open_dataset(str(root), "test", class_names=names)
    assert dataset.class_names == ["sparrow", "trout"]
    assert dataset.class_names_source == f"--class-names {names}"


def test_metadata_class_names_then_root_class_names(tmp_path):
    root = _wsol(tmp_path / "d", [("bird/0.png", 0), ("fish/1.png", 1)], names=["from metadata", "b"])
    (root / "class_names.txt").write_text("from root\nc\n")
    dataset = open_dataset(str(root), "test")
    assert dataset.class_names == ["from metadata", "b"]
    assert dataset.class_names_source == str(root / "metadata" / "class_names.txt")
    (root / "metadata" / "class_names.txt").unlink()
    dataset = open_dataset(str(root), "test")
    assert dataset.class_names == ["from root", "c"]
    assert dataset.class_names_source == str(root / "class_names.txt")


def test_root_class_names_of_an_imagefolder(tmp_path):
    root = _imagefolder(tmp_path / "f", ["a_dog", "b_cat"])
    assert open_dataset(str(root), "test").class_names == ["a dog", "b cat"]
    (root / "class_names.txt").write_text("dog\ncat\n")
    dataset = open_dataset(str(root), "test")
    assert dataset.class_names == ["dog", "cat"] and dataset.class_names_source == str(root / "class_names.txt")


def test_cub_classes_txt_and_cub_style_folders(tmp_path):
    cub = tmp_path / "CUB_200_2011"
    cub.mkdir()
    (cub / "classes.txt").write_text("".join(f"{k + 1} {f}\n" for k, f in enumerate(CUB_FOLDERS)))
    (cub / "images.txt").write_text("".join(f"{k + 1} {f}/x.jpg\n" for k, f in enumerate(CUB_FOLDERS)))
    (cub / "image_class_labels.txt").write_text("1 1\n2 2\n3 3\n")
    (cub / "train_test_split.txt").write_text("1 0\n2 0\n3 0\n")
    wanted = ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    dataset = open_dataset(str(cub), "test")
    assert dataset.class_names == wanted
    assert dataset.class_names_source.startswith(str(cub / "classes.txt"))
    # The same folders as an ImageFolder, and as the folders of wsolevaluation's CUB ids.
    assert open_dataset(str(_imagefolder(tmp_path / "folder", CUB_FOLDERS)), "test").class_names == wanted
    ids = [(f"{f}/{f[4:]}_0001.jpg", k) for k, f in enumerate(CUB_FOLDERS)]
    dataset = open_dataset(str(_wsol(tmp_path / "wsol", ids)), "test")
    assert dataset.class_names == wanted
    assert "class folders of" in dataset.class_names_source and "image_ids.txt" in dataset.class_names_source


def test_ilsvrc_synsets_named_by_a_synset_file(tmp_path):
    root = _imagefolder(tmp_path / "ILSVRC" / "train", list(SYNSETS))
    # ILSVRC's own file (Kaggle's LOC_synset_mapping.txt): "<synset> <synonyms>", sorted.
    (tmp_path / "ILSVRC" / "train" / "LOC_synset_mapping.txt").write_text(
        "".join(f"{s} {n}\n" for s, n in SYNSETS.items()))
    dataset = open_dataset(str(root), "test")
    # First synonyms, made distinct where two classes share them.
    assert dataset.class_names == ["tench", "crane (n02012849)", "crane (n03126707)", "maillot",
                                   "maillot, tank suit"]
    assert "LOC_synset_mapping.txt" in dataset.class_names_source
    # A 'synset,name' file given with --class-names, in another order than the folders.
    mapping = tmp_path / "synsets.csv"
    mapping.write_text("".join(f"{s},{n.split(',')[0]}\n" for s, n in reversed(list(SYNSETS.items()))))
    names = open_dataset(str(root), "test", class_names=mapping).class_names
    assert names[0] == "tench" and names[3] == "maillot (n03710637)"


def test_ilsvrc_val_ids_take_the_synset_files_order(tmp_path):
    """wsolevaluation's ILSVRC test ids (val/ILSVRC2012_val_*.JPEG) name no class folder."""
    ids = [(f"val/ILSVRC2012_val_{k:08d}.JPEG", k % 3) for k in range(1, 7)]
    root = _wsol(tmp_path / "ILSVRC", ids)
    (root / "metadata" / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn01484850 great white shark\n")
    dataset = open_dataset(str(root), "test")
    assert dataset.class_names == ["tench", "goldfish", "great white shark"]
    assert "synset map, in its order" in dataset.class_names_source


def test_synset_folders_without_a_map_and_no_names_at_all_warn(tmp_path, caplog):
    root = _imagefolder(tmp_path / "f", ["n01440764", "n01443537"])
    with caplog.at_level(logging.WARNING):
        dataset = open_dataset(str(root), "test")
    assert dataset.class_names == ["n01440764", "n01443537"] and "no synset file" in dataset.class_names_source
    assert "synset ids" in caplog.text
    caplog.clear()
    root = _wsol(tmp_path / "w", [("img/0.png", 0), ("img/1.png", 1)])  # one folder for both classes
    with caplog.at_level(logging.WARNING):
        dataset = open_dataset(str(root), "test")
    assert dataset.class_names == ["class_0", "class_1"] and dataset.class_names_source.startswith("none found")
    assert "prompts of these mean nothing" in caplog.text


def test_bad_names_files_name_the_file(tmp_path):
    root = _imagefolder(tmp_path / "f", ["dog", "cat"])
    names = tmp_path / "names.txt"
    names.write_text("dog\ncat\nbird\n")
    with pytest.raises(InputError, match="3 class names for 2 classes"):
        open_dataset(str(root), "test", class_names=names)
    names.write_text("n01440764,tench\nn01440764,tench again\n")
    with pytest.raises(InputError, match=r"names.txt:2: synset n01440764 listed twice"):
        read_names_file(names)
    synset_root = _imagefolder(tmp_path / "s", ["n01440764", "n09999999"])
    names.write_text("n01440764,tench\n")
    with pytest.raises(InputError, match="no name for 1 class synset"):
        open_dataset(str(synset_root), "test", class_names=names)


def test_class_names_file_with_too_many_names_is_one_line_error(tmp_path):
    root = _imagefolder(tmp_path / "f", ["dog", "cat"])
    names = tmp_path / "names.txt"
    names.write_text("dog\ncat\nbird\n")
    assert_one_line_error(invoke("--workdir", tmp_path / "w", "stage", "text-embed", "--dataset", root,
                                 "--split", "test", "--class-names", names),
                          str(names), "3 class names for 2 classes")
    result = invoke("data", "check", root, "--split", "test", "--class-names", names)  # listed with the rest
    assert result.exit_code == 1 and f"{names}: 3 class names for 2 classes" in result.output


def test_data_check_reports_the_source(tmp_path):
    root = _imagefolder(tmp_path / "f", CUB_FOLDERS)
    result = invoke("data", "check", root, "--split", "test", "--no-decode")
    assert result.exit_code == 0, result.output
    assert "Black footed Albatross" in result.output and "class names from class folders of" in result.output


def test_the_source_is_recorded_in_the_artifacts(tmp_path):
    from tests.helpers_data import make_wsol_tree
    from tests.helpers_model import make_model_workdir

    root = make_wsol_tree(tmp_path, splits={"train": 4, "test": 2}, num_classes=2)
    workdir = make_model_workdir(tmp_path / "w", root)
    pseudo = json.loads((workdir / "pseudo_labels" / "manifest.json").read_text())
    source = str(root / "metadata" / "class_names.txt")
    assert pseudo["class_names_source"] == source
    result = invoke("--workdir", workdir, "stage", "evaluate", "--num-workers", "0", "--device", "cpu",
                    "--num-overlays", "0")
    assert result.exit_code == 0, result.output
    evaluation = workdir / "evaluate" / "data-test"
    assert json.loads((evaluation / "manifest.json").read_text())["class_names_source"] == source
    assert json.loads((evaluation / "results.json").read_text())["class_names_source"] == source


def test_hugging_face_classlabel_names_and_an_explicit_file(tmp_path):
    from tests.test_data_readers import make_hf

    spec = f"hf:{make_hf(tmp_path / 'hfds')}?image=img&label=lbl"
    dataset = open_dataset(spec, "train")
    assert dataset.class_names == ["apple", "pear"]  # the ClassLabel's own, untouched
    names = tmp_path / "names.txt"
    names.write_text("green apple\nyellow pear\n")
    dataset = open_dataset(spec, "train", class_names=names)
    assert dataset.class_names == ["green apple", "yellow pear"]
    assert dataset.class_names_source == f"--class-names {names}"
