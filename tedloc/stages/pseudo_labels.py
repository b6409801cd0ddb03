"""Stage pseudo-labels: frozen encoder -> per-image map of the GT class (CAM or CLIP-ES).

Steps (one process, or each of ``num_shards`` processes on its part of the images):

1. **Classifier** (``cam_classifier.h5``, written before any shard, reused on resume):
   pooled features of *every* selected training image (each process computes them all,
   deterministically: the simplest way for concurrent processes to agree without waiting
   on each other), a multinomial logistic regression (``tedloc.pipeline.cam``), written
   with exclusive creation so that one file wins and every process reads that one.  Fit
   for every method: the CAM baseline of the evaluate stage uses it.
2. **Maps**: batches of this process's pending images (decoded in DataLoader workers) ->
   encoder grid -> CAM of the GT class (``cam``) or CLIP-ES (``clip-es``), min–max to
   [0, 1]; pseudo box from the map upsampled to S×S at ``box_threshold``; optionally the
   grid itself (and the flipped image's grid) as float16.  Written as shards of about
   ``shard_size`` images; a killed run resumes with the images not yet in a shard.
3. **Manifest**: written by the process that finds every image done, with, when the split
   has GT boxes, the maps' MaxBoxAccV2 against them as a *diagnostic* (the GT is never
   used to make the pseudo-labels).

``cache_features="auto"`` caches while ``N · h · w · c · 2 bytes`` (×2 with flips) fits
``cache_budget_gb``.  Identity: the hashed config fields plus the selected images' ids and
labels (by content) and the encoder's weight fingerprint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tedloc.artifacts.pseudo_labels import (
    CLASSIFIER_FILE,
    FORMAT,
    FORMAT_VERSION,
    STAGE_DIR,
    SUPPORTED_VERSIONS,
    read_classifier,
    write_classifier_once,
)
from tedloc.artifacts.store import ArtifactHeader, ShardedReader, ShardedWriter
from tedloc.config import hash_json
from tedloc.configs.pseudo_labels import Config
from tedloc.data.records import Dataset, Record
from tedloc.errors import ConfigError, ConfigMismatchError, InputError
from tedloc.pipeline import cam as cam_ops
from tedloc.pipeline.image_encoders import (
    ImageEncoder,
    build_image_encoder,
    image_encoder_fingerprint,
    resolve_device,
)
from tedloc.pipeline.image_loader import make_image_loader

log = logging.getLogger(__name__)

#: Called after every batch of maps with the number of images computed so far in this run
#: (tests use it to interrupt a run).  None in normal use.
AFTER_BATCH_HOOK: Callable[[int], None] | None = None
DIAGNOSTIC_SIZE = 224


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
        return "clip-es" if config.encoder.startswith("clip:") else "cam"
    if config.method == "clip-es" and not config.encoder.startswith("clip:"):
        raise ConfigError(f"pseudo_labels: method clip-es needs a clip:<model> encoder, got {config.encoder!r}"
                          + (" (open_clip is supported with method cam)" if clip else ""))
    return config.method


def select_records(dataset: Dataset, limit: int) -> list[Record]:
    records = list(dataset.records[:limit] if limit else dataset.records)
    if not records:
        raise InputError(dataset.spec, f"split {dataset.split!r} has no images")
    return records


def make_header(config: Config, *, records: Sequence[Record], class_names: Sequence[str],
                encoder_fingerprint: str, method: str) -> ArtifactHeader:
    config_hash = hash_json({
        "config": config.hashed_dict(),
        "images": hash_json([[r.image_id, r.label] for r in records]),
        "class_names": list(class_names),
        "encoder_fingerprint": encoder_fingerprint,
        "method": method,
    })
    return ArtifactHeader(format=FORMAT, format_version=FORMAT_VERSION, config=config.to_dict(),
                          config_hash=config_hash, upstream_hash="")


def feature_cache_bytes(num_images: int, encoder: ImageEncoder, flip: bool) -> int:
    """Estimated float16 bytes of the cached grids (before lzf compression)."""
    h, w = encoder.grid
    return num_images * h * w * encoder.feature_dim * 2 * (2 if flip else 1)


def resolve_cache(config: Config, num_images: int, encoder: ImageEncoder) -> tuple[bool, bool]:
    """(cache features, cache flipped features)."""
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


# ----------------------------------------------------------------------------- classifier

def pooled_features(encoder: ImageEncoder, dataset: Dataset, records: Sequence[Record], *,
                    config: Config) -> tuple[np.ndarray, np.ndarray]:
    """float32 (N', c) pooled features and int64 (N',) labels of the readable images."""
    loader = make_image_loader(dataset, records, input_size=encoder.input_size,
                               batch_size=config.batch_size, num_workers=config.num_workers,
                               on_bad_image=config.on_bad_image)
    feats, labels = [], []
    with torch.inference_mode():
        for batch in tqdm(loader, desc="pseudo-labels: pooled features", unit="batch"):
            if len(batch) == 0:
                continue
            feats.append(encoder(encoder.normalize(batch.pixels)).pooled.float().cpu().numpy())
            labels.append(batch.labels)
    if not feats:
        raise InputError(dataset.spec, "no readable training image to fit the CAM classifier")
    return np.concatenate(feats), np.concatenate(labels)


def get_classifier(directory: Path, header: ArtifactHeader, encoder: ImageEncoder, dataset: Dataset,
                   records: Sequence[Record], config: Config) -> tuple[np.ndarray, np.ndarray, dict]:
    """(weight (C, c), bias (C,), attrs) from ``cam_classifier.h5``, fitting it first if absent."""
    path = directory / CLASSIFIER_FILE
    if not path.exists():
        features, labels = pooled_features(encoder, dataset, records, config=config)
        fitted = cam_ops.fit_linear_classifier(
            features, labels, dataset.num_classes, weight_decay=config.classifier_weight_decay,
            max_iter=config.classifier_max_iter, holdout=config.classifier_holdout,
            refit_all=config.classifier_refit_all, seed=config.seed)
        attrs = {"holdout_accuracy": -1.0 if fitted.holdout_accuracy is None else fitted.holdout_accuracy,
                 "train_accuracy": fitted.train_accuracy, "num_images": len(labels),
                 "encoder": encoder.spec, "input_size": encoder.input_size}
        created = write_classifier_once(path, header, fitted.weight, fitted.bias, attrs)
        log.info("CAM classifier on %d pooled %d-d features: held-out accuracy %s, train accuracy %.3f%s",
                 len(labels), features.shape[1],
                 "n/a" if fitted.holdout_accuracy is None else f"{fitted.holdout_accuracy:.3f}",
                 fitted.train_accuracy, "" if created else " (another process's file is used)")
    classifier = read_classifier(path)
    if classifier.identity != header.identity:
        raise ConfigMismatchError(
            f"{path}: made with hash {classifier.identity}, this run has {header.identity}; "
            "pass --overwrite to recompute (the old results will be deleted)")
    return classifier.weight, classifier.bias, classifier.attrs


# ----------------------------------------------------------------------------- maps

class _ShardBuffer:
    """Accumulates per-image rows and writes a shard every ``shard_size`` images."""

    def __init__(self, writer: ShardedWriter, shard_size: int, dataset_attrs: dict[str, dict[str, Any]]):
        self.writer = writer
        self.shard_size = shard_size
        self.dataset_attrs = dataset_attrs
        self.ids: list[str] = []
        self.rows: dict[str, list[np.ndarray]] = {}
        self.skipped: dict[str, str] = {}

    def add(self, ids: Sequence[str], arrays: dict[str, np.ndarray], skipped: dict[str, str]) -> None:
        self.ids.extend(ids)
        for key, value in arrays.items():
            self.rows.setdefault(key, []).append(value)
        self.skipped.update(skipped)
        if len(self.ids) + len(self.skipped) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.ids and not self.skipped:
            return
        arrays = {key: np.concatenate(parts) for key, parts in self.rows.items()}
        self.writer.write_shard(self.ids, arrays, skipped=self.skipped, dataset_attrs=self.dataset_attrs)
        self.ids, self.rows, self.skipped = [], {}, {}


def compute_maps(encoder: ImageEncoder, pixels: torch.Tensor, labels: torch.Tensor, *, method: str,
                 weight: torch.Tensor, clip_es, want_grid: bool, want_flip: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(maps float32 (B, h, w) in [0, 1], grid or None, flipped grid or None) for one batch."""
    grid = flip_grid = None
    if method == "cam" or want_grid:
        with torch.inference_mode():
            grid = encoder(pixels).grid
    if method == "cam":
        maps = cam_ops.minmax_normalize(cam_ops.class_activation_maps(grid, weight, labels))
    else:
        maps = clip_es.maps(pixels, labels)
    if want_flip:
        with torch.inference_mode():
            flip_grid = encoder(pixels.flip(-1)).grid
    return maps, grid if want_grid else None, flip_grid


def run(config: Config, *, workdir: Path, overwrite: bool = False) -> Path:
    """Compute the pseudo-labels into ``<workdir>/pseudo_labels/``; return the manifest path
    (or, for a process whose part is done while others are still running, the directory)."""
    from tedloc.data.open import open_dataset

    config.validate()
    directory = Path(workdir) / STAGE_DIR
    dataset = open_dataset(config.dataset, config.split)
    records = select_records(dataset, config.limit)
    all_ids = [r.image_id for r in records]
    num_shards, shard_index = resolve_sharding(config)
    method = resolve_method(config)
    device = resolve_device(config.device)

    encoder = None
    fingerprint = image_encoder_fingerprint(config.encoder)
    if fingerprint is None:  # a hub model: load it to learn the identity of its weights
        encoder = build_image_encoder(config.encoder, input_size=config.input_size or None, device=device)
        fingerprint = encoder.fingerprint
    header = make_header(config, records=records, class_names=dataset.class_names,
                         encoder_fingerprint=fingerprint, method=method)

    writer = ShardedWriter(directory, header, num_shards=num_shards, shard_index=shard_index,
                           supported_versions=SUPPORTED_VERSIONS)
    with writer:
        if writer.open(overwrite=overwrite):
            log.info("pseudo-labels: %s is up to date (hash %s); nothing to do", directory, header.identity)
            return writer.manifest_path
        if encoder is None:
            encoder = build_image_encoder(config.encoder, input_size=config.input_size or None, device=device)
        has_features, has_flip = resolve_cache(config, len(records), encoder)
        weight, bias, clf_attrs = get_classifier(directory, header, encoder, dataset, records, config)
        pending = writer.pending(all_ids)
        log.info("pseudo-labels (%s, %s, grid %s, c=%d): %d of %d images to do in part %d/%d",
                 method, encoder.spec, encoder.grid, encoder.feature_dim, len(pending), len(all_ids),
                 shard_index, num_shards)
        if pending:
            pending_set = set(pending)
            _compute(config, encoder, dataset, [r for r in records if r.image_id in pending_set],
                     writer, method=method, weight=weight, has_features=has_features, has_flip=has_flip)
        return _finish(config, writer, dataset, records, encoder, method=method,
                       has_features=has_features, has_flip=has_flip, clf_attrs=clf_attrs)


def _compute(config: Config, encoder: ImageEncoder, dataset: Dataset, records: list[Record],
             writer: ShardedWriter, *, method: str, weight: np.ndarray, has_features: bool,
             has_flip: bool) -> None:
    clip_es = None
    if method == "clip-es":
        from tedloc.pipeline.clip_es import ClipES

        clip_es = ClipES(encoder, dataset.class_names, prompt=config.clip_es_prompt,
                         backgrounds=config.clip_es_backgrounds, refine=config.clip_es_refine,
                         attention_layers=config.clip_es_attention_layers,
                         refine_threshold=config.clip_es_refine_threshold)
    h, w = encoder.grid
    size = encoder.input_size
    dataset_attrs = {
        "cam": {"grid": [h, w], "range": "[0, 1] min-max per image", "method": method},
        "pseudo_box": {"box_format": "x0y0x1y1", "size": [size, size], "threshold": config.box_threshold},
        "image_size": {"layout": "width,height"},
        "features": {"layout": "h,w,c", "input_size": size, "encoder": encoder.spec},
        "features_flip": {"layout": "h,w,c", "input_size": size, "flipped": "horizontal"},
    }
    buffer = _ShardBuffer(writer, config.shard_size, dataset_attrs)
    weight_t = torch.as_tensor(weight, device=encoder.device)
    loader = make_image_loader(dataset, records, input_size=size, batch_size=config.batch_size,
                               num_workers=config.num_workers, on_bad_image=config.on_bad_image)
    done = 0
    for batch in tqdm(loader, desc="pseudo-labels: maps", unit="batch"):
        if batch.bad:
            log.warning("skipping %d unreadable image(s): %s", len(batch.bad), "; ".join(batch.bad.values()))
        arrays: dict[str, np.ndarray] = {}
        if len(batch):
            pixels = encoder.normalize(batch.pixels)
            labels = torch.as_tensor(batch.labels, device=encoder.device)
            maps, grid, flip_grid = compute_maps(encoder, pixels, labels, method=method, weight=weight_t,
                                                 clip_es=clip_es, want_grid=has_features,
                                                 want_flip=has_flip)
            up = cam_ops.upsample_maps(maps, size).cpu().numpy()
            arrays = {
                "label": batch.labels.astype(np.int64),
                "image_size": batch.sizes.astype(np.int32),
                "cam": maps.cpu().numpy().astype(np.float16),
                "pseudo_box": cam_ops.pseudo_boxes(up, config.box_threshold),
            }
            if grid is not None:
                arrays["features"] = grid.to(torch.float16).cpu().numpy()
            if flip_grid is not None:
                arrays["features_flip"] = flip_grid.to(torch.float16).cpu().numpy()
        buffer.add(batch.ids, arrays, batch.bad)
        done += len(batch) + len(batch.bad)
        if AFTER_BATCH_HOOK is not None:
            AFTER_BATCH_HOOK(done)
    buffer.flush()


# ----------------------------------------------------------------------------- finish

def maxboxacc_v2(cams: np.ndarray, records: Sequence[Record], sizes: np.ndarray,
                 thresholds: np.ndarray, deltas: Sequence[int] = (30, 50, 70)) -> float | None:
    """MaxBoxAccV2 (%) of grid maps (N, h, w) against the records' GT boxes at 224×224; None
    when no record has boxes.  ``sizes``: int (N, 2) original (width, height)."""
    from tedloc.pipeline.metrics import best_ious, evaluation_map, gt_boxes_at_eval_size

    hits = np.zeros((len(deltas), len(thresholds)))
    count = 0
    for scoremap, record, size in zip(cams, records, sizes, strict=True):
        if len(record.boxes) == 0:
            continue
        smap = evaluation_map(np.asarray(scoremap, np.float32), DIAGNOSTIC_SIZE, image_id=record.image_id)
        gt = gt_boxes_at_eval_size(record.boxes, (int(size[0]), int(size[1])), DIAGNOSTIC_SIZE)
        ious = best_ious(smap, gt, thresholds, multi_contour=True)
        for d, delta in enumerate(deltas):
            hits[d] += ious >= delta / 100
        count += 1
    if count == 0:
        return None
    return float(np.mean((hits / count).max(axis=1)) * 100)


def _finish(config: Config, writer: ShardedWriter, dataset: Dataset, records: Sequence[Record],
            encoder: ImageEncoder, *, method: str, has_features: bool, has_flip: bool,
            clf_attrs: dict) -> Path:
    all_ids = [r.image_id for r in records]
    diagnostic: dict[str, Any] | None = None
    with ShardedReader(writer.directory, FORMAT, supported_versions=SUPPORTED_VERSIONS,
                       allow_partial=True) as reader:
        complete = set(all_ids) <= set(reader.ids) | set(reader.skipped)
        if complete and config.diagnostic and any(len(r.boxes) for r in records):
            from tedloc.pipeline.metrics import threshold_grid

            by_id = dataset.by_id()
            ids = [i for i in reader.ids if i in by_id]
            value = maxboxacc_v2(reader.read_many("cam", ids), [by_id[i] for i in ids],
                                 reader.read_many("image_size", ids), threshold_grid(0.01))
            if value is not None:
                diagnostic = {"maxboxacc_v2": round(value, 2), "num_images": sum(
                    1 for i in ids if len(by_id[i].boxes)),
                    "note": "diagnostic only: the pseudo-label maps against the split's GT boxes; "
                            "GT is never used to make or train on pseudo-labels"}
                log.info("diagnostic (GT boxes, not used for training): pseudo-label MaxBoxAccV2 = %.2f "
                         "on %d images", value, diagnostic["num_images"])
    if not complete:
        log.info("pseudo-labels: this part is done; the manifest is written by the last part to finish")
        return writer.directory
    holdout = float(clf_attrs.get("holdout_accuracy", -1.0))
    extra = {
        "encoder": encoder.spec,
        "encoder_fingerprint": encoder.fingerprint,
        "input_size": encoder.input_size,
        "grid": list(encoder.grid),
        "feature_dim": encoder.feature_dim,
        "method": method,
        "dataset": config.dataset,
        "split": config.split,
        "class_names": list(dataset.class_names),
        "box_threshold": config.box_threshold,
        "has_features": has_features,
        "has_flip_features": has_flip,
        "classifier_accuracy": None if holdout < 0 else round(holdout, 4),
        "classifier_train_accuracy": round(float(clf_attrs.get("train_accuracy", 0.0)), 4),
        "diagnostic": diagnostic,
    }
    path = writer.finish(all_ids, extra=extra)
    return path if path is not None else writer.directory
