"""The train stage's ``inference_scale``: the model reads images at that multiple of the
training size, and its stored threshold is picked on training maps made at that size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tedloc.artifacts.checkpoint import load_checkpoint, save_checkpoint
from tedloc.pipeline import threshold as threshold_module
from tedloc.pipeline.localizer import Localizer
from tests.helpers_data import make_wsol_tree, save_tiny_clip


def _pipeline(tmp_path, monkeypatch, scale: int):
    """The real stages on a tiny dataset (tiny-cnn at 32 px: a 8×8 grid), train with
    ``inference_scale``; returns (model path, shapes of the maps the threshold was picked on)."""
    from tedloc.configs.pseudo_labels import Config as PseudoConfig
    from tedloc.configs.text_embed import Config as TextConfig
    from tedloc.configs.train import Config as TrainConfig
    from tedloc.stages import pseudo_labels, text_embed, train

    seen = []
    real = threshold_module.choose_threshold

    def spy(maps, boxes, **kwargs):
        seen.append((np.shape(maps), len(boxes), kwargs["input_size"]))
        return real(maps, boxes, **kwargs)

    monkeypatch.setattr(threshold_module, "choose_threshold", spy)
    root = make_wsol_tree(tmp_path, splits={"train": 6}, num_classes=2)
    workdir = tmp_path / "w"
    text_embed.run(TextConfig(dataset=str(root), text_encoder=f"clip:{save_tiny_clip(tmp_path / 'clip')}",
                              device="cpu"), workdir=workdir)
    pseudo_labels.run(PseudoConfig(dataset=str(root), encoder="tiny-cnn", input_size=32, diagnostic=False,
                                   batch_size=4, num_workers=0, device="cpu"), workdir=workdir)
    train.run(TrainConfig(epochs=1, batch_size=4, width=16, depth=1, patch_hidden=8, num_workers=0, device="cpu",
                          progress=False, threshold_size=32, threshold_images=5, inference_scale=scale),
              workdir=workdir)
    return workdir / "train" / "model.pt", seen


@pytest.mark.parametrize("scale", [1, 2])
def test_the_model_reads_images_at_the_scale_its_threshold_was_picked_at(tmp_path, monkeypatch, scale):
    model, seen = _pipeline(tmp_path, monkeypatch, scale)
    grid = 32 // 4  # tiny-cnn: stride 4
    # best.pt and model.pt share one pick; maps of the first threshold_images training images
    # at the inference size, against pseudo boxes in the training size's pixels.
    assert seen and all(shape == (5, grid * scale, grid * scale) and boxes == 5 and size == 32
                        for shape, boxes, size in seen)
    state = load_checkpoint(model)
    assert state["input_size"] == 32 and state["inference_input_size"] == 32 * scale
    localizer = Localizer.from_checkpoint(model, "cpu")
    assert localizer.encoder.input_size == 32 * scale and localizer.threshold == state["threshold"]
    pixels = localizer.encoder.normalize(torch.zeros(2, 32 * scale, 32 * scale, 3, dtype=torch.uint8))
    assert localizer.predict(pixels).maps.shape == (2, grid * scale, grid * scale)


def test_a_checkpoint_without_an_inference_size_reads_at_its_training_size(tmp_path, monkeypatch):
    model, _ = _pipeline(tmp_path, monkeypatch, 2)
    state = load_checkpoint(model)
    del state["inference_input_size"]
    older = save_checkpoint(tmp_path / "older.pt", state)
    assert Localizer.from_checkpoint(older, "cpu").encoder.input_size == 32


def test_a_larger_inference_scale_needs_the_training_images(tmp_path):
    from helpers_artifacts import make_pseudo_labels, make_text_embed

    from tedloc.configs.train import Config
    from tedloc.errors import ConfigError
    from tedloc.stages import train

    make_text_embed(tmp_path, num_classes=3)
    make_pseudo_labels(tmp_path)  # synthetic grids: no dataset recorded
    with pytest.raises(ConfigError, match="inference_scale 2 needs the training images"):
        train.run(Config(epochs=1, num_workers=0, progress=False, inference_scale=2), workdir=tmp_path)
    with pytest.raises(ConfigError, match="inference_scale must be at least 1"):
        Config(inference_scale=0)


def test_cpu_forwards_at_the_inference_size_stay_small():
    from tedloc.pipeline.forwards import inference_forward_batch

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [inference_forward_batch(size, cpu) for size in (64, 224, 320, 448, 896)] == [49, 4, 1, 1, 1]
    assert inference_forward_batch(448, gpu) == 0  # the whole batch


def test_predict_in_small_forwards_equals_one_forward(tmp_path):
    """At 448 px a CPU forward takes one image: predict's chunks give the maps and logits of
    one forward of the whole batch."""
    from tests.helpers_model import save_tiny_checkpoint

    path = save_tiny_checkpoint(tmp_path / "model.pt", ["a", "b"])
    state = load_checkpoint(path)
    state["inference_input_size"] = 448
    localizer = Localizer.from_checkpoint(save_checkpoint(tmp_path / "at448.pt", state), "cpu")
    generator = torch.Generator().manual_seed(0)
    pixels = localizer.encoder.normalize(torch.randint(0, 256, (3, 448, 448, 3), generator=generator,
                                                       dtype=torch.uint8))
    chunked = localizer.predict(pixels)
    whole = localizer.predict_features(localizer.encoder(pixels).grid)
    torch.testing.assert_close(chunked.maps, whole.maps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(chunked.class_logits, whole.class_logits, rtol=1e-4, atol=1e-4)
