"""Train: one epoch (its batches, the learning-rate schedule, the losses and their sums)."""

from __future__ import annotations

import math
from typing import Any

import torch

from tedloc.artifacts.train_data import Batch
from tedloc.config import hash_json
from tedloc.configs.train import Config
from tedloc.pipeline.losses import LossWeights, tedloc_losses
from tedloc.pipeline.sampling import sample_patches
from tedloc.stages.train_features import FeatureSource

#: The sums an epoch keeps, in this order (losses weighted by batch size).
SUMS = ("loss", "loss_kd", "loss_p", "loss_i", "images", "cls_correct", "cls_total", "patch_correct",
        "patch_total")


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from any JSON-able parts (seed, epoch, rank, purpose)."""
    return int(hash_json(list(parts)), 16) % (2 ** 63)


def epoch_plan(num_images: int, *, batch_size: int, seed: int, epoch: int, rank: int, world: int,
               hflip: float) -> list[Batch]:
    """This rank's batches of one epoch: a DistributedSampler permutation (seed + epoch; every
    rank gets the same number of images) cut into batches, with a flip decision per image."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(num_images), num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch, rank, "flip"))
    flips = (torch.rand(len(indices), generator=generator) < hflip).tolist() if hflip > 0 else [False] * len(indices)
    return [(indices[i:i + batch_size], flips[i:i + batch_size]) for i in range(0, len(indices), batch_size)]


def lr_factor(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up from 1/warmup to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_epoch(config: Config, model: torch.nn.Module, head, source: FeatureSource, plan: list[Batch], *,
                cams: torch.Tensor, labels: torch.Tensor, optimizer, scheduler, generator: torch.Generator,
                bar, fg_level: float | None = None) -> torch.Tensor:
    """One optimizer step per batch of ``plan``: FG/BG patches drawn from the (flipped where
    the image is) pseudo-label maps ``cams`` float (N, h, w) on the head's grid, FG among
    patches ≥ ``fg_level`` (the maps' region; None: the top ``p_fg`` alone), the TeD-Loc losses
    against ``labels`` int64 (N,).  Returns this rank's float64 sums (:data:`SUMS`)."""
    weights = LossWeights(kd=config.lambda_kd, p=config.lambda_p, i=config.lambda_i)
    device = source.device
    sums = torch.zeros(len(SUMS), dtype=torch.float64)
    head.train()
    for grids, indices, flips in source.iterate(plan):
        rows = torch.as_tensor(indices, dtype=torch.long)
        cam = cams.index_select(0, rows)
        flip = torch.as_tensor(flips, dtype=torch.bool)
        if flip.any():
            cam[flip] = cam[flip].flip(-1)
        sample = sample_patches(cam, n_fg=config.n_fg, n_bg=config.n_bg, p_fg=config.p_fg, p_bg=config.p_bg,
                                fg_level=fg_level, bg_level=config.bg_level if config.bg_level < 1 else None,
                                generator=generator)
        sample.fg, sample.bg = sample.fg.to(device), sample.bg.to(device)
        with source.autocast():
            out = model(grids)
        result = tedloc_losses(out, labels.index_select(0, rows).to(device), sample, head.anchors, tau=config.tau,
                               weights=weights)
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        optimizer.step()
        scheduler.step()
        b = len(indices)
        c = result.counts
        sums += torch.tensor([float(result.total.detach()) * b, float(result.parts["kd"]) * b,
                              float(result.parts["p"]) * b, float(result.parts["i"]) * b, b,
                              float(c["cls_correct"]), float(c["cls_total"]),
                              float(c["patch_correct"]), float(c["patch_total"])], dtype=torch.float64)
        bar.update(1)
        bar.set_postfix(loss=f"{float(result.total.detach()):.3f}")
    return sums


def epoch_row(sums: torch.Tensor, *, epoch: int, lr: float, seconds: float) -> dict[str, Any]:
    """The history row (``train_log.csv``) of an epoch from the sums of every rank."""
    n = max(1.0, float(sums[4]))
    return {"epoch": epoch + 1, "images": int(sums[4]), "loss": float(sums[0]) / n, "loss_kd": float(sums[1]) / n,
            "loss_p": float(sums[2]) / n, "loss_i": float(sums[3]) / n,
            "cls_acc": float(sums[5]) / max(1.0, float(sums[6])),
            "patch_acc": float(sums[7]) / max(1.0, float(sums[8])),
            "lr": lr, "seconds": seconds, "best": 0}
