"""Options and ``--config`` files a new user gets wrong: refused in one line naming the
option (or the file and table) before any work; misspelt tables never fall back to defaults."""

from __future__ import annotations

import json

import pytest

from tests.helpers_cli import assert_one_line_error, invoke
from tests.helpers_data import make_wsol_tree

TINY = ["--encoder", "tiny-cnn", "--input-size", "32", "--batch-size", "4", "--shard-size", "4",
        "--num-workers", "0", "--device", "cpu"]

# (stage, option, value, words the error line must hold)
BAD_NUMBERS = [
    ("train", "--lr", "nan", ["--lr", "finite"]),
    ("train", "--lr", "inf", ["--lr", "finite"]),
    ("train", "--lr", "-0.001", ["lr must be positive, got -0.001"]),
    ("train", "--weight-decay", "-inf", ["--weight-decay", "finite"]),
    ("train", "--tau", "0", ["tau must be positive"]),
    ("train", "--hflip", "nan", ["--hflip", "finite"]),
    ("train", "--batch-size", "-4", ["batch_size must be at least 1"]),
    ("train", "--epochs", "0", ["epochs must be at least 1"]),
    ("train", "--bg-level", "1.5", ["bg_level must be in [0, 1], got 1.5"]),
    ("pseudo-labels", "--box-threshold", "nan", ["--box-threshold", "finite"]),
    ("pseudo-labels", "--classifier-weight-decay", "-1", ["classifier_weight_decay", "must not be negative"]),
    ("pseudo-labels", "--cache-budget-gb", "-5", ["cache_budget_gb", "must not be negative"]),
    ("pseudo-labels", "--clip-es-refine-threshold", "1.5", ["clip_es_refine_threshold must be in [0, 1]"]),
    ("pseudo-labels", "--batch-size", "0", ["batch_size must be at least 1"]),
    ("evaluate", "--cam-curve-interval", "nan", ["--cam-curve-interval", "finite"]),
    ("evaluate", "--baseline-threshold", "inf", ["--baseline-threshold", "finite"]),
    ("evaluate", "--batch-size", "-1", ["batch_size must be at least 1, got -1"]),
    ("evaluate", "--box-fraction-bins", "0", ["box_fraction_bins must be increasing and above 0"]),
    ("evaluate", "--centre-prior-sigma", "0", ["centre_prior_sigma must be above 0, got 0.0"]),
    ("text-embed", "--batch-size", "0", ["batch_size must be at least 1"]),
    ("train", "--device", "gpu", ["device must be cpu, cuda, cuda:N, mps or auto", "'gpu'"]),
]


@pytest.mark.parametrize(("stage", "option", "value", "needles"), BAD_NUMBERS,
                         ids=[f"{s}{o}={v}" for s, o, v, _ in BAD_NUMBERS])
def test_out_of_range_option_is_refused_before_any_work(tmp_path, stage, option, value, needles):
    workdir = tmp_path / "w"
    result = invoke("--workdir", workdir, "stage", stage, option, value)
    assert_one_line_error(result, *needles)
    assert not workdir.exists()  # refused before the workdir was touched


def test_bad_value_in_a_config_file_names_the_file_and_table(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("[train]\nlr = inf\n")
    result = invoke("--config", config, "--workdir", tmp_path / "w", "stage", "train")
    assert_one_line_error(result, f"{config} [train]", "'lr' must be a finite number")
    config.write_text('[train]\nepochs = "many"\n')
    result = invoke("--config", config, "--workdir", tmp_path / "w", "stage", "train")
    assert_one_line_error(result, f"{config} [train]", "'epochs' must be an integer")
    config.write_text("[train]\nhflip = 2.0\n")
    result = invoke("--config", config, "--workdir", tmp_path / "w", "stage", "train")
    line = assert_one_line_error(result, f"{config} [train]: hflip must be in [0, 1]")
    assert "train: train:" not in line


def test_predict_threshold_out_of_range(tmp_path):
    for value in ("nan", "1.5", "-0.1"):
        result = invoke("--workdir", tmp_path / "w", "predict", tmp_path, "--threshold", value)
        assert_one_line_error(result, "threshold must be in [0, 1)", value)


# ----------------------------------------------------------------------------- config tables

@pytest.mark.parametrize("name", ["trian", "Train", "stage.train"])
def test_misnamed_config_table_is_refused_with_the_known_ones(tmp_path, name):
    config = tmp_path / "run.toml"
    config.write_text(f'["{name}"]\nepochs = 1\n' if "." in name else f"[{name}]\nepochs = 1\n")
    result = invoke("--config", config, "--workdir", tmp_path / "w", "stage", "train")
    assert_one_line_error(result, str(config), f"unknown table [{name}]",
                          "[text_embed], [pseudo_labels], [train], [evaluate], [demo]")


def test_misnamed_table_in_a_json_config(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"evaluation": {"split": "val"}}))
    result = invoke("--config", config, "--workdir", tmp_path / "w", "stage", "evaluate")
    assert_one_line_error(result, str(config), "unknown table [evaluation]", "[evaluate]")


def test_dashed_table_name_is_the_stage_table(tmp_path):
    """``[pseudo-labels]`` (the command's spelling) configures the stage: its ``limit``
    is used, not ignored."""
    root = make_wsol_tree(tmp_path, splits={"train": 12}, num_classes=2)
    config = tmp_path / "run.toml"
    config.write_text("[pseudo-labels]\nlimit = 4\n")
    workdir = tmp_path / "w"
    result = invoke("--config", config, "--workdir", workdir, "stage", "pseudo-labels", "--dataset", root, *TINY)
    assert result.exit_code == 0, result.output
    manifest = json.loads((workdir / "pseudo_labels" / "manifest.json").read_text())
    assert manifest["num_images"] == 4 and manifest["config"]["limit"] == 4


def test_both_spellings_of_one_table_are_refused(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("[text-embed]\nbatch_size = 8\n\n[text_embed]\nbatch_size = 16\n")
    result = invoke("--config", config, "--workdir", tmp_path / "w", "stage", "text-embed")
    assert_one_line_error(result, str(config), "[text-embed] and [text_embed] are the same stage")


def test_config_file_missing_unreadable_or_a_folder(tmp_path):
    result = invoke("--config", tmp_path / "nope.toml", "--workdir", tmp_path / "w", "stage", "train")
    assert_one_line_error(result, str(tmp_path / "nope.toml"), "config file not found")
    (tmp_path / "bad.toml").write_text("[train\nepochs = 1\n")
    result = invoke("--config", tmp_path / "bad.toml", "--workdir", tmp_path / "w", "stage", "train")
    assert_one_line_error(result, str(tmp_path / "bad.toml"), "cannot parse config file")
    result = invoke("--config", tmp_path, "--workdir", tmp_path / "w", "stage", "train")
    assert_one_line_error(result, str(tmp_path), "is a folder")
    assert not (tmp_path / "w").exists()


def test_demo_table_dataset_is_used(tmp_path):
    """``[demo] dataset = ...`` used to be replaced by the --dataset default ('demo')."""
    config = tmp_path / "run.toml"
    config.write_text(f'[demo]\ndataset = "{tmp_path / "mine"}"\n')
    result = invoke("--config", config, "--workdir", tmp_path / "w", "demo")
    assert_one_line_error(result, str(tmp_path / "mine"), "dataset not found")


def test_demo_table_bad_value(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("[demo]\nquick_epochs = 0\n")
    result = invoke("--config", config, "--workdir", tmp_path / "w", "demo", "--quick")
    assert_one_line_error(result, f"{config} [demo]", "quick_epochs must be at least 1")
    assert not (tmp_path / "w").exists()


def test_changed_option_on_a_finished_stage_is_refused_and_nothing_deleted(tmp_path):
    root = make_wsol_tree(tmp_path, splits={"train": 8}, num_classes=2)
    workdir = tmp_path / "w"
    args = ["--workdir", workdir, "stage", "pseudo-labels", "--dataset", root, *TINY]
    assert invoke(*args).exit_code == 0
    stage = workdir / "pseudo_labels"
    before = {p: p.stat().st_mtime_ns for p in stage.rglob("*") if p.is_file() and p.name != ".lock"}
    result = invoke(*args, "--box-threshold", "0.5")
    assert_one_line_error(result, str(stage / "manifest.json"), "--overwrite", "another --workdir")
    assert {p: p.stat().st_mtime_ns for p in before} == before
    result = invoke(*args, "--box-threshold", "0.5", "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((stage / "manifest.json").read_text())["box_threshold"] == 0.5
