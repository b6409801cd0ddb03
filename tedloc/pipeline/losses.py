"""The three TeD-Loc losses and the per-step metrics.

* L_KD (text distillation): for each sampled FG patch p of an image of class y, the
  cross-entropy of softmax_c(cos(z_p, t_c)/τ) against y.
* P_CL (patch classification): binary cross-entropy of g on sampled FG (target 1) and
  BG (target 0) patches.
* I_CL (image classification): cross-entropy of s_c = cos(e, t_c)/τ against y.

Total = λ_kd L_KD + λ_p P_CL + λ_i I_CL; a loss with λ = 0 is not computed.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from tedloc.pipeline.model import HeadOutput, cosine_logits
from tedloc.pipeline.sampling import PatchSample


def gather_patches(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of per-patch ``values`` (B, h, w, ...) at flat patch ``index`` (B, n) -> (B, n, ...)."""
    b = values.shape[0]
    flat = values.reshape(b, -1, *values.shape[3:])
    if flat.ndim == 2:
        return torch.gather(flat, 1, index)
    expanded = index.reshape(*index.shape, *([1] * (flat.ndim - 2))).expand(-1, -1, *flat.shape[2:])
    return torch.gather(flat, 1, expanded)


def kd_loss(z_fg: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, tau: float) -> torch.Tensor:
    """L_KD: mean over (B, n) FG patch embeddings ``z_fg`` (B, n, d) of CE(cos(z, t)/τ, y)."""
    logits = cosine_logits(z_fg, anchors, tau)  # (B, n, C)
    target = labels.reshape(-1, 1).expand(-1, z_fg.shape[1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def patch_loss(fg_logits: torch.Tensor, bg_logits: torch.Tensor) -> torch.Tensor:
    """P_CL: BCE of g's logits, FG (B, n_fg) -> 1 and BG (B, n_bg) -> 0, mean over all."""
    logits = torch.cat([fg_logits.reshape(-1), bg_logits.reshape(-1)]).float()
    target = torch.cat([torch.ones(fg_logits.numel(), device=logits.device),
                        torch.zeros(bg_logits.numel(), device=logits.device)])
    return F.binary_cross_entropy_with_logits(logits, target)


def image_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """I_CL: CE of (B, C) class logits against int64 (B,) labels."""
    return F.cross_entropy(class_logits.float(), labels)


@dataclasses.dataclass(frozen=True)
class LossWeights:
    kd: float = 1.0
    p: float = 1.0
    i: float = 1.0


@dataclasses.dataclass
class LossResult:
    """total: the scalar to backpropagate; parts: detached scalars per loss (0 when off);
    counts: correct/total for image classification and sampled-patch FG/BG accuracy."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]


def tedloc_losses(out: HeadOutput, labels: torch.Tensor, sample: PatchSample, anchors: torch.Tensor,
                  *, tau: float, weights: LossWeights) -> LossResult:
    """All losses and accuracy counts of one batch.

    Args:
        out: the head's output for B images.
        labels: int64 (B,).
        sample: sampled FG/BG flat patch indices (on ``out``'s device).
        anchors: float (C, d).
    """
    zero = out.class_logits.new_zeros(())
    total = zero
    parts = {"kd": zero, "p": zero, "i": zero}
    fg_logits = gather_patches(out.patch_logits, sample.fg)
    bg_logits = gather_patches(out.patch_logits, sample.bg)
    if weights.kd > 0 and sample.fg.shape[1] > 0:
        parts["kd"] = kd_loss(gather_patches(out.z, sample.fg), labels, anchors, tau)
        total = total + weights.kd * parts["kd"]
    if weights.p > 0 and (sample.fg.shape[1] + sample.bg.shape[1]) > 0:
        parts["p"] = patch_loss(fg_logits, bg_logits)
        total = total + weights.p * parts["p"]
    if weights.i > 0:
        parts["i"] = image_loss(out.class_logits, labels)
        total = total + weights.i * parts["i"]
    with torch.no_grad():
        counts = {
            "cls_correct": (out.class_logits.argmax(dim=1) == labels).sum(),
            "cls_total": torch.tensor(labels.numel(), device=labels.device),
            "patch_correct": (fg_logits > 0).sum() + (bg_logits <= 0).sum(),
            "patch_total": torch.tensor(fg_logits.numel() + bg_logits.numel(), device=labels.device),
        }
    return LossResult(total=total, parts={k: v.detach() for k, v in parts.items()}, counts=counts)
