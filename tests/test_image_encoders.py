"""Frozen image encoders: shapes, frozen weights, preprocessing, and the image loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tedloc.data.wsol import read_wsol
from tedloc.errors import ConfigError, InputError
from tedloc.pipeline.image_encoders import (
    CLIPImageEncoder,
    build_image_encoder,
    resize_image,
)
from tedloc.pipeline.image_loader import (
    ACCELERATOR_DECODE_WORKERS,
    cpu_count,
    make_image_loader,
    resolve_decode_workers,
)
from tests.helpers_data import make_wsol_tree, save_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def _images(n=2, size=(50, 30)):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]


def _assert_frozen(encoder):
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()  # a parent's .train() must not unfreeze batch norm / dropout
    assert not any(m.training for m in encoder.modules())


def test_tiny_cnn_grid_and_determinism():
    a = build_image_encoder("tiny-cnn")
    b = build_image_encoder("tiny-cnn")
    assert a.input_size == 64 and a.grid == (16, 16) and a.feature_dim == 32
    assert a.fingerprint == b.fingerprint
    _assert_frozen(a)
    pixels = a.preprocess(_images())
    assert pixels.shape == (2, 3, 64, 64) and pixels.dtype == torch.float32
    with torch.inference_mode():
        out_a, out_b = a(pixels), b(pixels)
    assert out_a.grid.shape == (2, 16, 16, 32) and out_a.pooled.shape == (2, 32)
    torch.testing.assert_close(out_a.grid, out_b.grid)  # same seed, same weights
    torch.testing.assert_close(out_a.pooled, out_a.grid.mean(dim=(1, 2)))
    assert build_image_encoder("tiny-cnn", input_size=56).grid == (14, 14)


def test_efficientnet_lite0_fused_grid():
    encoder = build_image_encoder("efficientnet-lite0")
    assert encoder.input_size == 224 and encoder.grid == (14, 14) and encoder.feature_dim == 1280 + 112
    _assert_frozen(encoder)
    with torch.inference_mode():
        out = encoder(encoder.preprocess(_images(1)))
    assert out.grid.shape == (1, 14, 14, 1392)
    assert torch.isfinite(out.grid).all()
    # pooled is the mean of the fused grid: a linear classifier on it equals the CAM's mean
    torch.testing.assert_close(out.pooled, out.grid.mean(dim=(1, 2)))


def test_efficientnet_lite2_fused_grid():
    encoder = build_image_encoder("efficientnet-lite2")
    assert encoder.input_size == 260 and encoder.grid == (17, 17) and encoder.feature_dim == 1280 + 120
    _assert_frozen(encoder)
    images = _images(2, size=(300, 200))
    with torch.inference_mode():
        out = encoder(encoder.preprocess(images))
        flipped = encoder(encoder.preprocess([im[:, ::-1].copy() for im in images]))
    assert out.grid.shape == (2, 17, 17, 1400) and torch.isfinite(out.grid).all()
    torch.testing.assert_close(out.pooled, out.grid.mean(dim=(1, 2)))
    # ImageNet weights, not random ones: a mirrored image gives nearly the same pooled vector,
    # two different images do not
    same = torch.nn.functional.cosine_similarity(out.pooled, flipped.pooled)
    other = torch.nn.functional.cosine_similarity(out.pooled[:1], out.pooled[1:])
    assert (same > 0.95).all() and float(other) < float(same.min()), (same, other)
    assert build_image_encoder("efficientnet-lite2", input_size=224).grid == (14, 14)


def test_clip_encoder_grid_is_clips_projected_patch_tokens(tiny_clip):
    from transformers import CLIPModel

    encoder = build_image_encoder(f"clip:{tiny_clip}")
    assert isinstance(encoder, CLIPImageEncoder)
    assert encoder.grid == (8, 8) and encoder.feature_dim == 24 and encoder.input_size == 64
    _assert_frozen(encoder)
    pixels = encoder.preprocess(_images())
    with torch.inference_mode():
        out = encoder(pixels)
        model = CLIPModel.from_pretrained(tiny_clip).eval()
        states = model.vision_model(pixel_values=pixels).last_hidden_state
        reference = model.visual_projection(model.vision_model.post_layernorm(states))[:, 1:]
    torch.testing.assert_close(out.grid.reshape(2, 64, 24), reference, rtol=1e-4, atol=1e-5)
    # pooled is the grid's mean: the CAM classifier reads what its CAM is drawn from
    torch.testing.assert_close(out.pooled, out.grid.mean(dim=(1, 2)))
    # another input size interpolates the position embeddings; grid follows S / patch
    bigger = build_image_encoder(f"clip:{tiny_clip}", input_size=96)
    assert bigger.grid == (12, 12)


def test_unknown_specs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown image encoder"):
        build_image_encoder("resnet-50")
    with pytest.raises(ConfigError, match="cannot load"):
        build_image_encoder(f"clip:{tmp_path / 'missing'}")
    with pytest.raises(ConfigError):  # no download here (or open_clip not importable)
        build_image_encoder("open_clip:ViT-B-32/laion2b_s34b_b79k")


def test_resize_keeps_whole_image():
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 30:] = 255  # right quarter white
    out = resize_image(image, 16)
    assert out.shape == (16, 16, 3)
    assert out[:, 13:].min() > 200 and out[:, :11].max() == 0  # no crop: still the right quarter


@pytest.mark.parametrize("workers", [0, 1])
def test_image_loader_batches_and_bad_images(tmp_path, workers):
    root = make_wsol_tree(tmp_path, splits={"train": 5})
    (root / "images/train/0003.png").write_bytes(b"not a png")
    dataset = read_wsol(root, "train")
    loader = make_image_loader(dataset, dataset.records, input_size=32, batch_size=2,
                               num_workers=workers, on_bad_image="skip")
    batches = list(loader)
    ids = [i for b in batches for i in b.ids]
    assert ids == [r.image_id for r in dataset.records if not r.image_id.endswith("0003.png")]
    assert batches[0].pixels.shape == (2, 32, 32, 3) and batches[0].pixels.dtype == torch.uint8
    assert batches[0].sizes.tolist() == [[48, 40], [48, 40]]
    assert list(batches[1].bad) == ["images/train/0003.png"]
    failing = make_image_loader(dataset, dataset.records, input_size=32, batch_size=2,
                                num_workers=workers, on_bad_image="fail")
    with pytest.raises(InputError, match="0003.png.*cannot decode"):
        list(failing)


def test_in_process_decoding_gives_the_worker_batches(tmp_path):
    """num_workers=0 decodes each batch in threads of this process: the same batches, in the
    same order, as DataLoader workers."""
    root = make_wsol_tree(tmp_path, splits={"train": 7})
    dataset = read_wsol(root, "train")

    def batches(workers, threads=0):
        return list(make_image_loader(dataset, dataset.records, input_size=24, batch_size=3,
                                      num_workers=workers, decode_threads=threads))

    threaded, workers = batches(0, threads=4), batches(2)
    assert [b.ids for b in threaded] == [b.ids for b in workers] and len(threaded) == 3
    for a, b in zip(threaded, workers, strict=True):
        assert torch.equal(a.pixels, b.pixels)
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.sizes, b.sizes)
    assert len(make_image_loader(dataset, dataset.records, input_size=24, batch_size=3, num_workers=0)) == 3


def test_decode_workers_auto_by_device():
    assert resolve_decode_workers(-1, torch.device("cpu")) == 0
    assert resolve_decode_workers(-1, torch.device("cuda")) == min(ACCELERATOR_DECODE_WORKERS, cpu_count())
    assert resolve_decode_workers(3, torch.device("cpu")) == 3
    assert resolve_decode_workers(0, torch.device("cuda")) == 0
