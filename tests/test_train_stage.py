"""The train stage on synthetic feature grids: learning, resume, identity, data paths."""

import csv

import numpy as np
import pytest
import torch
from helpers_artifacts import make_pseudo_labels, make_text_embed

from tedloc.artifacts.checkpoint import load_checkpoint
from tedloc.configs.train import Config
from tedloc.errors import ArtifactError, ConfigError, ConfigMismatchError
from tedloc.stages import train

# Synthetic grids have no images to encode at a larger size: maps at the training size.
FAST = dict(width=32, depth=1, batch_size=8, lr=3e-3, num_workers=0, progress=False, threshold_size=64,
            inference_scale=1)


def _workdir(tmp_path, name="w", **pl):
    wd = tmp_path / name
    make_text_embed(wd, num_classes=pl.get("num_classes", 3))
    make_pseudo_labels(wd, **pl)
    return wd


def _log(wd):
    with open(wd / "train" / "train_log.csv") as handle:
        return list(csv.DictReader(handle))


def test_training_lowers_the_loss_and_g_separates_fg_from_bg(tmp_path):
    wd = _workdir(tmp_path, num_images=48)
    manifest = train.run(Config(epochs=12, **FAST), workdir=wd)
    rows = _log(wd)
    assert len(rows) == 12
    assert float(rows[-1]["loss"]) < 0.6 * float(rows[0]["loss"])
    assert float(rows[-1]["cls_acc"]) > 0.9 and float(rows[-1]["patch_acc"]) > 0.9
    from helpers_artifacts import synthetic_grids

    from tedloc.pipeline.localizer import Localizer
    labels, feats, cams, _ = synthetic_grids(48, num_classes=3, grid=(6, 6), channels=32, seed=0)
    localizer = Localizer.from_checkpoint(wd / "train" / "model.pt", "cpu")
    out = localizer.predict_features(torch.from_numpy(feats.astype(np.float32)))
    fg = torch.from_numpy(cams > 0.5)
    maps = out.maps
    assert maps[fg].mean() > maps[~fg].mean() + 0.3
    # ranking within each image: an object patch scores above a background patch (AUC)
    aucs = [(maps[n][fg[n]].view(-1, 1) > maps[n][~fg[n]].view(1, -1)).float().mean() for n in range(48)]
    assert torch.stack(aucs).mean() > 0.95
    assert (out.class_logits.argmax(1).numpy() == labels).mean() > 0.9
    state = load_checkpoint(wd / "train" / "model.pt")
    assert 0 <= state["threshold"] < 1 and state["class_names"] == ["class0", "class1", "class2"]
    assert state["encoder"] == "tiny-cnn" and state["input_size"] == 48
    assert manifest.name == "manifest.json"


def test_fg_region_draws_foreground_inside_the_pseudo_box_region(tmp_path, monkeypatch):
    from tedloc.stages import train_epoch

    levels = []
    original = train_epoch.sample_patches

    def spy(cam, **kwargs):
        levels.append((kwargs["fg_level"], kwargs["bg_level"]))
        return original(cam, **kwargs)

    monkeypatch.setattr(train_epoch, "sample_patches", spy)
    wd = _workdir(tmp_path, num_images=16, box_threshold=0.6)
    train.run(Config(epochs=1, bg_level=0.3, **FAST), workdir=wd)
    assert levels and set(levels) == {(0.6, 0.3)}  # fg_region (default): the manifest's box_threshold
    levels.clear()
    train.run(Config(epochs=1, fg_region=False, bg_level=1.0, **FAST), workdir=_workdir(tmp_path, "plain", num_images=16))
    assert set(levels) == {(None, None)}  # the fixed fractions alone
    bare = _workdir(tmp_path, "bare", num_images=16, box_threshold=None)
    with pytest.raises(ArtifactError, match="no box_threshold recorded"):
        train.run(Config(epochs=1, fg_region=True, **FAST), workdir=bare)


class _Stop(Exception):
    pass


def _stop_after(epoch):
    def hook(e):
        if e == epoch:
            raise _Stop

    return hook


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    config = Config(epochs=3, **FAST)
    straight = _workdir(tmp_path, "a")
    train.run(config, workdir=straight)
    broken = _workdir(tmp_path, "b")
    with pytest.raises(_Stop):
        train.run(config, workdir=broken, on_epoch_end=_stop_after(0))
    assert load_checkpoint(broken / "train" / "last.pt")["epoch"] == 1
    assert not (broken / "train" / "manifest.json").exists()
    (broken / "train" / "train_log.csv").write_text("epoch,lo\x00ss\n1,2,3,\n")  # damaged log
    train.run(config, workdir=broken)
    a = load_checkpoint(straight / "train" / "last.pt")["head_state"]
    b = load_checkpoint(broken / "train" / "last.pt")["head_state"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["loss"] for r in _log(straight)] == [r["loss"] for r in _log(broken)]
    assert load_checkpoint(broken / "train" / "model.pt")["threshold"] == \
        load_checkpoint(straight / "train" / "model.pt")["threshold"]


def test_finished_run_returns_and_other_configs_are_refused(tmp_path):
    wd = _workdir(tmp_path)
    config = Config(epochs=1, **FAST)
    manifest = train.run(config, workdir=wd)
    stamp = manifest.stat().st_mtime_ns
    assert train.run(config.replace(num_workers=1), workdir=wd) == manifest  # not hashed
    assert manifest.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigMismatchError):
        train.run(config.replace(lr=1e-2), workdir=wd)
    train.run(config.replace(lr=1e-2), workdir=wd, overwrite=True)
    # an unfinished training of another config is refused too
    wd2 = _workdir(tmp_path, "w2")
    with pytest.raises(_Stop):
        train.run(config.replace(epochs=2), workdir=wd2, on_epoch_end=_stop_after(0))
    with pytest.raises(ConfigMismatchError, match="last.pt"):
        train.run(config.replace(epochs=2, tau=0.1), workdir=wd2)
    # a changed upstream is refused
    import shutil

    shutil.rmtree(wd / "pseudo_labels")
    make_pseudo_labels(wd, seed=1, tag="other")
    with pytest.raises(ConfigMismatchError):
        train.run(config.replace(lr=1e-2), workdir=wd)


def test_class_count_mismatch_names_both_files(tmp_path):
    wd = tmp_path / "w"
    make_text_embed(wd, num_classes=4)
    make_pseudo_labels(wd, num_classes=3)
    with pytest.raises(ArtifactError, match=r"text_embed.h5 has 4 classes.*pseudo_labels.*3"):
        train.run(Config(epochs=1, **FAST), workdir=wd)


def test_shard_reading_matches_memory_and_flips_need_flip_features(tmp_path):
    config = Config(epochs=2, **FAST)
    memory = _workdir(tmp_path, "m")
    shards = _workdir(tmp_path, "s")
    train.run(config, workdir=memory)
    train.run(config.replace(cache_memory_mb=0), workdir=shards)
    assert load_checkpoint(shards / "train" / "last.pt")["config_hash"] == config.config_hash()
    a = load_checkpoint(memory / "train" / "last.pt")["head_state"]
    b = load_checkpoint(shards / "train" / "last.pt")["head_state"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    noflip = _workdir(tmp_path, "n", with_flip=False)
    manifest = train.run(config, workdir=noflip)
    import json

    assert json.loads(manifest.read_text())["hflip_used"] == 0.0
    nofeat = _workdir(tmp_path, "f", with_features=False)
    with pytest.raises(ConfigError, match="no cached features"):
        train.run(config.replace(features="cache"), workdir=nofeat)


def test_on_the_fly_encoder_path(tmp_path):
    from helpers_data import make_wsol_tree

    root = make_wsol_tree(tmp_path, splits={"train": 6}, num_classes=3, size=(40, 32))
    ids = [f"images/train/{i:04d}.png" for i in range(6)]
    wd = tmp_path / "w"
    make_text_embed(wd, num_classes=3)
    # tiny-cnn at 32 px: stride 4 -> 8x8 grid, 32 channels
    make_pseudo_labels(wd, num_images=6, grid=(8, 8), channels=32, input_size=32, with_features=False,
                       dataset=str(root), ids=ids)
    manifest = train.run(Config(epochs=1, **FAST), workdir=wd)
    import json

    info = json.loads(manifest.read_text())
    assert info["feature_source"] == "encoder" and info["feature_dim"] == 32
    assert np.isfinite(info["final"]["loss"])


def test_cli_runs_the_stage(tmp_path):
    from typer.testing import CliRunner

    from tedloc.cli import app

    wd = _workdir(tmp_path)
    result = CliRunner().invoke(app, ["--workdir", str(wd), "stage", "train", "--epochs", "1", "--width", "16",
                                      "--num-workers", "0", "--no-progress", "--threshold-size", "48",
                                      "--inference-scale", "1"])
    assert result.exit_code == 0, result.output
    assert (wd / "train" / "model.pt").is_file()
    bad = CliRunner().invoke(app, ["--workdir", str(wd), "stage", "train", "--decoder", "mlp"])
    assert bad.exit_code == 1 and "decoder must be one of" in bad.output
