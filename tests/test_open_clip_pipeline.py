"""The paper's configuration end to end: text-embed, pseudo-labels (CLIP-ES, the default for
CLIP encoders), train and evaluate through the command line with an open_clip encoder, on a
tiny random EVA-02 tower (EVA02-L-14's architecture) and a tiny open_clip ViT.  Random
weights: the test checks that every stage runs and what it records, not accuracy."""

from __future__ import annotations

import json
import math

import h5py
import pytest

from tests.helpers_cli import invoke
from tests.helpers_data import make_wsol_tree
from tests.helpers_open_clip import save_tiny_open_clip


@pytest.mark.parametrize("kind", ["eva", "vit"])
def test_four_stages_with_an_open_clip_encoder(tmp_path, kind):
    root = make_wsol_tree(tmp_path, splits={"train": 6, "test": 4}, num_classes=2, size=(56, 40))
    spec = f"open_clip:local-dir:{save_tiny_open_clip(tmp_path / kind, kind)}"
    workdir = tmp_path / "work"
    common = ["--device", "cpu"]
    steps = [
        ["text-embed", "--dataset", root, "--text-encoder", spec, *common],
        ["pseudo-labels", "--dataset", root, "--encoder", spec, "--batch-size", "4", "--num-workers", "0",
         "--clip-es-attention-layers", "2", *common],
        ["train", "--epochs", "1", "--batch-size", "4", "--width", "16", "--depth", "1", "--patch-hidden", "8",
         "--num-workers", "0", "--no-progress", *common],
        ["evaluate", "--num-workers", "0", "--batch-size", "4", "--num-overlays", "0", "--name", "tiny", *common],
    ]
    for step in steps:
        result = invoke("--workdir", workdir, "stage", *step)
        assert result.exit_code == 0, result.output

    pseudo = json.loads((workdir / "pseudo_labels" / "manifest.json").read_text())
    assert pseudo["config"]["encoder"] == spec and pseudo["method"] == "clip-es"
    assert pseudo["config"]["clip_es_resolution"] == "image" and pseudo["config"]["clip_es_softmax_classes"] == "image"
    maps = []
    for shard in sorted((workdir / "pseudo_labels" / "shards").glob("*.h5")):
        with h5py.File(shard) as f:
            if "cam" in f:
                maps.append(f["cam"][...])
    assert sum(len(m) for m in maps) == 6
    for batch in maps:
        assert batch.shape[1:] == (8, 8) and batch.min() >= 0 and batch.max() <= 1
    anchors = json.loads((workdir / "text_embed" / "manifest.json").read_text())
    assert anchors["config"]["text_encoder"] == spec
    results = json.loads((workdir / "evaluate" / "tiny" / "results.json").read_text())
    overall = results["methods"]["tedloc"]["overall"]
    assert results["num_images"] == 4 and 0 <= overall["max_box_acc_v2"] <= 100
    assert math.isfinite(overall["max_box_acc_v2"]) and overall["num_images_with_boxes"] == 4


def test_help_names_the_papers_encoder():
    result = invoke("stage", "pseudo-labels", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "open_clip:EVA02-L-14/merged2b_s4b_b131k" in text.replace("│ ", "").replace(" │", "")



MISTAKES = {
    "tower-without-patch-tokens": (["--encoder", "SIGLIP"], ["pooling 'map' has no per-patch embedding", "EVA02-L-14"]),
    "clip-es-without-a-clip-encoder": (["--encoder", "tiny-cnn", "--method", "clip-es"],
                                       ["method clip-es needs a CLIP encoder", "open_clip:<model>"]),
    "unknown-clip-es-resolution": (["--encoder", "tiny-cnn", "--clip-es-resolution", "full"],
                                   ["clip_es_resolution must be image or encoder"]),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_open_clip_mistakes_are_one_line(tmp_path, mistake):
    from tests.helpers_cli import assert_one_line_error
    from tests.helpers_open_clip import tiny_timm_model

    root = make_wsol_tree(tmp_path, splits={"train": 4}, num_classes=2)
    args, needles = MISTAKES[mistake]
    if "SIGLIP" in args:
        tiny_timm_model("vit_base_patch16_siglip_224")
        args = ["--encoder", f"open_clip:local-dir:{save_tiny_open_clip(tmp_path / 'siglip', 'siglip')}"]
    result = invoke("--workdir", tmp_path / "w", "stage", "pseudo-labels", "--dataset", root, "--device", "cpu",
                    "--num-workers", "0", *args)
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "w" / "pseudo_labels" / "manifest.json").exists()
