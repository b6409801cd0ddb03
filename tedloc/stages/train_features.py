"""Train: where each batch's frozen grids come from (``features``): the pseudo-labels' cached
grids held in memory, read from the shards batch by batch, or the encoder run on the images
(:mod:`tedloc.artifacts.train_data`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from tedloc.artifacts.manifest import MANIFEST
from tedloc.artifacts.train_data import (
    Batch,
    MemoryFeatures,
    PseudoLabelIndex,
    image_loader,
    shard_feature_loader,
)
from tedloc.configs.train import Config
from tedloc.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

def choose_source(config: Config, index: PseudoLabelIndex) -> tuple[str, bool]:
    """(kind: ``memory``, ``shards`` or ``encoder``; whether flips can be used) for the config
    and what the cache holds (memory while the grids fit ``cache_memory_mb``)."""
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


def first_images_plan(count: int, batch_size: int) -> list[Batch]:
    """Batches of the first ``count`` training images in order, none flipped."""
    return [(list(range(i, min(count, i + batch_size))), [False] * min(batch_size, count - i))
            for i in range(0, count, batch_size)]


def training_records(index: PseudoLabelIndex, ids: list[str]) -> tuple[Any, list]:
    """(the pseudo-labels' dataset, the records of ``ids`` in that order), to encode the images
    again; ArtifactError when no dataset is recorded or an id is not in it."""
    if not index.dataset:
        raise ArtifactError(f"{index.directory / MANIFEST}: no dataset recorded; cannot encode images")
    dataset = index.open_dataset()
    by_id = dataset.by_id() if callable(getattr(dataset, "by_id", None)) else dataset.by_id
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ArtifactError(f"{index.directory}: {len(missing)} pseudo-labelled images (e.g. {missing[0]!r}) "
                            f"are not in dataset {index.dataset!r} split {index.split!r}")
    return dataset, [by_id[i] for i in ids]


class FeatureSource:
    """Yields (float grids (B, h, w, c) on the device, indices, flips) for a plan of batches."""

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

            self.dataset, self.records = training_records(index, index.ids)
            self.encoder = build_image_encoder(index.encoder, input_size=index.input_size, device=device)
            if tuple(self.encoder.grid) != tuple(index.grid):
                raise ArtifactError(f"{index.directory}: maps are {index.grid}, encoder {index.encoder} "
                                    f"gives {self.encoder.grid}")

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim if self.encoder is not None else self.index.feature_dim

    def autocast(self):
        """bfloat16 autocast on CUDA with ``amp``, else nothing."""
        if self.device.type == "cuda" and self.config.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def iterate(self, plan: list[Batch]) -> Iterator[tuple[torch.Tensor, list[int], list[bool]]]:
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
                with torch.no_grad(), self.autocast():
                    grids = self.encoder(self.encoder.normalize(pixels)).grid
                yield grids.float(), indices, flips


def threshold_grids(config: Config, index: PseudoLabelIndex, source: FeatureSource, count: int
                    ) -> Iterator[torch.Tensor]:
    """float grids (B, s·h, s·w, c) of the first ``count`` training images (no flip) as the
    model reads them at inference, for picking the map threshold there: the training grids
    from ``source`` (``inference_scale`` s = 1), else the encoder run on the images at s ×
    the pseudo-labels' input size."""
    if config.inference_scale == 1:
        for grids, _, _ in source.iterate(first_images_plan(count, config.batch_size)):
            yield grids
        return
    from tedloc.pipeline.forwards import encode_batch, inference_forward_batch
    from tedloc.pipeline.image_encoders import build_image_encoder

    dataset, records = training_records(index, index.ids[:count])
    size = config.inference_input_size(index.input_size)
    encoder = build_image_encoder(index.encoder, input_size=size, device=source.device)
    # Decoded in this process: a few hundred images, and worker processes forked from a stage
    # holding the training grids would each count them again in the process tree's memory.
    loader = image_loader(dataset, records, first_images_plan(count, config.batch_size), input_size=size,
                          num_workers=0)
    forward_batch = inference_forward_batch(size, source.device)
    for pixels in loader:
        yield encode_batch(encoder, pixels, with_flip=False, forward_batch=forward_batch)[1].float()
