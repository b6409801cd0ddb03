"""Damaged artifact files: each stage finds a file cut short or with bytes zeroed in place,
and either redoes it in the same run (ending with what an undamaged run has) or stops with
one ``error:`` line naming the file and what to do; ``tedloc inspect --verify`` names it.

One tiny pipeline (tiny CLIP text tower, ``tiny-cnn`` at 64 px, 16 training and 6 test
images, two epochs) is run once through the command line into a reference workdir; each
test damages a copy of it and reruns a stage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tedloc.cli import app
from tests.helpers_data import make_wsol_tree, save_tiny_clip

SHARD = "pseudo_labels/shards/part000of001-00000.h5"
GRIDS = "pseudo_labels/shards/part000of001-00000.grids.h5"
CLASSIFIER = "pseudo_labels/cam_classifier.h5"
TEXT = "text_embed/text_embed.h5"
EVAL_SHARD = "evaluate/data-test/shards/part000of001-00000.h5"


# ----------------------------------------------------------------------------- helpers

def invoke(*args) -> object:
    return CliRunner().invoke(app, ["--log-level", "WARNING", *map(str, args)])


def assert_one_line_error(result, *needles: str) -> str:
    """Exit code != 0, exactly one ``error:`` line containing every needle, no traceback
    and none of torch's advice."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "weights_only" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def truncate(path: Path) -> None:
    """Keep the first half of the file (a copy or a disk cut short)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def zero(path: Path, count: int = 100_000) -> None:
    """Overwrite ``count`` bytes (at most a quarter of the file) with zeros in place, from
    the first non-zero byte of the file's second half, so that something changes."""
    data = bytearray(path.read_bytes())
    count = min(count, len(data) // 4)
    middle = len(data) // 2
    start = min(middle + next(i for i, b in enumerate(data[middle:]) if b), len(data) - count)
    assert any(data[start:start + count]), f"{path}: the bytes chosen are zeros already"
    data[start:start + count] = bytes(count)
    with open(path, "r+b") as handle:  # in place: same file, same size
        handle.write(data)


DAMAGES = {"truncated": truncate, "zeroed": zero}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, object]:
    """A finished workdir of all four stages and the command line of each stage."""
    base = tmp_path_factory.mktemp("integrity")
    root = make_wsol_tree(base, splits={"train": 16, "test": 6}, num_classes=2, size=(48, 40))
    clip = save_tiny_clip(base / "clip")
    stages = {
        "text-embed": ["stage", "text-embed", "--dataset", root, "--text-encoder", f"clip:{clip}",
                       "--device", "cpu"],
        "pseudo-labels": ["stage", "pseudo-labels", "--dataset", root, "--encoder", "tiny-cnn",
                          "--input-size", "64", "--batch-size", "4", "--forward-batch-size", "4",
                          "--shard-size", "8", "--num-workers", "0", "--device", "cpu"],
        "train": ["stage", "train", "--epochs", "2", "--batch-size", "4", "--width", "16", "--depth", "1",
                  "--patch-hidden", "8", "--num-workers", "0", "--device", "cpu", "--no-progress",
                  "--threshold-size", "48"],
        "evaluate": ["stage", "evaluate", "--split", "test", "--batch-size", "4", "--shard-size", "4",
                     "--num-workers", "0", "--num-overlays", "2", "--device", "cpu"],
    }
    workdir = base / "reference"
    for args in stages.values():
        result = invoke("--workdir", workdir, *args)
        assert result.exit_code == 0, result.output
    return {"workdir": workdir, "stages": stages}


def copy_of(reference, tmp_path: Path, *, without: tuple[str, ...] = ()) -> Path:
    """A copy of the reference workdir (without the named stage folders)."""
    workdir = tmp_path / "w"
    shutil.copytree(reference["workdir"], workdir)
    for folder in without:
        shutil.rmtree(workdir / folder)
    return workdir


def run_stage(reference, workdir: Path, stage: str, *extra: str):
    return invoke("--workdir", workdir, *reference["stages"][stage], *extra)


def pseudo_arrays(workdir: Path) -> dict[str, dict[str, np.ndarray]]:
    from tedloc.artifacts.pseudo_labels import open_pseudo_labels

    with open_pseudo_labels(workdir) as art:
        return {name: dict(zip(art.ids, art.read_all(name), strict=True))
                for name in ("cam", "pseudo_box", "label", "image_size", "features", "features_flip")}


def assert_same_pseudo_labels(got: Path, want: Path) -> None:
    a, b = pseudo_arrays(got), pseudo_arrays(want)
    for name in b:
        assert a[name].keys() == b[name].keys(), name
        for image_id, value in b[name].items():
            np.testing.assert_array_equal(a[name][image_id], value, err_msg=f"{name} {image_id}")


def assert_same_model(got: Path, want: Path) -> None:
    from tedloc.artifacts.checkpoint import load_checkpoint

    a, b = load_checkpoint(got), load_checkpoint(want)
    assert a["threshold"] == b["threshold"] and a["epoch"] == b["epoch"]
    assert a["head_state"].keys() == b["head_state"].keys()
    for key, value in b["head_state"].items():
        assert torch.equal(a["head_state"][key], value), key


def assert_same_evaluation(got: Path, want: Path) -> None:
    from tedloc.artifacts.store import ShardedReader

    with ShardedReader(got / "evaluate" / "data-test", "tedloc.evaluate") as a, \
            ShardedReader(want / "evaluate" / "data-test", "tedloc.evaluate") as b:
        assert a.ids == b.ids
        for name in ("map", "cam_map", "class_logits", "label"):
            np.testing.assert_array_equal(a.read_all(name), b.read_all(name), err_msg=name)
    a = json.loads((got / "evaluate/data-test/results.json").read_text())
    b = json.loads((want / "evaluate/data-test/results.json").read_text())
    assert a["methods"] == b["methods"] and a["num_images"] == b["num_images"]
    predictions = "evaluate/data-test/predictions.jsonl"
    assert (got / predictions).read_text() == (want / predictions).read_text()


def assert_verify_names(workdir: Path, *names: str) -> None:
    """``inspect --verify`` fails naming each of ``names`` (relative to ``workdir``)."""
    result = invoke("inspect", "--verify", workdir)
    assert result.exit_code == 1, result.output
    for name in names:
        assert any(line.strip().startswith(f"{workdir / name}: ") for line in result.output.splitlines()), \
            f"{name} not named in:\n{result.output}"


def assert_verify_intact(workdir: Path) -> None:
    result = invoke("inspect", "--verify", workdir)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("all "), result.output


def manifest_of(workdir: Path, stage: str) -> dict:
    return json.loads((workdir / stage / "manifest.json").read_text())


# ----------------------------------------------------------------------------- text-embed

@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_text_embed_redoes_a_damaged_file(reference, tmp_path, damage):
    from tedloc.artifacts.text_embed import read_text_embed

    workdir = copy_of(reference, tmp_path, without=("pseudo_labels", "train", "evaluate"))
    damage(workdir / TEXT)
    assert_verify_names(workdir, TEXT)
    result = run_stage(reference, workdir, "text-embed")
    assert result.exit_code == 0, result.output
    got, want = read_text_embed(workdir), read_text_embed(reference["workdir"])
    np.testing.assert_array_equal(got.anchors, want.anchors)
    np.testing.assert_array_equal(got.raw, want.raw)
    assert got.identity == want.identity
    assert_verify_intact(workdir)


# ----------------------------------------------------------------------------- pseudo-labels

@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
@pytest.mark.parametrize("name", [SHARD, GRIDS], ids=["shard", "grids"])
def test_pseudo_labels_redo_a_damaged_shard_or_grid_file(reference, tmp_path, name, damage):
    workdir = copy_of(reference, tmp_path, without=("train", "evaluate"))
    damage(workdir / name)
    assert_verify_names(workdir, name)
    result = run_stage(reference, workdir, "pseudo-labels")
    assert result.exit_code == 0, result.output
    assert_same_pseudo_labels(workdir, reference["workdir"])
    manifest = manifest_of(workdir, "pseudo_labels")
    assert manifest["num_images"] == 16
    assert manifest["files"] == manifest_of(reference["workdir"], "pseudo_labels")["files"]
    assert_verify_intact(workdir)
    # and the next run is a no-op again
    assert run_stage(reference, workdir, "pseudo-labels").exit_code == 0


def test_pseudo_labels_redo_a_missing_grid_file(reference, tmp_path):
    workdir = copy_of(reference, tmp_path, without=("train", "evaluate"))
    (workdir / GRIDS).unlink()
    assert_verify_names(workdir, GRIDS, SHARD)
    result = run_stage(reference, workdir, "pseudo-labels")
    assert result.exit_code == 0, result.output
    assert_same_pseudo_labels(workdir, reference["workdir"])


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_pseudo_labels_refuse_a_damaged_classifier(reference, tmp_path, damage):
    workdir = copy_of(reference, tmp_path, without=("train", "evaluate"))
    damage(workdir / CLASSIFIER)
    assert_verify_names(workdir, CLASSIFIER)
    before = sorted((workdir / "pseudo_labels").rglob("*"))
    line = assert_one_line_error(run_stage(reference, workdir, "pseudo-labels"), str(workdir / CLASSIFIER),
                                 "damaged", "tedloc stage pseudo-labels --overwrite")
    assert len(line) < 300
    assert sorted((workdir / "pseudo_labels").rglob("*")) == before  # refused: nothing deleted
    result = run_stage(reference, workdir, "pseudo-labels", "--overwrite")
    assert result.exit_code == 0, result.output
    assert_same_pseudo_labels(workdir, reference["workdir"])
    assert_verify_intact(workdir)


def test_pseudo_labels_resume_redoes_damaged_grids(reference, tmp_path):
    """No manifest (an interrupted run): shards and grid files are checked before reuse."""
    workdir = copy_of(reference, tmp_path, without=("train", "evaluate"))
    (workdir / "pseudo_labels/manifest.json").unlink()
    zero(workdir / GRIDS)
    result = run_stage(reference, workdir, "pseudo-labels")
    assert result.exit_code == 0, result.output
    assert_same_pseudo_labels(workdir, reference["workdir"])


def test_pseudo_labels_resume_redoes_a_damaged_staging_file(reference, tmp_path):
    """Interrupted after the first staging file (encoded/) was written; it is then damaged."""
    from tedloc.configs.pseudo_labels import Config
    from tedloc.stages import pseudo_labels as stage

    workdir = copy_of(reference, tmp_path, without=("pseudo_labels", "train", "evaluate"))
    config = Config.from_dict(json.loads((reference["workdir"] / "pseudo_labels/manifest.json").read_text())["config"])

    def stop(step: str, done: int) -> None:
        if step == "encode":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stage.run(config, workdir=workdir, on_progress=stop)
    staged = sorted((workdir / "pseudo_labels/encoded").glob("*.h5"))
    assert len(staged) == 1
    zero(staged[0])
    assert_verify_names(workdir, staged[0].relative_to(workdir).as_posix())
    result = run_stage(reference, workdir, "pseudo-labels")
    assert result.exit_code == 0, result.output
    assert_same_pseudo_labels(workdir, reference["workdir"])


def test_a_damaged_manifest_is_written_again(reference, tmp_path):
    workdir = copy_of(reference, tmp_path, without=("train", "evaluate"))
    zero(workdir / "pseudo_labels/manifest.json", 64)
    assert_verify_names(workdir, "pseudo_labels/manifest.json")
    result = run_stage(reference, workdir, "pseudo-labels")
    assert result.exit_code == 0, result.output
    assert_same_pseudo_labels(workdir, reference["workdir"])
    assert manifest_of(workdir, "pseudo_labels")["checksums"] == manifest_of(reference["workdir"],
                                                                             "pseudo_labels")["checksums"]


# ----------------------------------------------------------------------------- train

@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_train_makes_a_damaged_model_again(reference, tmp_path, damage):
    workdir = copy_of(reference, tmp_path, without=("evaluate",))
    damage(workdir / "train/model.pt")
    assert_verify_names(workdir, "train/model.pt")
    result = run_stage(reference, workdir, "train")
    assert result.exit_code == 0, result.output
    assert_same_model(workdir / "train/model.pt", reference["workdir"] / "train/model.pt")
    assert_verify_intact(workdir)


@pytest.mark.parametrize("name,damage", [("last.pt", truncate), ("best.pt", zero)],
                         ids=["last-truncated", "best-zeroed"])
def test_train_refuses_a_damaged_checkpoint(reference, tmp_path, name, damage):
    workdir = copy_of(reference, tmp_path, without=("evaluate",))
    damage(workdir / "train" / name)
    assert_verify_names(workdir, f"train/{name}")
    before = sorted((workdir / "train").iterdir())
    line = assert_one_line_error(run_stage(reference, workdir, "train"), str(workdir / "train" / name),
                                 "damaged", "tedloc stage train --overwrite")
    assert len(line) < 300
    assert sorted((workdir / "train").iterdir()) == before  # refused: nothing deleted
    result = run_stage(reference, workdir, "train", "--overwrite")
    assert result.exit_code == 0, result.output
    assert_same_model(workdir / "train/model.pt", reference["workdir"] / "train/model.pt")


def test_train_resume_refuses_a_truncated_checkpoint_in_one_line(reference, tmp_path):
    """An unfinished training (no manifest, no model.pt) whose last.pt was cut short."""
    workdir = copy_of(reference, tmp_path, without=("evaluate",))
    for name in ("manifest.json", "model.pt"):
        (workdir / "train" / name).unlink()
    truncate(workdir / "train/last.pt")
    line = assert_one_line_error(run_stage(reference, workdir, "train"), str(workdir / "train/last.pt"),
                                 "damaged checkpoint", "--overwrite")
    assert len(line) < 300


@pytest.mark.parametrize("name,damage", [(GRIDS, zero), (SHARD, truncate), (TEXT, zero)],
                         ids=["grids-zeroed", "shard-truncated", "text-embed-zeroed"])
def test_train_refuses_damaged_upstream_files(reference, tmp_path, name, damage):
    workdir = copy_of(reference, tmp_path, without=("train", "evaluate"))
    damage(workdir / name)
    stage = name.split("/")[0].replace("_", "-")
    assert_one_line_error(run_stage(reference, workdir, "train"), str(workdir / name), "damaged",
                          f"rerun `tedloc stage {stage}`")
    assert not (workdir / "train/model.pt").exists()
    # the stage named redoes it, and training then matches the undamaged run
    assert run_stage(reference, workdir, stage).exit_code == 0
    result = run_stage(reference, workdir, "train")
    assert result.exit_code == 0, result.output
    assert_same_model(workdir / "train/model.pt", reference["workdir"] / "train/model.pt")


# ----------------------------------------------------------------------------- evaluate

@pytest.mark.parametrize("name,damage", [(EVAL_SHARD, truncate), (EVAL_SHARD, zero),
                                         ("evaluate/data-test/results.json", truncate),
                                         ("evaluate/data-test/predictions.jsonl", zero)],
                         ids=["shard-truncated", "shard-zeroed", "results-truncated", "predictions-zeroed"])
def test_evaluate_redoes_damaged_files(reference, tmp_path, name, damage):
    workdir = copy_of(reference, tmp_path)
    damage(workdir / name)
    assert_verify_names(workdir, name)
    result = run_stage(reference, workdir, "evaluate")
    assert result.exit_code == 0, result.output
    assert_same_evaluation(workdir, reference["workdir"])
    assert_verify_intact(workdir)


def test_evaluate_refuses_a_damaged_model_in_one_line(reference, tmp_path):
    workdir = copy_of(reference, tmp_path)
    zero(workdir / "train/model.pt", 4096)
    assert_one_line_error(run_stage(reference, workdir, "evaluate"), str(workdir / "train/model.pt"),
                          "damaged checkpoint", "rerun `tedloc stage train`")


# ----------------------------------------------------------------------------- inspect --verify

def test_inspect_verify_names_each_damaged_or_missing_file(reference, tmp_path):
    assert_verify_intact(reference["workdir"])
    workdir = copy_of(reference, tmp_path)
    zero(workdir / TEXT, 2048)
    truncate(workdir / SHARD)
    (workdir / "pseudo_labels/shards/part000of001-00001.grids.h5").unlink()
    zero(workdir / "train/last.pt", 4096)
    truncate(workdir / "evaluate/data-test/results.md")
    names = [TEXT, SHARD, "pseudo_labels/shards/part000of001-00001.grids.h5",
             "pseudo_labels/shards/part000of001-00001.h5", "train/last.pt", "evaluate/data-test/results.md"]
    assert_verify_names(workdir, *names)
    output = invoke("inspect", "--verify", workdir).output
    assert "6 of " in output and "damaged or missing" in output
    assert "part000of001-00001.grids.h5: missing" in output
    # one stage, and one file
    assert_verify_names(workdir / "train", "last.pt")
    result = invoke("inspect", "--verify", workdir / GRIDS)
    assert result.exit_code == 0, result.output


def test_files_written_before_checksums_are_read_and_reported_unverified(reference, tmp_path):
    """An HDF5 file without the checksum block (as tedloc wrote them before) still reads;
    ``--verify`` says it cannot be verified rather than calling it damaged."""
    from tedloc.artifacts.text_embed import read_text_embed

    workdir = copy_of(reference, tmp_path, without=("pseudo_labels", "train", "evaluate"))
    path = workdir / TEXT
    path.write_bytes(path.read_bytes()[4096:])  # HDF5 finds its superblock at 0 then
    manifest = manifest_of(workdir, "text_embed")
    del manifest["checksums"]  # nor did manifests record them
    (workdir / "text_embed/manifest.json").write_text(json.dumps(manifest))
    with h5py.File(path, "r") as handle:
        assert handle.userblock_size == 0 and "anchors" in handle
    result = invoke("inspect", "--verify", workdir)
    assert result.exit_code == 0, result.output
    assert "no checksum" in result.output
    before = path.read_bytes()
    result = run_stage(reference, workdir, "text-embed")
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == before  # up to date: kept, not redone
    np.testing.assert_array_equal(read_text_embed(workdir).anchors, read_text_embed(reference["workdir"]).anchors)


# ----------------------------------------------------------------------------- the checksum block

@pytest.mark.parametrize("size_hint", [0, 64 << 20], ids=["built-in-memory", "written-by-hdf5"])
def test_sealed_files_check_and_their_chunks_lie_where_hdf5_says(tmp_path, size_hint):
    """Both ways atomic_h5 writes a file: the checksum block passes, HDF5 reads the rows
    back past it, and damage of each kind fails it."""
    from tedloc.artifacts.atomic import atomic_h5
    from tedloc.artifacts.integrity import USERBLOCK, file_problem

    rows = np.random.default_rng(0).random((6, 3, 7, 200)).astype(np.float16)
    path = tmp_path / "grids.h5"
    with atomic_h5(path, size_hint=size_hint) as handle:
        handle.create_dataset("features", data=rows, chunks=(1, *rows.shape[1:]))
    assert path.read_bytes().startswith(b"tedloc-checksum 1 ") and file_problem(path) is None
    with h5py.File(path, "r") as handle:
        assert handle.userblock_size == USERBLOCK
        np.testing.assert_array_equal(handle["features"][()], rows)
    original = path.read_bytes()
    zero(path, 4096)
    assert file_problem(path).startswith("damaged (CRC-32 mismatch")
    path.write_bytes(original[:-1])
    assert file_problem(path).startswith("damaged (truncated")
    path.write_bytes(original + b"\0")
    assert file_problem(path).startswith("damaged (")
    path.write_bytes(original[:100] + b"x" + original[101:])  # inside the checksum block
    assert file_problem(path).startswith("damaged (")
    path.write_bytes(original)
    assert file_problem(path) is None


def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path):
    from tedloc.artifacts.checkpoint import load_checkpoint, save_checkpoint
    from tedloc.errors import DamagedFileError

    path = save_checkpoint(tmp_path / "last.pt", {"w": torch.arange(50_000, dtype=torch.float32)})
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(50_000, dtype=torch.float32))
    zero(path, 4096)  # torch.load itself would return the zeros
    with pytest.raises(DamagedFileError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: damaged checkpoint (CRC-32 mismatch")
    assert "\n" not in message and "weights_only" not in message and "--overwrite" in message
    truncate(path)
    with pytest.raises(DamagedFileError, match="not a complete zip archive"):
        load_checkpoint(path)
