"""Training on damaged or missing inputs and a full disk: one line naming the file and what to
do, and every finished epoch kept so that the rerun ends as an uninterrupted run."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import torch

from tedloc.artifacts.checkpoint import load_checkpoint
from tests.helpers_artifacts import make_pseudo_labels, make_text_embed
from tests.helpers_cli import assert_one_line_error, invoke
from tests.helpers_data import make_wsol_tree

TRAIN = ["stage", "train", "--epochs", "2", "--batch-size", "8", "--width", "16", "--depth", "1",
         "--num-workers", "0", "--device", "cpu", "--no-progress", "--threshold-size", "64",
         "--inference-scale", "1"]


def test_missing_grid_file_is_named_and_nothing_is_deleted(tmp_path):
    """A ``*.grids.h5`` the shards link to, gone (deleted, or left out of a copy)."""
    root = make_wsol_tree(tmp_path, splits={"train": 8}, num_classes=2)
    workdir = tmp_path / "w"
    make_text_embed(workdir, num_classes=2)
    result = invoke("--workdir", workdir, "stage", "pseudo-labels", "--dataset", root, "--encoder", "tiny-cnn",
                    "--input-size", "32", "--batch-size", "4", "--shard-size", "4", "--num-workers", "0",
                    "--device", "cpu", "--cache-features", "on")
    assert result.exit_code == 0, result.output
    shards = workdir / "pseudo_labels" / "shards"
    grids = sorted(shards.glob("*.grids.h5"))
    assert len(grids) == 2
    kept = tmp_path / grids[1].name
    shutil.move(grids[1], kept)
    before = sorted(p.name for p in shards.iterdir())
    for features in ("auto", "cache"):
        result = invoke("--workdir", workdir, *TRAIN, "--features", features)
        assert_one_line_error(result, str(grids[1]), "missing", "features", "--overwrite")
    assert sorted(p.name for p in shards.iterdir()) == before
    shown = invoke("inspect", workdir / "pseudo_labels")  # describes the damage, as it is there to
    assert shown.exit_code == 0, shown.output
    assert f"MISSING files the shards link to: {grids[1].name}" in shown.output
    shutil.move(kept, grids[1])
    result = invoke("--workdir", workdir, *TRAIN)
    assert result.exit_code == 0, result.output


def test_full_disk_while_training_keeps_the_last_epoch_and_a_rerun_completes(tmp_path, monkeypatch):
    from tedloc.artifacts import atomic

    def workdir(name: str) -> Path:
        path = tmp_path / name
        make_text_embed(path, num_classes=3)
        make_pseudo_labels(path)
        return path

    straight, broken = workdir("straight"), workdir("broken")
    assert invoke("--workdir", straight, *TRAIN).exit_code == 0
    train_dir = broken / "train"
    written: list[str] = []

    def full_at_second_last_pt(file, mode="r", *args, **kwargs):
        if "w" in mode and Path(file).parent == train_dir and Path(file).name.startswith("last.pt"):
            written.append(str(file))
            if len(written) == 2:  # epoch 2's checkpoint
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write to a full disk
        return open(file, mode, *args, **kwargs)

    # Checkpoints are written with the built-in open of tedloc.artifacts.atomic, as HDF5 files are.
    monkeypatch.setattr(atomic, "open", full_at_second_last_pt, raising=False)
    result = invoke("--workdir", broken, *TRAIN)
    assert_one_line_error(result, str(train_dir / "last.pt"), "No space left on device", "rerun")
    assert load_checkpoint(train_dir / "last.pt")["epoch"] == 1  # the finished epoch is kept
    assert not list(train_dir.glob("*.tmp")) and not (train_dir / "manifest.json").exists()
    monkeypatch.undo()

    result = invoke("--workdir", broken, *TRAIN)
    assert result.exit_code == 0, result.output
    want = load_checkpoint(straight / "train" / "model.pt")
    got = load_checkpoint(train_dir / "model.pt")
    assert got["threshold"] == want["threshold"]
    for key, value in want["head_state"].items():
        assert torch.equal(value, got["head_state"][key]), key


def test_training_before_its_inputs_exist_says_which_stage_to_run(tmp_path):
    workdir = tmp_path / "w"
    result = invoke("--workdir", workdir, *TRAIN)
    assert_one_line_error(result, str(workdir / "text_embed" / "manifest.json"), "tedloc stage text-embed")
    make_text_embed(workdir, num_classes=3)
    result = invoke("--workdir", workdir, *TRAIN)
    assert_one_line_error(result, str(workdir / "pseudo_labels" / "manifest.json"), "tedloc stage pseudo-labels")
    result = invoke("--workdir", workdir, "stage", "evaluate", "--device", "cpu")
    assert_one_line_error(result, str(workdir / "train" / "manifest.json"), "tedloc stage train")
