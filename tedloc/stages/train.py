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

import contextlib
import csv
import io
import logging
import math
import os
import random
import time
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tedloc.artifacts.atomic import atomic_path
from tedloc.artifacts.checkpoint import RETRAIN_HINT, load_checkpoint, save_checkpoint
from tedloc.artifacts.integrity import check_file
from tedloc.artifacts.lock import StageLock
from tedloc.artifacts.pseudo_labels import open_pseudo_labels
from tedloc.artifacts.store import (
    MANIFEST,
    ArtifactHeader,
    clear_stage_dir,
    prepare_stage_dir,
    write_manifest,
)
from tedloc.artifacts.text_embed import read_text_embed
from tedloc.artifacts.train_data import (
    MemoryFeatures,
    PseudoLabelIndex,
    image_loader,
    labels_in_anchor_order,
    read_pseudo_label_index,
    shard_feature_loader,
)
from tedloc.config import hash_json
from tedloc.configs.train import Config
from tedloc.errors import ArtifactError, ConfigError, ConfigMismatchError, TedlocError

log = logging.getLogger(__name__)

FORMAT = "tedloc.train"
FORMAT_VERSION = 1
STAGE_DIR = "train"
LOG_FIELDS = ("epoch", "images", "loss", "loss_kd", "loss_p", "loss_i", "cls_acc", "patch_acc", "lr", "seconds", "best")

Batch = tuple[list[int], list[bool]]


# ----------------------------------------------------------------------------- distributed

class _Dist:
    """Rank, world size, device; whether this call initialized the process group."""

    def __init__(self, config: Config):
        from tedloc.pipeline.image_encoders import resolve_device

        self.owned = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = torch.cuda.is_available() and config.device != "cpu"
        if world > 1 and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if cuda else "gloo")
            self.owned = True
        self.enabled = dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.enabled else 0
        self.world = dist.get_world_size() if self.enabled else 1
        if self.enabled and cuda and config.device in ("auto", "cuda"):
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        else:
            self.device = resolve_device(config.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def agree(self, error: str | None) -> None:
        """Rank 0's verdict for everyone: an error raised on rank 0 is raised on every rank
        (instead of leaving the others waiting in a collective)."""
        if not self.enabled:
            return
        box = [error]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and not self.main:
            raise ArtifactError(box[0])

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- helpers

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


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
             "python": list(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(LOG_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


# ----------------------------------------------------------------------------- feature sources

class _Source:
    """Yields (float grids (B, h, w, c) on the device, indices, flips) for a plan."""

    def __init__(self, config: Config, index: PseudoLabelIndex, device: torch.device, flip_ok: bool,
                 kind: str):
        self.config = config
        self.index = index
        self.device = device
        self.kind = kind
        self.memory: MemoryFeatures | None = None
        self.encoder = None
        if kind == "memory":
            self.memory = MemoryFeatures(index, with_flip=flip_ok)
        elif kind == "encoder":
            from tedloc.pipeline.image_encoders import build_image_encoder

            if not index.dataset:
                raise ArtifactError(f"{index.directory / MANIFEST}: no dataset recorded; cannot encode images")
            dataset = index.open_dataset()
            by_id = dataset.by_id() if callable(getattr(dataset, "by_id", None)) else dataset.by_id
            missing = [i for i in index.ids if i not in by_id]
            if missing:
                raise ArtifactError(f"{index.directory}: {len(missing)} pseudo-labelled images (e.g. {missing[0]!r}) "
                                    f"are not in dataset {index.dataset!r} split {index.split!r}")
            self.dataset = dataset
            self.records = [by_id[i] for i in index.ids]
            self.encoder = build_image_encoder(index.encoder, input_size=index.input_size, device=device)
            if tuple(self.encoder.grid) != tuple(index.grid):
                raise ArtifactError(f"{index.directory}: maps are {index.grid}, encoder {index.encoder} "
                                    f"gives {self.encoder.grid}")

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim if self.encoder is not None else self.index.feature_dim

    def _autocast(self):
        if self.device.type == "cuda" and self.config.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def iterate(self, plan: list[Batch]):
        if self.kind == "memory":
            for indices, flips in plan:
                yield self.memory.batch(indices, flips).to(self.device, non_blocking=True).float(), indices, flips
        elif self.kind == "shards":
            loader = shard_feature_loader(self.index, plan, num_workers=self.config.num_workers)
            for (indices, flips), grids in zip(plan, loader, strict=True):
                yield grids.to(self.device, non_blocking=True).float(), indices, flips
        else:
            loader = image_loader(self.dataset, self.records, plan, input_size=self.index.input_size,
                                  num_workers=self.config.num_workers)
            for (indices, flips), pixels in zip(plan, loader, strict=True):
                with torch.no_grad(), self._autocast():
                    grids = self.encoder(self.encoder.normalize(pixels)).grid
                yield grids.float(), indices, flips


def _choose_source(config: Config, index: PseudoLabelIndex) -> tuple[str, bool]:
    """(kind, whether flips can be used) for the config and what the cache holds."""
    if config.features == "cache" and not index.has_features:
        raise ConfigError(f"train: features=cache, but {index.directory} has no cached features "
                          "(run pseudo-labels with --cache-features on, or use --features encoder)")
    use_cache = index.has_features and config.features != "encoder"
    if not use_cache:
        return "encoder", True
    flip_ok = index.has_flip_features
    if config.hflip > 0 and not flip_ok:
        log.warning("%s: no cached features_flip; training without flips (a flipped grid is not the "
                    "grid of the flipped image)", index.directory)
    budget = config.cache_memory_mb * 2 ** 20
    return ("memory" if index.feature_bytes(flip_ok) <= budget else "shards"), flip_ok


# ----------------------------------------------------------------------------- the stage

def _checkpoint_common(head, *, config: Config, header: ArtifactHeader, text, index: PseudoLabelIndex,
                       threshold: float | None) -> dict[str, Any]:
    return {
        "head_state": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "head_config": head.config.to_dict(),
        "anchors": head.anchors.detach().cpu().clone(),
        "class_names": list(text.class_names),
        "encoder": index.encoder,
        "input_size": index.input_size,
        "grid": list(index.grid),
        "threshold": threshold,
        "config": config.to_dict(),
        "config_hash": header.config_hash,
        "upstream_hash": header.upstream_hash,
    }


#: Files resuming cannot redo (training would start again): their damage is refused.
#: ``model.pt`` and ``train_log.csv`` are made again from them by a rerun.
PRECIOUS = ("last.pt", "best.pt")


def _prepare(stage_dir: Path, header: ArtifactHeader, overwrite: bool) -> tuple[bool, dict[str, Any] | None]:
    """(finished already, last.pt state to resume from or None); refuses other identities
    and damaged checkpoints (a damaged ``model.pt`` of a finished run is made again)."""
    if prepare_stage_dir(stage_dir, header, overwrite=overwrite, precious=PRECIOUS):
        return True, None
    last = stage_dir / "last.pt"
    if not last.exists():
        return False, None
    try:
        state = load_checkpoint(last)
        if (stage_dir / "best.pt").exists():  # read at the end: a damaged one must stop us now
            check_file(stage_dir / "best.pt", hint=RETRAIN_HINT)
        found = f"{state.get('config_hash')}/{state.get('upstream_hash')}"
        problem = None if found == header.identity else ConfigMismatchError(
            f"{last}: made with hash {found}, this run has {header.identity}; pass --overwrite to "
            "start again (the old checkpoints will be deleted), or use another --workdir")
    except ArtifactError as exc:
        state, problem = None, exc
    if problem is None:
        return False, state
    if not overwrite:
        raise problem
    log.warning("--overwrite: deleting the previous training in %s (%s)", stage_dir, problem)
    clear_stage_dir(stage_dir)
    return False, None


def run(config: Config, *, workdir: Path, overwrite: bool = False,
        on_epoch_end: Callable[[int], None] | None = None) -> Path:
    """Train (or resume, or return at once when finished); return the manifest path.

    ``on_epoch_end(epoch)`` (0-based) is called after each epoch's checkpoint is written.
    """
    ddp = _Dist(config)
    try:
        return _run(config, Path(workdir), overwrite, on_epoch_end, ddp)
    finally:
        ddp.close()


def _run(config: Config, workdir: Path, overwrite: bool, on_epoch_end, ddp: _Dist) -> Path:
    stage_dir = workdir / STAGE_DIR
    text = read_text_embed(workdir)
    index = read_pseudo_label_index(workdir)
    index.labels = labels_in_anchor_order(index, text)
    if index.labels.min() < 0 or index.labels.max() >= text.num_classes:
        raise ArtifactError(f"{index.directory}: labels outside 0..{text.num_classes - 1}")
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
            finished, state = _prepare(stage_dir, header, overwrite)
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
        if ddp.enabled:
            box = [finished]
            dist.broadcast_object_list(box, src=0)
            finished = box[0]
        if finished:
            log.info("train: finished results with the same identity exist in %s", stage_dir)
            return stage_dir / MANIFEST
        if not ddp.main:
            state = load_checkpoint(stage_dir / "last.pt") if (stage_dir / "last.pt").exists() else None
        return _train(config, stage_dir, header, text, index, state, on_epoch_end, ddp)
    finally:
        if lock is not None:
            lock.release()


def _train(config: Config, stage_dir: Path, header: ArtifactHeader, text, index: PseudoLabelIndex,
           state: dict[str, Any] | None, on_epoch_end, ddp: _Dist) -> Path:
    """The epoch loop (from ``state`` when resuming), then :func:`_finish` on rank 0."""
    from tedloc.pipeline.fine_grid import upsample_maps
    from tedloc.pipeline.losses import LossWeights, tedloc_losses
    from tedloc.pipeline.model import HeadConfig, TedLocHead
    from tedloc.pipeline.progress import progress
    from tedloc.pipeline.sampling import sample_patches

    kind, flip_ok = _choose_source(config, index)
    hflip = config.hflip if flip_ok else 0.0
    device = ddp.device
    source = _Source(config, index, device, flip_ok, kind)
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
    weights = LossWeights(kd=config.lambda_kd, p=config.lambda_p, i=config.lambda_i)
    model = head
    if ddp.enabled:
        from torch.nn.parallel import DistributedDataParallel

        unused = min(config.lambda_kd, config.lambda_p, config.lambda_i) == 0
        model = DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=unused)

    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_rank = math.ceil(len(index) / ddp.world)
    steps_per_epoch = math.ceil(per_rank / config.batch_size)
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
        _set_rng_state(state["rng"])
        log.info("train: resuming after epoch %d of %d", start_epoch, config.epochs)
    if ddp.main and history:
        _write_log(stage_dir / "train_log.csv", history)

    cams = upsample_maps(torch.from_numpy(index.cams), head.map_grid(index.grid))  # patches are the head's
    labels_all = torch.from_numpy(index.labels)
    autocast = source._autocast
    common = dict(config=config, header=header, text=text, index=index)
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        plan = epoch_plan(len(index), batch_size=config.batch_size, seed=config.seed, epoch=epoch,
                          rank=ddp.rank, world=ddp.world, hflip=hflip)
        generator = torch.Generator().manual_seed(derived_seed(config.seed, epoch, ddp.rank, "patches"))
        sums = torch.zeros(9, dtype=torch.float64)
        head.train()
        bar = progress(total=len(plan), desc=f"train: epoch {epoch + 1}/{config.epochs}", unit="batch",
                       disable=not (ddp.main and config.progress), leave=False)
        for grids, indices, flips in source.iterate(plan):
            rows = torch.as_tensor(indices, dtype=torch.long)
            cam = cams.index_select(0, rows)
            flip = torch.as_tensor(flips, dtype=torch.bool)
            if flip.any():
                cam[flip] = cam[flip].flip(-1)
            sample = sample_patches(cam, n_fg=config.n_fg, n_bg=config.n_bg, p_fg=config.p_fg, p_bg=config.p_bg,
                                    fg_level=index.region_level() if config.fg_region else None,
                                    bg_level=config.bg_level if config.bg_level < 1 else None, generator=generator)
            sample.fg, sample.bg = sample.fg.to(device), sample.bg.to(device)
            labels = labels_all.index_select(0, rows).to(device)
            with autocast():
                out = model(grids)
            result = tedloc_losses(out, labels, sample, head.anchors, tau=config.tau, weights=weights)
            optimizer.zero_grad(set_to_none=True)
            result.total.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            b = len(indices)
            c = result.counts
            sums += torch.tensor([float(result.total.detach()) * b, float(result.parts["kd"]) * b,
                                  float(result.parts["p"]) * b, float(result.parts["i"]) * b, b,
                                  float(c["cls_correct"]), float(c["cls_total"]),
                                  float(c["patch_correct"]), float(c["patch_total"])], dtype=torch.float64)
            bar.update(1)
            bar.set_postfix(loss=f"{float(result.total.detach()):.3f}")
        bar.close()
        if ddp.enabled:
            reduced = sums.to(device) if device.type == "cuda" else sums
            dist.all_reduce(reduced)
            sums = reduced.cpu()
        n = max(1.0, float(sums[4]))
        row = {"epoch": epoch + 1, "images": int(sums[4]), "loss": float(sums[0]) / n, "loss_kd": float(sums[1]) / n,
               "loss_p": float(sums[2]) / n, "loss_i": float(sums[3]) / n,
               "cls_acc": float(sums[5]) / max(1.0, float(sums[6])),
               "patch_acc": float(sums[7]) / max(1.0, float(sums[8])),
               "lr": float(scheduler.get_last_lr()[0]), "seconds": time.perf_counter() - started, "best": 0}
        if row["loss"] < best["loss"]:
            best = {"loss": row["loss"], "epoch": epoch + 1}
            row["best"] = 1
        history.append(row)
        log.info("train: epoch %d/%d loss %.4f (kd %.4f, p %.4f, i %.4f) cls acc %.3f patch acc %.3f (%.1fs)",
                 epoch + 1, config.epochs, row["loss"], row["loss_kd"], row["loss_p"], row["loss_i"],
                 row["cls_acc"], row["patch_acc"], row["seconds"])
        if ddp.main:
            if row["best"]:
                save_checkpoint(stage_dir / "best.pt", {**_checkpoint_common(head, threshold=None, **common),
                                                        "epoch": epoch + 1, "history": history, "best": best})
            save_checkpoint(stage_dir / "last.pt", {
                **_checkpoint_common(head, threshold=None, **common),
                "epoch": epoch + 1, "step": step, "history": history, "best": best,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "sampler": {"seed": config.seed, "derivation": "hash_json([seed, epoch, rank, purpose])",
                            "next_epoch": epoch + 1},
            })
            _write_log(stage_dir / "train_log.csv", history)
        ddp.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    if not ddp.main:
        ddp.barrier()
        return stage_dir / MANIFEST
    manifest = _finish(config, stage_dir, header, text, index, source, head, history, best, hflip, kind)
    ddp.barrier()
    return manifest


def _maps_of(heads: list, source: _Source, count: int, batch_size: int) -> list[np.ndarray]:
    """float32 (count, h, w) maps of the first ``count`` training images (no flip), one array
    per head; the grids are read (or encoded) once for all heads."""
    plan = [(list(range(i, min(count, i + batch_size))), [False] * min(batch_size, count - i))
            for i in range(0, count, batch_size)]
    maps: list[list[np.ndarray]] = [[] for _ in heads]
    for head in heads:
        head.eval()
    with torch.no_grad():
        for grids, _, _ in source.iterate(plan):
            with source._autocast():
                for k, head in enumerate(heads):
                    maps[k].append(head(grids).maps.float().cpu().numpy())
    return [np.concatenate(m) for m in maps]


def _finish(config, stage_dir, header, text, index, source, head, history, best, hflip, kind) -> Path:
    from tedloc.pipeline.threshold import choose_threshold

    count = len(index) if config.threshold_images == 0 else min(config.threshold_images, len(index))
    common = dict(config=config, header=header, text=text, index=index)

    def choose(maps: np.ndarray):
        return choose_threshold(maps, index.pseudo_boxes[:count], input_size=index.input_size,
                                size=config.threshold_size, step=config.threshold_step,
                                criterion=config.threshold_criterion, normalize=config.threshold_normalize)

    last = load_checkpoint(stage_dir / "last.pt")
    best_state = load_checkpoint(stage_dir / "best.pt")
    same = int(last["epoch"]) == int(best_state["epoch"])
    heads = []
    for state in ([best_state] if same else [best_state, last]):
        copy = deepcopy(head)
        copy.load_state_dict(state["head_state"])
        heads.append(copy)
    maps = _maps_of(heads, source, count, config.batch_size)
    choice = choose(maps[0])
    log.info("train: threshold %.2f (mean IoU %.3f, IoU≥0.5 %.3f vs. pseudo boxes of %d training images)",
             choice.threshold, *[choice.summary()[k] for k in ("mean_iou", "iou50")], count)
    best_state["threshold"] = choice.threshold
    best_state["threshold_choice"] = choice.summary()
    save_checkpoint(stage_dir / "best.pt", best_state)
    last_choice = choice if same else choose(maps[1])
    last["threshold"], last["threshold_choice"] = last_choice.threshold, last_choice.summary()
    save_checkpoint(stage_dir / "last.pt", last)
    head.load_state_dict(best_state["head_state"])
    save_checkpoint(stage_dir / "model.pt", {**_checkpoint_common(head, threshold=choice.threshold, **common),
                                             "threshold_choice": choice.summary(),
                                             "epoch": best_state["epoch"], "history": history, "best": best})
    _write_log(stage_dir / "train_log.csv", history)
    final = history[-1]
    extra = {
        "class_names": list(text.class_names), "encoder": index.encoder, "input_size": index.input_size,
        "grid": list(index.grid), "feature_dim": source.feature_dim, "embed_dim": text.dim,
        "num_images": len(index), "epochs": config.epochs, "feature_source": kind, "hflip_used": hflip,
        "model_epoch": int(best_state["epoch"]), "model_selection": "lowest mean training loss (no GT)",
        "threshold": choice.threshold, "threshold_choice": choice.summary(),
        "final": {k: final[k] for k in ("loss", "loss_kd", "loss_p", "loss_i", "cls_acc", "patch_acc")},
        "seconds_per_epoch": float(np.mean([row["seconds"] for row in history])),
    }
    return write_manifest(stage_dir, header, files=["model.pt", "best.pt", "last.pt", "train_log.csv"], extra=extra)
