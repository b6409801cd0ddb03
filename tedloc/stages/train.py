"""Train stage: fit D, g (and through Σ the class logits) on the frozen features.

Reads the anchors (``text_embed``) and the pseudo-labels (maps, labels, pseudo boxes,
optionally the cached grids); writes ``<workdir>/train/``:

* ``last.pt`` every epoch (head, optimizer, scheduler, epoch/step, RNG states, the per-epoch
  history, config and hashes): a rerun with the same identity resumes from it;
* ``best.pt`` the epoch with the lowest mean training loss (no GT box is used);
* ``train_log.csv`` rewritten atomically from the history every epoch (a crash never
  leaves a half-written log; a resume rewrites it from the checkpoint);
* ``model.pt``: the best epoch's head with the map threshold chosen on training images
  against their pseudo boxes (``tedloc.pipeline.threshold``), then the manifest, last.

Identity: ``config_hash`` of the config; ``upstream_hash = hash_json([text_embed identity,
pseudo_labels identity])``.  ``last.pt`` of another identity is refused unless
``overwrite``.  Under ``torchrun`` (WORLD_SIZE > 1) it trains with DDP (NCCL on GPU, gloo
on CPU); each rank draws its own share of every epoch (DistributedSampler), only rank 0
writes files.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tedloc.artifacts.checkpoint import load_checkpoint, save_checkpoint
from tedloc.artifacts.header import ArtifactHeader
from tedloc.artifacts.lock import StageLock
from tedloc.artifacts.manifest import MANIFEST, write_manifest
from tedloc.artifacts.pseudo_labels import open_pseudo_labels
from tedloc.artifacts.text_embed import read_text_embed
from tedloc.artifacts.train import (
    BEST,
    FORMAT,
    FORMAT_VERSION,
    LAST,
    LOG,
    MODEL,
    STAGE_DIR,
    model_state,
    prepare_train_dir,
    rng_state,
    set_rng_state,
    write_train_log,
)
from tedloc.artifacts.train_data import (
    PseudoLabelIndex,
    labels_in_anchor_order,
    read_pseudo_label_index,
)
from tedloc.config import hash_json
from tedloc.configs.train import Config
from tedloc.errors import ArtifactError, ConfigError, TedlocError
from tedloc.stages.train_dist import DistContext
from tedloc.stages.train_epoch import derived_seed, epoch_plan, epoch_row, lr_factor, train_epoch
from tedloc.stages.train_features import FeatureSource, choose_source, threshold_grids

log = logging.getLogger(__name__)


def run(config: Config, *, workdir: Path, overwrite: bool = False,
        on_epoch_end: Callable[[int], None] | None = None) -> Path:
    """Train (or resume, or return at once when finished); return the manifest path.

    ``on_epoch_end(epoch)`` (0-based) is called after each epoch's checkpoint is written.
    """
    ddp = DistContext(config)
    try:
        return _run(config, Path(workdir), overwrite, on_epoch_end, ddp)
    finally:
        ddp.close()


def _run(config: Config, workdir: Path, overwrite: bool, on_epoch_end, ddp: DistContext) -> Path:
    """Read the inputs, check what the stage directory holds (rank 0, under the stage's
    lock), then train from scratch or from ``last.pt``."""
    stage_dir = workdir / STAGE_DIR
    text = read_text_embed(workdir)
    index = read_pseudo_label_index(workdir)
    index.labels = labels_in_anchor_order(index, text)
    if index.labels.min() < 0 or index.labels.max() >= text.num_classes:
        raise ArtifactError(f"{index.directory}: labels outside 0..{text.num_classes - 1}")
    if config.inference_scale > 1 and not index.dataset:
        raise ConfigError(f"train: inference_scale {config.inference_scale} needs the training images, and "
                          f"{index.directory / MANIFEST} records no dataset (use inference_scale = 1)")
    header = ArtifactHeader(format=FORMAT, format_version=FORMAT_VERSION, config=config.to_dict(),
                            config_hash=config.config_hash(),
                            upstream_hash=hash_json([text.identity, index.identity]))

    lock = StageLock(stage_dir / ".lock") if ddp.main else None
    state: dict[str, Any] | None = None
    error: str | None = None
    finished = False
    if ddp.main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        try:
            finished, state = prepare_train_dir(stage_dir, header, overwrite)
            if not finished and index.has_features and config.features != "encoder":
                # The cached grids it will read (rank 0 for all): never train on damaged features.
                with open_pseudo_labels(index.directory, verify=False) as reader:
                    reader.verify_linked()
        except TedlocError as exc:
            error = str(exc)
            lock.release()
            ddp.agree(error)
            raise
    ddp.agree(error)
    try:
        if ddp.broadcast(finished):
            log.info("train: finished results with the same identity exist in %s", stage_dir)
            return stage_dir / MANIFEST
        if not ddp.main:
            state = load_checkpoint(stage_dir / LAST) if (stage_dir / LAST).exists() else None
        return _train(config, stage_dir, header, text, index, state, on_epoch_end, ddp)
    finally:
        if lock is not None:
            lock.release()


def _train(config: Config, stage_dir: Path, header: ArtifactHeader, text, index: PseudoLabelIndex,
           state: dict[str, Any] | None, on_epoch_end, ddp: DistContext) -> Path:
    """The epoch loop (from ``state`` when resuming), then :func:`_finish` on rank 0."""
    from tedloc.pipeline.fine_grid import upsample_maps
    from tedloc.pipeline.model import HeadConfig, TedLocHead
    from tedloc.pipeline.progress import progress

    kind, flip_ok = choose_source(config, index)
    hflip = config.hflip if flip_ok else 0.0
    device = ddp.device
    source = FeatureSource(config, index, device, flip_ok, kind)
    log.info("train: %d images, %d classes, features from %s, device %s, world size %d",
             len(index), text.num_classes, kind, device, ddp.world)

    head_config = HeadConfig(in_dim=source.feature_dim, embed_dim=text.dim, num_classes=text.num_classes,
                             decoder=config.decoder, width=config.width, depth=config.depth, heads=config.heads,
                             patch_head=config.patch_head, patch_hidden=config.patch_hidden, tau=config.tau,
                             fine_dim=index.fine_dim, fine_width=config.fine_width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = TedLocHead(head_config, torch.from_numpy(text.anchors))
    head.to(device)
    model = head
    if ddp.enabled:
        from torch.nn.parallel import DistributedDataParallel

        unused = min(config.lambda_kd, config.lambda_p, config.lambda_i) == 0
        model = DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=unused)

    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(index) / ddp.world) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps=total_steps, warmup_steps=warmup_steps))

    start_epoch, step = 0, 0
    history: list[dict[str, Any]] = []
    best = {"loss": float("inf"), "epoch": -1}
    if state is not None:
        head.load_state_dict(state["head_state"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        history = [dict(row) for row in state["history"]]
        best = dict(state["best"])
        set_rng_state(state["rng"])
        log.info("train: resuming after epoch %d of %d", start_epoch, config.epochs)
    if ddp.main and history:
        write_train_log(stage_dir / LOG, history)

    cams = upsample_maps(torch.from_numpy(index.cams), head.map_grid(index.grid))  # patches are the head's
    fg_level = index.region_level() if config.fg_region else None
    labels = torch.from_numpy(index.labels)
    common = dict(config=config, header=header, class_names=text.class_names, index=index)
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        plan = epoch_plan(len(index), batch_size=config.batch_size, seed=config.seed, epoch=epoch,
                          rank=ddp.rank, world=ddp.world, hflip=hflip)
        generator = torch.Generator().manual_seed(derived_seed(config.seed, epoch, ddp.rank, "patches"))
        bar = progress(total=len(plan), desc=f"train: epoch {epoch + 1}/{config.epochs}", unit="batch",
                       disable=not (ddp.main and config.progress), leave=False)
        sums = train_epoch(config, model, head, source, plan, cams=cams, labels=labels, optimizer=optimizer,
                           scheduler=scheduler, generator=generator, bar=bar, fg_level=fg_level)
        bar.close()
        step += len(plan)
        row = epoch_row(ddp.all_reduce(sums), epoch=epoch, lr=float(scheduler.get_last_lr()[0]),
                        seconds=time.perf_counter() - started)
        if row["loss"] < best["loss"]:
            best = {"loss": row["loss"], "epoch": epoch + 1}
            row["best"] = 1
        history.append(row)
        log.info("train: epoch %d/%d loss %.4f (kd %.4f, p %.4f, i %.4f) cls acc %.3f patch acc %.3f (%.1fs)",
                 epoch + 1, config.epochs, row["loss"], row["loss_kd"], row["loss_p"], row["loss_i"],
                 row["cls_acc"], row["patch_acc"], row["seconds"])
        if ddp.main:
            if row["best"]:
                save_checkpoint(stage_dir / BEST, {**model_state(head, threshold=None, **common),
                                                   "epoch": epoch + 1, "history": history, "best": best})
            save_checkpoint(stage_dir / LAST, {
                **model_state(head, threshold=None, **common),
                "epoch": epoch + 1, "step": step, "history": history, "best": best,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "sampler": {"seed": config.seed, "derivation": "hash_json([seed, epoch, rank, purpose])",
                            "next_epoch": epoch + 1},
            })
            write_train_log(stage_dir / LOG, history)
        ddp.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    if not ddp.main:
        ddp.barrier()
        return stage_dir / MANIFEST
    manifest = _finish(config, stage_dir, header, text, index, source, head, history, best, hflip, kind)
    ddp.barrier()
    return manifest


def _maps_of(heads: list, config: Config, index, source: FeatureSource, count: int) -> list[np.ndarray]:
    """float32 (count, h, w) maps of the first ``count`` training images (no flip), one array
    per head, as the model makes them at inference (:func:`threshold_grids`).  The grids are
    read (or encoded) once for all heads."""
    maps: list[list[np.ndarray]] = [[] for _ in heads]
    for head in heads:
        head.eval()
    with torch.no_grad():
        for batch in threshold_grids(config, index, source, count):
            with source.autocast():
                for k, head in enumerate(heads):
                    maps[k].append(head(batch).maps.float().cpu().numpy())
    return [np.concatenate(m) for m in maps]


def _finish(config, stage_dir, header, text, index, source, head, history, best, hflip, kind) -> Path:
    """The map threshold of ``best.pt`` (and ``last.pt``) against the pseudo boxes of the
    training images, ``model.pt``, the log and the manifest."""
    from tedloc.pipeline.threshold import choose_threshold

    count = len(index) if config.threshold_images == 0 else min(config.threshold_images, len(index))
    common = dict(config=config, header=header, class_names=text.class_names, index=index)

    def choose(maps: np.ndarray):
        return choose_threshold(maps, index.pseudo_boxes[:count], input_size=index.input_size,
                                size=config.threshold_size, step=config.threshold_step,
                                criterion=config.threshold_criterion, normalize=config.threshold_normalize)

    last = load_checkpoint(stage_dir / LAST)
    best_state = load_checkpoint(stage_dir / BEST)
    same = int(last["epoch"]) == int(best_state["epoch"])
    heads = []
    for state in ([best_state] if same else [best_state, last]):
        copy = deepcopy(head)
        copy.load_state_dict(state["head_state"])
        heads.append(copy)
    maps = _maps_of(heads, config, index, source, count)
    choice = choose(maps[0])
    log.info("train: threshold %.2f (mean IoU %.3f, IoU≥0.5 %.3f vs. pseudo boxes of %d training images, maps "
             "at input %d)", choice.threshold, *[choice.summary()[k] for k in ("mean_iou", "iou50")], count,
             config.inference_input_size(index.input_size))
    best_state["threshold"] = choice.threshold
    best_state["threshold_choice"] = choice.summary()
    save_checkpoint(stage_dir / BEST, best_state)
    last_choice = choice if same else choose(maps[1])
    last["threshold"], last["threshold_choice"] = last_choice.threshold, last_choice.summary()
    save_checkpoint(stage_dir / LAST, last)
    head.load_state_dict(best_state["head_state"])
    save_checkpoint(stage_dir / MODEL, {**model_state(head, threshold=choice.threshold, **common),
                                        "threshold_choice": choice.summary(),
                                        "epoch": best_state["epoch"], "history": history, "best": best})
    write_train_log(stage_dir / LOG, history)
    final = history[-1]
    extra = {
        "class_names": list(text.class_names), "encoder": index.encoder, "input_size": index.input_size,
        "inference_input_size": config.inference_input_size(index.input_size), "grid": list(index.grid),
        "feature_dim": source.feature_dim, "embed_dim": text.dim,
        "num_images": len(index), "epochs": config.epochs, "feature_source": kind, "hflip_used": hflip,
        "model_epoch": int(best_state["epoch"]), "model_selection": "lowest mean training loss (no GT)",
        "threshold": choice.threshold, "threshold_choice": choice.summary(),
        "final": {k: final[k] for k in ("loss", "loss_kd", "loss_p", "loss_i", "cls_acc", "patch_acc")},
        "seconds_per_epoch": float(np.mean([row["seconds"] for row in history])),
    }
    return write_manifest(stage_dir, header, files=[MODEL, BEST, LAST, LOG], extra=extra)
