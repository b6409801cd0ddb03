"""Pseudo-labels: what one process does, decided before any work (its part of the images,
the method, the stage's identity, what is cached and what staged)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from tedloc.artifacts.pseudo_labels import FORMAT, FORMAT_VERSION
from tedloc.artifacts.store import ArtifactHeader, shard_of
from tedloc.config import hash_json
from tedloc.configs.pseudo_labels import Config
from tedloc.data.records import Dataset, Record
from tedloc.errors import ConfigError, InputError
from tedloc.pipeline.forwards import resolve_forward_batch
from tedloc.pipeline.image_encoders import ImageEncoder
from tedloc.pipeline.image_loader import ImageLoader, make_image_loader, resolve_decode_workers

log = logging.getLogger(__name__)

#: ``on_progress(step, images of that step done in this run)`` (see ``pseudo_labels.run``).
Progress = Callable[[str, int], None]
#: What step 1 stages for every image; the grids are staged besides when the plan says so.
STAGED_ALWAYS = ("label", "image_size", "pooled")


@dataclasses.dataclass(frozen=True)
class Plan:
    """One process's plan.

    Attributes:
        method: ``cam`` or ``clip-es``.
        num_shards, shard_index: this process's part of the images.
        has_features, has_flip: the final shards cache the grids (and the flipped grids).
        stage_grid, stage_flip: step 1 stages the grids (and flipped grids), so the maps are
            made from them with no second encoder pass; (False, False) is the two-pass fallback.
        forward_batch: images per encoder forward (0 = the whole batch).
    """

    method: str
    num_shards: int
    shard_index: int
    has_features: bool
    has_flip: bool
    stage_grid: bool
    stage_flip: bool
    forward_batch: int

    def staged_contents(self) -> set[str]:
        """Names of the arrays step 1 stages per image."""
        return set(STAGED_ALWAYS) | ({"features"} if self.stage_grid else set()) | (
            {"features_flip"} if self.stage_flip else set())


def resolve_sharding(config: Config) -> tuple[int, int]:
    """(num_shards, shard_index): the config's, else torchrun's WORLD_SIZE / RANK, else (1, 0)."""
    num = config.num_shards or int(os.environ.get("WORLD_SIZE", "1") or 1)
    index = config.shard_index if config.shard_index >= 0 else int(os.environ.get("RANK", "0") or 0)
    if not 0 <= index < num:
        raise ConfigError(f"pseudo_labels: shard index {index} is outside 0..{num - 1}")
    return num, index


def resolve_method(config: Config) -> str:
    clip = config.encoder.startswith(("clip:", "open_clip:"))
    if config.method == "auto":
        return "clip-es" if clip else "cam"
    if config.method == "clip-es" and not clip:
        raise ConfigError(f"pseudo_labels: method clip-es needs a CLIP encoder (clip:<model> or "
                          f"open_clip:<model>), got {config.encoder!r}")
    return config.method


def select_records(dataset: Dataset, limit: int) -> list[Record]:
    records = dataset.head(limit)
    if not records:
        raise InputError(dataset.spec, f"split {dataset.split!r} has no images")
    return records


def make_header(config: Config, *, records: Sequence[Record], class_names: Sequence[str],
                encoder_fingerprint: str, method: str) -> ArtifactHeader:
    """Identity: the hashed config fields plus the selected images' ids and labels (by
    content), the class names, the encoder's weight fingerprint and the method."""
    config_hash = hash_json({
        "config": config.hashed_dict(),
        "images": hash_json([[r.image_id, r.label] for r in records]),
        "class_names": list(class_names),
        "encoder_fingerprint": encoder_fingerprint,
        "method": method,
    })
    return ArtifactHeader(format=FORMAT, format_version=FORMAT_VERSION, config=config.stored_dict(),
                          config_hash=config_hash, upstream_hash="")


def feature_cache_bytes(num_images: int, encoder: ImageEncoder, flip: bool) -> int:
    """Estimated float16 bytes of the cached grids, uncompressed."""
    h, w = encoder.grid
    return num_images * h * w * encoder.feature_dim * 2 * (2 if flip else 1)


def resolve_cache(config: Config, num_images: int, encoder: ImageEncoder) -> tuple[bool, bool]:
    """(cache features, cache flipped features): ``auto`` caches while the grids of all
    ``num_images`` fit ``cache_budget_gb``."""
    flip = config.cache_flip_features
    if config.cache_features == "off":
        return False, False
    if config.cache_features == "on":
        return True, flip
    size = feature_cache_bytes(num_images, encoder, flip)
    if size <= config.cache_budget_gb * 1e9:
        log.info("caching encoder features: about %.2f GB for %d images", size / 1e9, num_images)
        return True, flip
    log.warning("not caching encoder features: about %.1f GB for %d images is over cache_budget_gb=%g",
                size / 1e9, num_images, config.cache_budget_gb)
    return False, False


def resolve_staging(config: Config, method: str, num_images: int, encoder: ImageEncoder, *,
                    has_features: bool, has_flip: bool) -> tuple[bool, bool]:
    """(stage grids, stage flipped grids) for step 1 of ``num_images`` (this part's images):
    grids are staged when the final shards cache them anyway, or when this part's grids
    (``n · h · w · c · 2`` bytes, no flips) fit ``cache_budget_gb``.

    (False, False) is the two-pass fallback, and always for ``clip-es`` (its maps need a
    forward with gradients): only pooled vectors are staged and the maps step encodes the
    images again.
    """
    if method != "cam":
        return False, False
    if has_features:  # the shards hold the grids anyway: staging them costs no extra budget
        return True, has_flip
    size = feature_cache_bytes(num_images, encoder, flip=False)
    if size <= config.cache_budget_gb * 1e9:
        return True, False
    log.warning("two passes of the encoder: staging this part's grids (about %.1f GB for %d images) "
                "is over cache_budget_gb=%g", size / 1e9, num_images, config.cache_budget_gb)
    return False, False


def plan_part(config: Config, method: str, encoder: ImageEncoder, records: Sequence[Record], *,
              num_shards: int, shard_index: int) -> Plan:
    """The plan of process ``shard_index`` of ``num_shards`` over ``records``."""
    has_features, has_flip = resolve_cache(config, len(records), encoder)
    part_size = sum(1 for r in records if shard_of(r.image_id, num_shards) == shard_index)
    stage_grid, stage_flip = resolve_staging(config, method, part_size, encoder,
                                             has_features=has_features, has_flip=has_flip)
    return Plan(method=method, num_shards=num_shards, shard_index=shard_index, has_features=has_features,
                has_flip=has_flip, stage_grid=stage_grid, stage_flip=stage_flip,
                forward_batch=resolve_forward_batch(config.forward_batch_size, encoder.device))


def image_loader(config: Config, encoder: ImageEncoder, dataset: Dataset, records: Sequence[Record]
                 ) -> ImageLoader:
    """Decoded, resized batches of ``records`` for ``encoder`` (decoded where
    :func:`resolve_decode_workers` says for ``config.num_workers``)."""
    return make_image_loader(dataset, records, input_size=encoder.input_size, batch_size=config.batch_size,
                             num_workers=resolve_decode_workers(config.num_workers, encoder.device),
                             on_bad_image=config.on_bad_image)


def dataset_attrs(config: Config, encoder: ImageEncoder, method: str) -> dict[str, dict[str, Any]]:
    """The attributes of each per-image dataset the stage writes (staging files and shards)."""
    h, w = encoder.grid
    size = encoder.input_size
    return {
        "cam": {"grid": [h, w], "range": "[0, 1] min-max per image", "method": method},
        "pseudo_box": {"box_format": "x0y0x1y1", "size": [size, size], "threshold": config.box_threshold},
        "image_size": {"layout": "width,height"},
        "features": {"layout": "h,w,c", "input_size": size, "encoder": encoder.spec},
        "features_flip": {"layout": "h,w,c", "input_size": size, "flipped": "horizontal"},
    }


def feature_compression(config: Config) -> dict[str, str | None]:
    """The HDF5 filter of the cached grids in staging files and final shards (None = raw)."""
    filter_name = None if config.feature_compression == "none" else config.feature_compression
    return {"features": filter_name, "features_flip": filter_name}
