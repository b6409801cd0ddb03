"""Losses, Σ and patch sampling on hand-made tensors."""

import math

import pytest
import torch

from tedloc.pipeline.losses import (
    LossWeights,
    gather_patches,
    image_loss,
    kd_loss,
    patch_loss,
    tedloc_losses,
)
from tedloc.pipeline.model import HeadOutput, aggregate, cosine_logits
from tedloc.pipeline.sampling import sample_patches

ANCHORS = torch.eye(3)  # three orthonormal anchors in d = 3


def test_kd_loss_prefers_the_patch_on_its_own_anchor():
    labels = torch.tensor([1])
    own = kd_loss(ANCHORS[1].view(1, 1, 3), labels, ANCHORS, tau=0.07)
    other = kd_loss(ANCHORS[2].view(1, 1, 3), labels, ANCHORS, tau=0.07)
    assert own < 0.01 < other
    # by definition: CE of softmax(cos/τ); for the own anchor logits are (0, 1/τ, 0)/…
    expected = -math.log(math.exp(1 / 0.07) / (math.exp(1 / 0.07) + 2))
    assert own.item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    # scale of z does not matter (cosine)
    assert kd_loss(5 * ANCHORS[1].view(1, 1, 3), labels, ANCHORS, tau=0.07) == pytest.approx(own.item(), abs=1e-6)


def test_patch_loss_of_perfect_logits_is_near_zero_and_of_wrong_ones_large():
    fg, bg = torch.full((2, 4), 20.0), torch.full((2, 4), -20.0)
    assert patch_loss(fg, bg) < 1e-6
    assert patch_loss(bg, fg) > 10
    assert patch_loss(torch.zeros(1, 2), torch.zeros(1, 2)).item() == pytest.approx(math.log(2), rel=1e-6)


def test_image_loss_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    assert image_loss(logits, torch.tensor([0])).item() == pytest.approx(-math.log(math.e ** 2 / (math.e ** 2 + 2)))


def test_aggregation_weights_patches_by_their_scores():
    z = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # (B=1, h=1, w=2, d=2)
    assert torch.allclose(aggregate(z, torch.tensor([[[1.0, 0.0]]])), torch.tensor([[1.0, 0.0]]), atol=1e-5)
    assert torch.allclose(aggregate(z, torch.tensor([[[0.25, 0.75]]])), torch.tensor([[0.25, 0.75]]), atol=1e-5)
    # a background patch (weight ~0) does not change the class logits
    e = aggregate(z, torch.tensor([[[0.999, 0.001]]]))
    logits = cosine_logits(e, torch.eye(2), 0.07)
    assert logits[0, 0] > logits[0, 1] + 10


def test_gather_patches_picks_flat_indices():
    values = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).view(2, 2, 3, 4)
    picked = gather_patches(values, torch.tensor([[0, 5], [4, 4]]))
    assert torch.equal(picked[0, 1], values[0, 1, 2])
    assert torch.equal(picked[1, 0], values[1, 1, 1])
    logits = values[..., 0]
    assert torch.equal(gather_patches(logits, torch.tensor([[5], [0]])), torch.tensor([[logits[0, 1, 2]], [logits[1, 0, 0]]]))


def test_sampling_draws_fg_from_the_top_and_bg_from_the_bottom():
    cam = torch.linspace(0, 1, 100).view(1, 10, 10).repeat(8, 1, 1)
    g = torch.Generator().manual_seed(0)
    s = sample_patches(cam, n_fg=4, n_bg=4, p_fg=0.2, p_bg=0.3, generator=g)
    assert s.fg.shape == (8, 4) and s.bg.shape == (8, 4)
    assert (s.fg >= 80).all() and (s.bg < 30).all()
    for row in s.fg:  # without replacement
        assert len(set(row.tolist())) == 4
    again = sample_patches(cam, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.fg, s.fg) and torch.equal(again.bg, s.bg)
    other = sample_patches(cam, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other.fg, s.fg)


def test_sampling_is_proportional_to_the_map():
    cam = torch.zeros(2000, 1, 10)
    cam[:, 0, 0] = 1.0
    cam[:, 0, 1] = 0.25  # both in the top 20% (2 of 10 patches)
    s = sample_patches(cam, n_fg=1, n_bg=1, p_fg=0.2, p_bg=0.3, generator=torch.Generator().manual_seed(0))
    share = (s.fg == 0).float().mean().item()
    assert share == pytest.approx(0.8, abs=0.04)  # 1 / (1 + 0.25)


def _output(z, patch_logits, anchors, tau=0.07):
    e = aggregate(z, torch.sigmoid(patch_logits))
    return HeadOutput(z=z, patch_logits=patch_logits, class_logits=cosine_logits(e, anchors, tau), embedding=e)


def test_switched_off_losses_are_zero_and_give_no_gradient():
    z = torch.randn(2, 2, 2, 3, requires_grad=True)
    patch_logits = torch.randn(2, 2, 2, requires_grad=True)
    out = _output(z, patch_logits, ANCHORS)
    sample = sample_patches(torch.rand(2, 2, 2), n_fg=1, n_bg=1, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2])
    result = tedloc_losses(out, labels, sample, ANCHORS, tau=0.07, weights=LossWeights(kd=0.0, p=1.0, i=0.0))
    assert result.parts["kd"] == 0 and result.parts["i"] == 0 and result.parts["p"] > 0
    result.total.backward()
    assert z.grad is None or torch.count_nonzero(z.grad) == 0  # only g's logits were used
    full = tedloc_losses(_output(z, patch_logits, ANCHORS), labels, sample, ANCHORS, tau=0.07, weights=LossWeights())
    assert full.total.item() == pytest.approx(sum(v.item() for v in full.parts.values()), rel=1e-6)
    assert int(full.counts["patch_total"]) == 4 and int(full.counts["cls_total"]) == 2


def test_sampling_within_levels_keeps_to_each_map_own_region():
    # Image 0: a 3-patch object (values 1.0, 0.9, 0.8) on a 0.1 background with one 0.5 patch;
    # image 1: a large 40-patch object.  p_fg = 0.2 offers 20 of 100 patches: with
    # fg_level 0.7 image 0 offers its 3 object patches only, image 1 its top 20.
    cam = torch.full((2, 10, 10), 0.1)
    cam[0, 0, 0], cam[0, 0, 1], cam[0, 0, 2], cam[0, 5, 5] = 1.0, 0.9, 0.8, 0.5
    cam[0, 9, 9] = 0.0
    cam[1, :4, :] = torch.linspace(1.0, 0.8, 40).view(4, 10)
    cam[1, 9, :] = 0.0
    s = sample_patches(cam, n_fg=6, n_bg=4, p_fg=0.2, p_bg=0.3, fg_level=0.7, bg_level=0.05,
                       generator=torch.Generator().manual_seed(0))
    assert set(s.fg[0].tolist()) <= {0, 1, 2}  # fewer candidates than draws: with replacement
    assert (s.fg[1] < 20).all() and len(set(s.fg[1].tolist())) == 6  # the top 20, without
    assert (s.bg[0] == 99).all()  # the only patch ≤ 0.05
    assert (s.bg[1] >= 90).all() and len(set(s.bg[1].tolist())) == 4
    # Without levels the same maps offer image 0's background as foreground.
    wide = sample_patches(cam, n_fg=6, n_bg=4, p_fg=0.2, p_bg=0.3, generator=torch.Generator().manual_seed(0))
    assert not set(wide.fg[0].tolist()) <= {0, 1, 2}


def test_sampling_levels_keep_at_least_the_peak_and_the_lowest_patch():
    cam = torch.linspace(0, 1, 16).view(1, 4, 4)
    s = sample_patches(cam, n_fg=2, n_bg=2, fg_level=1.5, bg_level=-1.0,
                       generator=torch.Generator().manual_seed(0))
    assert s.fg.tolist() == [[15, 15]] and s.bg.tolist() == [[0, 0]]
