"""CAM maps: classifier fit, map where the object is, normalization, CLIP-ES on a tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tedloc.data.wsol import read_wsol
from tedloc.pipeline import cam as cam_ops
from tedloc.pipeline.clip_es import ClipES
from tedloc.pipeline.image_encoders import build_image_encoder, resize_image
from tests.helpers_data import make_wsol_tree, save_tiny_clip


def _encode(encoder, dataset):
    images = [dataset.load_image(r) for r in dataset.records]
    with torch.inference_mode():
        out = encoder(encoder.preprocess(images))
    return out, np.array([r.label for r in dataset.records])


def _inside_vs_outside(maps: np.ndarray, dataset, size: int) -> tuple[float, float]:
    """Mean map value inside / outside the GT boxes (maps upsampled to size×size)."""
    inside, outside = [], []
    for smap, record in zip(maps, dataset.records, strict=True):
        up = cam_ops.upsample_maps(torch.as_tensor(smap)[None], size)[0].numpy()
        w, h = record.size
        x0, y0, x1, y1 = (record.boxes[0] * [size / w, size / h, size / w, size / h]).astype(int)
        mask = np.zeros_like(up, bool)
        mask[y0 + 1:y1, x0 + 1:x1] = True  # strictly inside: no border blur
        inside.append(up[mask].mean())
        outside.append(up[~mask].mean())
    return float(np.mean(inside)), float(np.mean(outside))


@pytest.mark.parametrize("spec", ["tiny-cnn", "clip"])
def test_cam_is_high_on_the_object(tmp_path, spec):
    # Two classes of solid-colored rectangles on noise: the fitted linear classifier must
    # tell the colors apart, and its CAM must light up where the rectangle is.
    root = make_wsol_tree(tmp_path, splits={"train": 24}, num_classes=2, size=(64, 64))
    dataset = read_wsol(root, "train")
    source = f"clip:{save_tiny_clip(tmp_path / 'clip')}" if spec == "clip" else spec
    encoder = build_image_encoder(source)
    out, labels = _encode(encoder, dataset)
    clf = cam_ops.fit_linear_classifier(out.pooled.numpy(), labels, 2, holdout=0.25)
    assert clf.train_accuracy == 1.0 and clf.holdout_accuracy is not None
    maps = cam_ops.minmax_normalize(cam_ops.class_activation_maps(
        out.grid, torch.as_tensor(clf.weight), torch.as_tensor(labels))).numpy()
    assert maps.shape == (24, *encoder.grid) and maps.min() >= 0 and maps.max() <= 1
    inside, outside = _inside_vs_outside(maps, dataset, encoder.input_size)
    # Random attention mixes patches, so the tiny CLIP's margin is smaller (seeded: stable).
    assert inside > outside + (0.2 if spec == "tiny-cnn" else 0.1), (inside, outside)


def test_hand_set_weights_put_the_map_on_the_marked_cell():
    grid = torch.zeros(2, 4, 5, 3)
    grid[0, 1, 3, 0] = 2.0   # image 0: channel 0 active at (1, 3)
    grid[1, 2, 0, 2] = 1.0   # image 1: channel 2 active at (2, 0)
    weight = torch.eye(3)
    maps = cam_ops.minmax_normalize(cam_ops.class_activation_maps(grid, weight, torch.tensor([0, 2])))
    assert maps[0, 1, 3] == 1 and maps[0].sum() == 1
    assert maps[1, 2, 0] == 1 and maps[1].sum() == 1
    # the class-1 map of image 0 is constant: zeros, not NaN
    flat = cam_ops.minmax_normalize(cam_ops.class_activation_maps(grid, weight, torch.tensor([1, 1])))
    assert torch.equal(flat, torch.zeros_like(flat))


def test_classifier_folds_standardization_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)) * [1, 10, 100, 0.1, 1] + [0, 5, -50, 1, 0]
    y = (x[:, 1] > 5).astype(int)
    a = cam_ops.fit_linear_classifier(x, y, 2, holdout=0.2)
    b = cam_ops.fit_linear_classifier(x, y, 2, holdout=0.2)
    np.testing.assert_array_equal(a.weight, b.weight)
    logits = x @ a.weight.T + a.bias  # raw features, no standardization by the caller
    assert (logits.argmax(1) == y).mean() > 0.95
    with pytest.raises(ValueError):
        cam_ops.fit_linear_classifier(x, y + 5, 2)


def test_pseudo_boxes_and_upsampling():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1:3, 1:3] = 1.0
    up = cam_ops.upsample_maps(maps, 32).numpy()
    assert up.shape == (2, 32, 32) and up[1].max() == 0
    boxes = cam_ops.pseudo_boxes(up, 0.5)
    x0, y0, x1, y1 = boxes[0]
    assert 4 <= x0 <= 10 and 4 <= y0 <= 10 and 21 <= x1 <= 27 and 21 <= y1 <= 27
    assert boxes[1].tolist() == [0, 0, 0, 0]
    random_maps = torch.rand(5, 6, 6, generator=torch.Generator().manual_seed(0))
    random_maps[3] = 0.5  # constant
    np.testing.assert_array_equal(cam_ops.pseudo_boxes_of_grid_maps(random_maps.numpy(), 48, 0.3),
                                  cam_ops.pseudo_boxes(cam_ops.upsample_maps(random_maps, 48).numpy(), 0.3))


@pytest.mark.parametrize("resolution", ["image", "encoder"])
def test_clip_es_maps_on_tiny_clip(tmp_path, resolution):
    folder = save_tiny_clip(tmp_path / "clip")
    encoder = build_image_encoder(f"clip:{folder}")
    root = make_wsol_tree(tmp_path, splits={"train": 4}, num_classes=2, size=(64, 48))
    dataset = read_wsol(root, "train")
    images = [dataset.load_image(r) for r in dataset.records]
    pixels = torch.from_numpy(np.stack([resize_image(im, encoder.input_size) for im in images]))
    labels = torch.tensor([r.label for r in dataset.records])
    for refine in (False, True):
        method = ClipES(encoder, dataset.class_names, refine=refine, attention_layers=2,
                        backgrounds=("sky", "road"), resolution=resolution)
        maps = method.grid_maps(pixels, labels, images)
        assert maps.shape == (4, 8, 8) and torch.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1 and (maps.flatten(1).max(1).values == 1).all()
        torch.testing.assert_close(maps, method.grid_maps(pixels, labels, images))  # deterministic
    assert not any(p.requires_grad for p in encoder.parameters())
    assert all(p.grad is None for p in encoder.parameters())
