"""Stage pseudo-labels: frozen encoder -> per-image map of the GT class (CAM or CLIP-ES).

Steps (one process, or each of ``num_shards`` processes on its part of the images):

1. **Encode** (resumable): one pass of the frozen encoder over this part's pending images
   (decoded in DataLoader workers on an accelerator; on a CPU between forwards, in threads
   of this process).  With method ``cam`` and staged grids, images and their flips go
   through the same forwards, ``[k images; k flipped images]`` (flipped only when
   ``features_flip`` is cached; k = ``forward_batch_size``, 2 on a CPU, the whole batch on
   a GPU), and everything later steps need is staged per ``shard_size`` images in
   ``<stage dir>/encoded/partPPPofNNN-SSSSS.h5``: labels, sizes, the pooled vector, the
   grid and flipped grid (float16).  Each batch's grids are rounded into a buffer pair
   taken from a pool of two and written into the file's ``*.tmp`` by the writer's thread
   while the encoder runs the next batch; the writer gives the pair back once written, so
   no pair is refilled while it is still read.  A full file is closed there too, then
   fsynced and renamed in a background thread.  So the encoder runs exactly once per image (and once per
   flipped image).  A killed run resumes with the images not staged.
2. **Classifier** (``cam_classifier.h5``, written before any shard, reused on resume):
   multinomial logistic regression (``tedloc.pipeline.cam``) on the pooled vectors of
   *every* selected image, gathered in split order from the staging files (N × c float32,
   small); images of other parts that are not staged (yet) are encoded for their pooled
   vector only, so processes never wait on each other.  Written with exclusive creation so
   that one file wins and every process reads that one.  Fit for every method: the CAM
   baseline of the evaluate stage uses it.
3. **Maps**: CAM of the GT class from each staged grid (no encoder), min–max to [0, 1];
   pseudo box from the map upsampled to S×S (as the evaluation upsamples) at
   ``box_threshold``; one final shard per staging file.  When the shards cache the grids,
   the staging file itself becomes the shard's grid file (moved into ``shards/``; the shard
   links to its grids), so the grids are written to disk once; otherwise the staging file
   is deleted once the shard holding its images is on disk.
4. **Manifest**: written by the process that finds every image done, with, when the split
   has GT boxes, the maps' MaxBoxAccV2 against them as a *diagnostic* (the GT is never used
   to make the pseudo-labels; a single process scores its maps in worker processes as step
   3 makes them); then ``encoded/`` is removed.

**Two-pass fallback.**  Grids are staged when the final shards cache them anyway, or when
this part's grids (``n · h · w · c · 2`` bytes, no flips) fit ``cache_budget_gb``; otherwise
(and always for ``clip-es``, whose maps need a forward with gradients) step 1 stages only the
pooled vectors and step 3 decodes and encodes the images again (forwards of
``[images; flipped]`` when flipped grids are cached, plus CLIP-ES's own).

``cache_features="auto"`` caches while ``N · h · w · c · 2 bytes`` (×2 with flips) fits
``cache_budget_gb``.  Identity: the hashed config fields plus the selected images' ids and
labels (by content) and the encoder's weight fingerprint.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tedloc.artifacts.atomic import BackgroundCommitter
from tedloc.artifacts.buffer_pool import BufferPool
from tedloc.artifacts.direct_io import aligned_rows
from tedloc.artifacts.integrity import file_problem
from tedloc.artifacts.pseudo_labels import (
    CLASSIFIER_FILE,
    FORMAT,
    FORMAT_VERSION,
    STAGE_DIR,
    SUPPORTED_VERSIONS,
    EncodedFile,
    EncodedFileWriter,
    encoded_path,
    promote_to_grid_file,
    read_classifier,
    read_encoded,
    read_encoded_chunks,
    recover_orphan_grid_files,
    remove_encoded,
    scan_encoded,
    write_classifier_once,
)
from tedloc.artifacts.store import (
    ArtifactHeader,
    ShardedReader,
    ShardedWriter,
    overwrite_hint,
    shard_of,
)
from tedloc.config import hash_json
from tedloc.configs.pseudo_labels import Config
from tedloc.data.records import Dataset, Record
from tedloc.errors import (
    ArtifactError,
    ConfigError,
    ConfigMismatchError,
    DamagedFileError,
    InputError,
)
from tedloc.paths import absolute_encoder_spec
from tedloc.pipeline import cam as cam_ops
from tedloc.pipeline.box_diagnostic import BoxDiagnostic, diagnostic_sample
from tedloc.pipeline.cpu_memory import keep_freed_memory
from tedloc.pipeline.devices import torch_threads
from tedloc.pipeline.image_encoders import (
    ImageEncoder,
    build_image_encoder,
    image_encoder_fingerprint,
    resolve_device,
)
from tedloc.pipeline.image_loader import ImageLoader, make_image_loader, resolve_decode_workers
from tedloc.pipeline.progress import progress

log = logging.getLogger(__name__)

#: Called after every batch of maps (step 3) with the number of images done so far in this
#: run (tests use it to interrupt a run).  None in normal use.
AFTER_BATCH_HOOK: Callable[[int], None] | None = None
#: Step 1 (encode): called after each staging file is on disk, with the number of images
#: done in this run when it was full (files are then closed one at a time).
AFTER_ENCODE_HOOK: Callable[[int], None] | None = None


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


def resolve_staging(config: Config, method: str, num_images: int, encoder: ImageEncoder, *,
                    has_features: bool, has_flip: bool) -> tuple[bool, bool]:
    """(stage grids, stage flipped grids) for step 1 of ``num_images`` (this part's images).

    (False, False) is the two-pass fallback: only pooled vectors are staged and the maps
    step encodes the images again (see the module docstring).
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


#: Images per forward on a CPU when ``forward_batch_size`` is 0 (see the config field).
CPU_FORWARD_BATCH = 2


def resolve_forward_batch(config: Config, encoder: ImageEncoder) -> int:
    """Images per encoder forward: the config's, else 2 on a CPU, else 0 (the whole batch)."""
    if config.forward_batch_size:
        return config.forward_batch_size
    return CPU_FORWARD_BATCH if encoder.device.type == "cpu" else 0


def encode_batch(encoder: ImageEncoder, pixels: torch.Tensor, *, with_flip: bool, forward_batch: int = 0,
                 grid_out: np.ndarray | None = None, flip_out: np.ndarray | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The encoder on uint8 (B, S, S, 3) images, and on their horizontal flips when
    ``with_flip``: each forward takes ``[k images; their k flips]`` (k = ``forward_batch``,
    0 = all B at once).

    Returns (pooled float32 (B, c), grid float32 (B, h, w, c), flipped grid or None), on
    the encoder's device.  With ``grid_out`` (and ``flip_out`` when ``with_flip``), float16
    host arrays of at least B rows, each forward's grids are rounded into them instead, and
    the grids returned are float16 CPU views of their first B rows: the encode step reuses
    two such buffers for every batch rather than allocating (and page-faulting in) hundreds
    of MB of new arrays per batch.
    """
    step = forward_batch if 0 < forward_batch < len(pixels) else len(pixels)
    into = grid_out is not None
    if into and with_flip and flip_out is None:
        raise ValueError("with_flip and grid_out need flip_out too")
    pooled, grids, flips = [], [], []
    for start in range(0, len(pixels), step):
        x = encoder.normalize(pixels[start:start + step])
        k = len(x)
        if with_flip:
            x = torch.cat([x, x.flip(-1)])
        with torch.inference_mode():
            out = encoder(x)
        pooled.append(out.pooled[:k])
        if into:
            torch.from_numpy(grid_out[start:start + k]).copy_(out.grid[:k])
            if with_flip:
                torch.from_numpy(flip_out[start:start + k]).copy_(out.grid[k:])
            continue
        grids.append(out.grid[:k])
        if with_flip:
            flips.append(out.grid[k:])

    def joined(parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    if into:
        n = len(pixels)
        return (joined(pooled), torch.from_numpy(grid_out[:n]),
                torch.from_numpy(flip_out[:n]) if with_flip else None)
    return joined(pooled), joined(grids), (joined(flips) if with_flip else None)


#: Drop each staging file's pages from the page cache once it is on disk (step 1); step 3
#: reads its grids back straight from the disk (see BackgroundCommitter and
#: tedloc.artifacts.direct_io).
DROP_STAGED_PAGES = True

#: Images per read of staged grids, and per CAM computation on an accelerator (a chunk's
#: float32 copy of the grids, 17.5 MB for Lite0, is small enough to be recycled).
CAM_CHUNK = 16


def cam_from_grid(grid: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """float32 (B, h, w) CAM of ``labels`` in [0, 1] from a (B, h, w, c) grid.

    The grid is rounded to float16 first, so that a map is the CAM of exactly the features
    the artifact caches, and the same whether it came from a staged grid or a fresh forward.
    On a CPU one image at a time (:func:`_cams_one_by_one`), elsewhere ``CAM_CHUNK`` images
    at a time (:func:`_cams_in_chunks`); each map depends only on its own image.
    """
    cams = _cams_one_by_one if grid.device.type == "cpu" else _cams_in_chunks
    return cam_ops.minmax_normalize(cams(grid, weight, labels))


def _cams_in_chunks(grid: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Raw float32 (B, h, w) CAMs of the float16-rounded grid, ``CAM_CHUNK`` images per op."""
    parts = [cam_ops.class_activation_maps(grid[start:start + CAM_CHUNK].to(torch.float16).float(), weight,
                                           labels[start:start + CAM_CHUNK])
             for start in range(0, len(grid), CAM_CHUNK)]
    return torch.cat(parts) if parts else grid.new_zeros((0, *grid.shape[1:3]), dtype=torch.float32)


def _cams_one_by_one(grid: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Raw float32 (B, h, w) CAMs (:func:`tedloc.pipeline.cam.class_activation_maps`) of the
    float16-rounded grid, one matrix-vector product per image through one reused float32
    (h·w, c) buffer.  The buffer (1.1 MB for Lite0) stays in the CPU's cache, where a chunk's
    float32 copy went through memory: 0.6 ms instead of 4.6 ms per 16 Lite0 images."""
    b, h, w, c = grid.shape
    maps = torch.empty((b, h * w), dtype=torch.float32)
    rows = torch.empty((h * w, c), dtype=torch.float32)
    class_weights = weight[labels].float()
    for i in range(b):
        image = grid[i].reshape(h * w, c)
        rows.copy_(image if image.dtype == torch.float16 else image.to(torch.float16))
        torch.mv(rows, class_weights[i], out=maps[i])
    return maps.view(b, h, w)


def image_loader(config: Config, encoder: ImageEncoder, dataset: Dataset, records: Sequence[Record]
                 ) -> ImageLoader:
    """Decoded, resized batches of ``records`` for ``encoder`` (decoded where
    :func:`resolve_decode_workers` says for ``config.num_workers``)."""
    return make_image_loader(dataset, records, input_size=encoder.input_size, batch_size=config.batch_size,
                             num_workers=resolve_decode_workers(config.num_workers, encoder.device),
                             on_bad_image=config.on_bad_image)


# ----------------------------------------------------------------------------- step 1: encode

_STAGED_ALWAYS = ("label", "image_size", "pooled")


def staged_contents(stage_grid: bool, stage_flip: bool) -> set[str]:
    """Names of the arrays step 1 stages per image."""
    return set(_STAGED_ALWAYS) | ({"features"} if stage_grid else set()) | (
        {"features_flip"} if stage_flip else set())


def _encode(config: Config, encoder: ImageEncoder, dataset: Dataset, records: list[Record],
            directory: Path, header: ArtifactHeader, *, part: int, num_parts: int, first_seq: int,
            stage_grid: bool, stage_flip: bool, dataset_attrs: dict[str, dict[str, Any]]) -> list[EncodedFile]:
    """Step 1 over ``records``: a staging file per ``shard_size`` images (whole batches; a
    staging file with grids becomes one final shard's grid file); returns their entries.

    Each file's fsync and rename run in a background thread while the encoder goes on
    (they wait on the disk); every file is in place when this returns or raises.
    """
    h, w = encoder.grid
    c = encoder.feature_dim
    forward_batch = resolve_forward_batch(config, encoder)
    loader = image_loader(config, encoder, dataset, records)
    files: list[EncodedFile] = []
    grid_bytes = h * w * c * 2 * (int(stage_grid) + int(stage_flip))  # float16, per image
    # Each batch's grids are rounded into a buffer pair from a pool of two (see encode_batch)
    # and written from it in a writer's thread while the encoder runs the next batch into the
    # other pair.  The writer gives a pair back once it has written it (on_written), so a
    # pair is never refilled while any file's writer still reads it.  Serial, the writes
    # took 2.0-2.4 s of the main thread per 640 Lite0 images on a 2-core VM.
    # Rows on page boundaries: each can be written straight to its chunk on the disk
    # (tedloc.artifacts.direct_io).
    rows = min(config.batch_size, len(records))
    buffers: BufferPool[tuple[np.ndarray, np.ndarray | None]] = BufferPool(
        lambda: (aligned_rows(rows, (h, w, c), np.float16),
                 aligned_rows(rows, (h, w, c), np.float16) if stage_flip else None), count=2)
    done = 0
    current: EncodedFileWriter | None = None
    # Files being closed in their writer's thread (after their last grid write) while the
    # encoder goes on, in order, with the count of images done when each was full.
    closing: list[tuple[Future, int]] = []

    def collect_closed(*, wait: bool) -> None:
        """Index entries of the closed files, in order (raising a failed close's error)."""
        while closing and (wait or closing[0][0].done()):
            future, done_then = closing.pop(0)
            files.append(future.result())
            if AFTER_ENCODE_HOOK is not None:
                AFTER_ENCODE_HOOK(done_then)

    def close_current() -> None:
        nonlocal current
        closing.append((current.close_in_background(), done))
        current = None
        # With the hook set (tests), each file is on disk before the encoder goes on, so that
        # an interruption from the hook leaves exactly the files it was told of.
        collect_closed(wait=AFTER_ENCODE_HOOK is not None)

    # Staging files are read once more, by step 3, from the disk: their pages leave the
    # cache once on disk and the next files reuse them (see BackgroundCommitter).
    with BackgroundCommitter(drop_cache=DROP_STAGED_PAGES) as committer:
        try:
            for batch in progress(loader, desc="pseudo-labels: encode", unit="batch"):
                if batch.bad:
                    log.warning("skipping %d unreadable image(s): %s", len(batch.bad), "; ".join(batch.bad.values()))
                n = len(batch)
                arrays: dict[str, np.ndarray] = {"label": batch.labels.astype(np.int64),
                                                 "image_size": batch.sizes.astype(np.int32)}
                pair = None
                if n:
                    grid_buffer = flip_buffer = None
                    if stage_grid:
                        pair = buffers.acquire()
                        grid_buffer, flip_buffer = pair
                    pooled, grid, flip_grid = encode_batch(
                        encoder, batch.pixels, with_flip=stage_flip, forward_batch=forward_batch,
                        grid_out=grid_buffer, flip_out=flip_buffer)
                    arrays["pooled"] = pooled.float().cpu().numpy()
                    if stage_grid:
                        arrays["features"] = grid.numpy()
                    if flip_grid is not None:
                        arrays["features_flip"] = flip_grid.numpy()
                else:  # every image of the batch was unreadable: empty arrays of the right shapes
                    arrays["pooled"] = np.zeros((0, c), np.float32)
                    for name in staged_contents(stage_grid, stage_flip) - set(_STAGED_ALWAYS):
                        arrays[name] = np.zeros((0, h, w, c), np.float16)
                if current is None:
                    seq = first_seq + len(files) + len(closing)
                    current = EncodedFileWriter(
                        encoded_path(directory, part, num_parts, seq), header, part=part, num_parts=num_parts,
                        seq=seq, grid_compression=_feature_compression(config)["features"],
                        expected_grid_bytes=grid_bytes * min(config.shard_size, len(records)),
                        dataset_attrs=dataset_attrs, committer=committer, background=True)
                current.append(batch.ids, arrays, batch.bad,
                               on_written=None if pair is None else functools.partial(buffers.release, pair))
                done += n + len(batch.bad)
                if current.num_images >= config.shard_size:
                    close_current()
                collect_closed(wait=False)
            if current is not None:
                close_current()
            collect_closed(wait=True)
        except BaseException:
            if current is not None:
                current.abort()
            for future, _ in closing:  # finished (committed or cleaned up) before the committer exits
                with contextlib.suppress(BaseException):
                    future.result()
            raise
    return files


# ----------------------------------------------------------------------------- step 2: classifier

def pooled_features(encoder: ImageEncoder, dataset: Dataset, records: Sequence[Record], *,
                    config: Config) -> dict[str, np.ndarray]:
    """id -> float32 (c,) pooled feature of the readable ``records`` (an encoder pass)."""
    loader = image_loader(config, encoder, dataset, records)
    out: dict[str, np.ndarray] = {}
    for batch in progress(loader, desc="pseudo-labels: pooled features", unit="batch"):
        if len(batch):
            pooled, _, _ = encode_batch(encoder, batch.pixels, with_flip=False,
                                        forward_batch=resolve_forward_batch(config, encoder))
            out.update(zip(batch.ids, pooled.float().cpu().numpy(), strict=True))
    return out


def gather_pooled(encoder: ImageEncoder, dataset: Dataset, records: Sequence[Record],
                  staged: Sequence[EncodedFile], *, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """float32 (N', c) pooled features and int64 (N',) labels of the readable ``records``, in
    split order (so the fit is the same however the staging files happen to be laid out).

    Read from the staging files of every part; images no file holds (another part's, not
    staged yet) are encoded here for their pooled vector only.  A staging file that vanished
    meanwhile (its part finished) raises FileNotFoundError: the classifier exists by then.
    """
    where: dict[str, tuple[int, int]] = {}
    unreadable: set[str] = set()
    for k, entry in enumerate(staged):
        for row, image_id in enumerate(entry.ids):
            where.setdefault(image_id, (k, row))
        unreadable.update(entry.skipped)
    missing = [r for r in records if r.image_id not in where and r.image_id not in unreadable]
    vectors: dict[str, np.ndarray] = {}
    if missing:
        log.info("encoding %d images of other parts (not staged yet) for their pooled vector", len(missing))
        vectors = pooled_features(encoder, dataset, missing, config=config)
    needed = sorted({where[r.image_id][0] for r in records if r.image_id in where})
    for k in needed:
        if not staged[k].path.exists():
            raise FileNotFoundError(staged[k].path)
        pooled = read_encoded(staged[k].path, ["pooled"])["pooled"]
        for row, image_id in enumerate(staged[k].ids):
            if where[image_id] == (k, row):
                vectors[image_id] = pooled[row]
    chosen = [r for r in records if r.image_id in vectors]
    if not chosen:
        raise InputError(dataset.spec, "no readable training image to fit the CAM classifier")
    features = np.stack([vectors[r.image_id] for r in chosen]).astype(np.float32)
    return features, np.asarray([r.label for r in chosen], np.int64)


def check_classifier(directory: Path, writer: ShardedWriter, *, overwrite: bool) -> None:
    """Before resuming: ``cam_classifier.h5`` must be intact once shards made with it exist
    (only a fresh run remakes it); before any shard a damaged one is deleted and fitted
    again.  Its process (the first) checks it; with ``overwrite`` the stage starts afresh."""
    path = directory / CLASSIFIER_FILE
    if path.exists():
        problem = file_problem(path) if writer.owns(CLASSIFIER_FILE) else None
    else:
        problem = "missing" if writer.done_ids() else None
    if problem is None:
        return
    if not writer.done_ids():
        log.warning("%s: %s; deleting it, it is fitted again in this run", path, problem)
        path.unlink(missing_ok=True)
        return
    error = DamagedFileError(path, problem, overwrite_hint(FORMAT) + " (the maps on disk were made with it)")
    if not overwrite:
        raise error
    writer.clear(str(error))


def get_classifier(directory: Path, header: ArtifactHeader, encoder: ImageEncoder, dataset: Dataset,
                   records: Sequence[Record], config: Config, staged: Sequence[EncodedFile]
                   ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(weight (C, c), bias (C,), attrs) from ``cam_classifier.h5``, fitting it first if absent."""
    path = directory / CLASSIFIER_FILE
    if not path.exists():
        try:
            features, labels = gather_pooled(encoder, dataset, records, staged, config=config)
        except (FileNotFoundError, ArtifactError):
            if not path.exists():
                raise
            features = None  # another part finished with the classifier written: use it
        if features is not None:
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


# ----------------------------------------------------------------------------- step 3: maps

class _ShardBuffer:
    """Accumulates per-image rows and writes a shard every ``shard_size`` images (whole
    batches: a batch is never split across shards); ``on_flush`` runs after each shard."""

    def __init__(self, writer: ShardedWriter, shard_size: int, dataset_attrs: dict[str, dict[str, Any]],
                 on_flush: Callable[[], None] | None = None,
                 compression: dict[str, str | None] | None = None):
        self.writer = writer
        self.compression = compression
        self.shard_size = shard_size
        self.dataset_attrs = dataset_attrs
        self.on_flush = on_flush
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
        self.writer.write_shard(self.ids, arrays, skipped=self.skipped, dataset_attrs=self.dataset_attrs,
                                compression=self.compression)
        self.ids, self.rows, self.skipped = [], {}, {}
        if self.on_flush is not None:
            self.on_flush()


class _StagingJanitor:
    """Deletes this part's staging files, in order, once every image of theirs is in a
    final shard (the shard is on disk first, so a kill in between loses nothing)."""

    def __init__(self, files: Sequence[EncodedFile], writer: ShardedWriter):
        self.files = sorted(files, key=lambda f: f.seq)
        self.writer = writer
        self._next = 0

    def sweep(self) -> None:
        done = self.writer.done_ids()
        while self._next < len(self.files):
            entry = self.files[self._next]
            if not (set(entry.ids) | set(entry.skipped)) <= done:
                break
            entry.path.unlink(missing_ok=True)
            self._next += 1


def _dataset_attrs(config: Config, encoder: ImageEncoder, method: str) -> dict[str, dict[str, Any]]:
    h, w = encoder.grid
    size = encoder.input_size
    return {
        "cam": {"grid": [h, w], "range": "[0, 1] min-max per image", "method": method},
        "pseudo_box": {"box_format": "x0y0x1y1", "size": [size, size], "threshold": config.box_threshold},
        "image_size": {"layout": "width,height"},
        "features": {"layout": "h,w,c", "input_size": size, "encoder": encoder.spec},
        "features_flip": {"layout": "h,w,c", "input_size": size, "flipped": "horizontal"},
    }


def _feature_compression(config: Config) -> dict[str, str | None]:
    """The HDF5 filter of the cached grids in the final shards (None = raw)."""
    filter_name = None if config.feature_compression == "none" else config.feature_compression
    return {"features": filter_name, "features_flip": filter_name}


def _map_rows(config: Config, encoder: ImageEncoder, maps: torch.Tensor, labels: np.ndarray,
              sizes: np.ndarray) -> dict[str, np.ndarray]:
    """The per-image rows of the final shards from float32 (B, h, w) maps."""
    grid_maps = maps.cpu().numpy()
    return {
        "label": labels.astype(np.int64),
        "image_size": sizes.astype(np.int32),
        "cam": grid_maps.astype(np.float16),
        "pseudo_box": cam_ops.pseudo_boxes_of_grid_maps(grid_maps, encoder.input_size, config.box_threshold),
    }


def staged_map_rows(config: Config, encoder: ImageEncoder, path: Path, rows: Sequence[int], ids: Sequence[str],
                    labels: np.ndarray, sizes: np.ndarray, weight: torch.Tensor,
                    scoring: _DiagnosticScoring) -> dict[str, np.ndarray]:
    """The final shard's rows (:func:`_map_rows`) of the staged images ``rows`` of one staging
    file (``ids``, ``labels``, ``sizes``: theirs), made ``CAM_CHUNK`` images at a time from
    grids read into one reused buffer; each chunk goes to the diagnostic as soon as it is
    made, so that its workers start on the file's first images."""
    labels_t = torch.as_tensor(labels, device=encoder.device)
    parts: list[dict[str, np.ndarray]] = []
    for start, grid in read_encoded_chunks(path, "features", rows, CAM_CHUNK):
        end = start + len(grid)
        maps = cam_from_grid(torch.from_numpy(grid).to(encoder.device), weight, labels_t[start:end])
        part = _map_rows(config, encoder, maps, labels[start:end], sizes[start:end])
        scoring.add(ids[start:end], part)
        parts.append(part)
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _maps_from_staged(config: Config, encoder: ImageEncoder, files: Sequence[EncodedFile],
                      pending: set[str], writer: ShardedWriter, *, method: str, weight: np.ndarray,
                      has_features: bool, has_flip: bool, scoring: _DiagnosticScoring) -> None:
    """Step 3 without the encoder: CAMs from the staged grids, final shards, staging cleanup.

    When the shards cache the grids, a staging file whose images are all pending becomes the
    grid file of its own shard (moved, not copied: the grids are written once) and the shard
    holds the maps and links to the grids.  Otherwise (grids not cached, or a staging file
    partly done by an older layout) the rows are copied into shards of ``shard_size``.
    """
    janitor = _StagingJanitor(files, writer)
    attrs = _dataset_attrs(config, encoder, method)
    buffer = _ShardBuffer(writer, config.shard_size, attrs, on_flush=janitor.sweep,
                          compression=_feature_compression(config))
    weight_t = torch.as_tensor(weight, device=encoder.device)
    grids = ["features"] + (["features_flip"] if has_flip else [])
    done = 0
    for entry in progress(sorted(files, key=lambda f: f.seq), desc="pseudo-labels: maps", unit="batch"):
        rows = [row for row, image_id in enumerate(entry.ids) if image_id in pending]
        skipped = {k: v for k, v in entry.skipped.items() if k in pending}
        whole = len(rows) == len(entry.ids) and len(skipped) == len(entry.skipped)
        promote = has_features and whole and set(grids) <= set(entry.contents) and (
            has_flip or "features_flip" not in entry.contents)
        copied = grids if has_features and not promote else []
        arrays: dict[str, np.ndarray] = {}
        if rows:
            staged = read_encoded(entry.path, ["label", "image_size", *copied])
            if len(rows) < len(entry.ids):
                staged = {k: v[rows] for k, v in staged.items()}
            arrays = staged_map_rows(config, encoder, entry.path, rows, [entry.ids[row] for row in rows],
                                     staged["label"], staged["image_size"], weight_t, scoring)
            for name in copied:
                arrays[name] = staged[name]
        if promote:
            buffer.flush()  # shards stay in staging order
            grid_file = promote_to_grid_file(entry.path, writer.shard_dir, writer.next_shard_name)
            writer.write_shard(entry.ids, arrays, skipped=skipped, dataset_attrs=attrs,
                               links={name: grid_file for name in grids})
        else:
            buffer.add([entry.ids[row] for row in rows], arrays, skipped)
        done += len(rows) + len(skipped)
        if AFTER_BATCH_HOOK is not None:
            AFTER_BATCH_HOOK(done)
    buffer.flush()
    janitor.sweep()


def compute_maps(encoder: ImageEncoder, pixels: torch.Tensor, labels: torch.Tensor, *, method: str,
                 weight: torch.Tensor, clip_es, want_grid: bool, want_flip: bool, forward_batch: int = 0,
                 originals: Sequence[np.ndarray] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Two-pass fallback, one batch of uint8 (B, S, S, 3) ``pixels``: (maps float32 (B, h, w)
    in [0, 1], grid or None, flipped grid or None).  Grid and flipped grid come from the same
    forwards of ``[images; flipped]`` (:func:`encode_batch`); CLIP-ES adds its own forward
    with gradients (on ``originals``, the images at their own sizes, for its resolution
    ``image``)."""
    grid = flip_grid = None
    if method == "cam" or want_grid:
        _, grid, flip_grid = encode_batch(encoder, pixels, with_flip=want_flip, forward_batch=forward_batch)
    if method == "cam":
        maps = cam_from_grid(grid, weight, labels)
    else:
        maps = clip_es.grid_maps(pixels, labels, originals).to(labels.device)
    return maps, grid if want_grid else None, flip_grid


def run(config: Config, *, workdir: Path, overwrite: bool = False) -> Path:
    """Compute the pseudo-labels into ``<workdir>/pseudo_labels/``; return the manifest path
    (or, for a process whose part is done while others are still running, the directory)."""
    from tedloc.data.source import DatasetSource

    config.validate()
    directory = Path(workdir) / STAGE_DIR
    dataset = DatasetSource.of(config).open(config.split)
    log.info("pseudo-labels: class names of %s from %s", config.dataset, dataset.class_names_source or "the dataset")
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

    # The classifier cannot be redone by resuming: the maps on disk were made with it.
    writer = ShardedWriter(directory, header, num_shards=num_shards, shard_index=shard_index,
                           supported_versions=SUPPORTED_VERSIONS, precious=(CLASSIFIER_FILE,))
    with writer:
        if writer.open(overwrite=overwrite):
            remove_encoded(directory)  # left by a kill between the manifest and the cleanup
            log.info("pseudo-labels: %s is up to date (hash %s); nothing to do", directory, header.identity)
            return writer.manifest_path
        check_classifier(directory, writer, overwrite=overwrite)
        if encoder is None:
            encoder = build_image_encoder(config.encoder, input_size=config.input_size or None, device=device)
        if encoder.device.type == "cpu" and config.cpu_keep_freed_memory:
            keep_freed_memory()
        has_features, has_flip = resolve_cache(config, len(records), encoder)
        part_size = sum(1 for i in all_ids if shard_of(i, num_shards) == shard_index)
        stage_grid, stage_flip = resolve_staging(config, method, part_size, encoder,
                                                 has_features=has_features, has_flip=has_flip)
        pending = writer.pending(all_ids)
        pending_set = set(pending)
        log.info("pseudo-labels (%s, %s, grid %s, c=%d, %s): %d of %d images to do in part %d/%d",
                 method, encoder.spec, encoder.grid, encoder.feature_dim,
                 "one encoder pass" if stage_grid else "two encoder passes", len(pending), len(all_ids),
                 shard_index, num_shards)

        recover_orphan_grid_files(directory, writer.shard_dir, shard_index, num_shards)
        # Staging files: this part's that still serve (right contents, images not in a shard
        # yet) are reused; the rest of this part's are spent.  Other parts' serve the fit.
        wanted = staged_contents(stage_grid, stage_flip)
        own: list[EncodedFile] = []
        others: list[EncodedFile] = []
        for entry in scan_encoded(directory, header.identity, overwrite=overwrite, part=shard_index,
                                  num_parts=num_shards):
            if (entry.part, entry.num_parts) != (shard_index, num_shards):
                others.append(entry)
            elif wanted <= set(entry.contents) and pending_set & (set(entry.ids) | set(entry.skipped)):
                own.append(entry)
            else:
                log.info("deleting the spent staging file %s", entry.path)
                entry.path.unlink(missing_ok=True)
        staged_ids = {i for entry in own for i in (*entry.ids, *entry.skipped)}
        to_encode = [r for r in records if r.image_id in pending_set and r.image_id not in staged_ids]
        # The two-pass fallback stages pooled vectors for the fit only: not needed once it exists.
        if to_encode and (stage_grid or not (directory / CLASSIFIER_FILE).exists()):
            first_seq = max((entry.seq for entry in own), default=-1) + 1
            own += _encode(config, encoder, dataset, to_encode, directory, header, part=shard_index,
                           num_parts=num_shards, first_seq=first_seq, stage_grid=stage_grid,
                           stage_flip=stage_flip, dataset_attrs=_dataset_attrs(config, encoder, method))
        weight, bias, clf_attrs = get_classifier(directory, header, encoder, dataset, records, config,
                                                 staged=own + others)
        # One process scores its maps for the diagnostic as it makes them (in worker
        # processes, beside the maps); with several, the last to finish scores them all.
        with _DiagnosticScoring(config, records, while_mapping=num_shards == 1) as scoring:
            if pending and stage_grid:
                # Small ops (CAMs of 16 images) beside the diagnostic's worker processes: one
                # thread each, or every op waits for a preempted thread (CAMs of 640 Lite0
                # images took 0.9 s with two threads on 2 cores).
                with torch_threads(1) if encoder.device.type == "cpu" else contextlib.nullcontext():
                    _maps_from_staged(config, encoder, own, pending_set, writer, method=method, weight=weight,
                                      has_features=has_features, has_flip=has_flip, scoring=scoring)
            elif pending:
                _compute(config, encoder, dataset, [r for r in records if r.image_id in pending_set],
                         writer, method=method, weight=weight, has_features=has_features, has_flip=has_flip,
                         staged=own, scoring=scoring)
            return _finish(config, writer, dataset, records, encoder, method=method,
                           has_features=has_features, has_flip=has_flip, clf_attrs=clf_attrs, scoring=scoring)


def _compute(config: Config, encoder: ImageEncoder, dataset: Dataset, records: list[Record],
             writer: ShardedWriter, *, method: str, weight: np.ndarray, has_features: bool,
             has_flip: bool, staged: Sequence[EncodedFile], scoring: _DiagnosticScoring) -> None:
    """Step 3 of the two-pass fallback: decode and encode ``records`` again for their maps."""
    clip_es = None
    if method == "clip-es":
        from tedloc.pipeline.clip_es import ClipES

        clip_es = ClipES.from_config(encoder, dataset.class_names, config)
    by_id = {r.image_id: r for r in records}
    janitor = _StagingJanitor(staged, writer)
    buffer = _ShardBuffer(writer, config.shard_size, _dataset_attrs(config, encoder, method),
                          on_flush=janitor.sweep, compression=_feature_compression(config))
    weight_t = torch.as_tensor(weight, device=encoder.device)
    loader = image_loader(config, encoder, dataset, records)
    done = 0
    for batch in progress(loader, desc="pseudo-labels: maps", unit="batch"):
        if batch.bad:
            log.warning("skipping %d unreadable image(s): %s", len(batch.bad), "; ".join(batch.bad.values()))
        arrays: dict[str, np.ndarray] = {}
        if len(batch):
            labels = torch.as_tensor(batch.labels, device=encoder.device)
            # CLIP-ES at each image's own size decodes it again (the loader resized it)
            originals = ([dataset.load_image(by_id[i]) for i in batch.ids]
                         if clip_es is not None and clip_es.resolution == "image" else None)
            maps, grid, flip_grid = compute_maps(encoder, batch.pixels, labels, method=method,
                                                 weight=weight_t, clip_es=clip_es,
                                                 want_grid=has_features, want_flip=has_flip,
                                                 forward_batch=resolve_forward_batch(config, encoder),
                                                 originals=originals)
            arrays = _map_rows(config, encoder, maps, batch.labels, batch.sizes)
            scoring.add(batch.ids, arrays)
            if grid is not None:
                arrays["features"] = grid.to(torch.float16).cpu().numpy()
            if flip_grid is not None:
                arrays["features_flip"] = flip_grid.to(torch.float16).cpu().numpy()
        buffer.add(batch.ids, arrays, batch.bad)
        done += len(batch) + len(batch.bad)
        if AFTER_BATCH_HOOK is not None:
            AFTER_BATCH_HOOK(done)
    buffer.flush()
    janitor.sweep()


# ----------------------------------------------------------------------------- finish

class _DiagnosticScoring:
    """The diagnostic (MaxBoxAccV2 of the maps against the split's GT boxes; never used to
    make the pseudo-labels) over an evenly spaced sample of at most ``diagnostic_images``
    of the split's images with boxes, in split order.

    With ``while_mapping`` the maps are scored as they are made (:meth:`add`, in worker
    processes beside the stage's own work); :meth:`value` scores the sample's images not
    scored yet (made by an earlier run, or another process) from the shards.  The value is
    the same either way: the counts of hits add up over images.
    """

    def __init__(self, config: Config, records: Sequence[Record], *, while_mapping: bool):
        from tedloc.pipeline.metrics import threshold_grid

        self.by_id = {r.image_id: r for r in records}
        with_boxes = [r.image_id for r in records if len(r.boxes)] if config.diagnostic else []
        self.sample = diagnostic_sample(with_boxes, config.diagnostic_images)
        self._sampled = set(self.sample)
        self.while_mapping = while_mapping
        self.scorer = BoxDiagnostic(threshold_grid(0.01),
                                    workers=config.diagnostic_workers or os.cpu_count() or 1)

    def add(self, ids: Sequence[str], arrays: dict[str, np.ndarray]) -> None:
        """Score the sampled images among N fresh map rows (``cam``, ``image_size``)."""
        if not self.while_mapping:
            return
        rows = [k for k, image_id in enumerate(ids) if image_id in self._sampled]
        if rows:
            self.scorer.add([ids[k] for k in rows], arrays["cam"][rows],
                            [self.by_id[ids[k]].boxes for k in rows], arrays["image_size"][rows])

    def value(self, reader: ShardedReader) -> dict[str, Any] | None:
        """The manifest's ``diagnostic`` entry once every image is in ``reader``; None
        when the split has no GT boxes (or the diagnostic is off)."""
        if not self.sample:
            return None
        present = set(reader.ids)
        ids = [i for i in self.sample if i in present]  # unreadable images have no map
        rest = [i for i in ids if i not in self.scorer.scored]
        if rest:
            self.scorer.add(rest, reader.read_many("cam", rest), [self.by_id[i].boxes for i in rest],
                            reader.read_many("image_size", rest))
        value = self.scorer.value()
        if value is None:
            return None
        with_boxes = sum(1 for i in reader.ids if i in self.by_id and len(self.by_id[i].boxes))
        log.info("diagnostic (GT boxes, not used for training): pseudo-label MaxBoxAccV2 = %.2f "
                 "on %d of %d images with boxes", value, len(ids), with_boxes)
        return {"maxboxacc_v2": round(value, 2), "num_images": len(ids), "num_images_with_boxes": with_boxes,
                "note": "diagnostic only: the pseudo-label maps against the split's GT boxes; "
                        "GT is never used to make or train on pseudo-labels"}

    def __enter__(self) -> _DiagnosticScoring:
        return self

    def __exit__(self, *exc) -> None:
        self.scorer.close()


def _finish(config: Config, writer: ShardedWriter, dataset: Dataset, records: Sequence[Record],
            encoder: ImageEncoder, *, method: str, has_features: bool, has_flip: bool,
            clf_attrs: dict, scoring: _DiagnosticScoring) -> Path:
    all_ids = [r.image_id for r in records]
    diagnostic: dict[str, Any] | None = None
    with ShardedReader(writer.directory, FORMAT, supported_versions=SUPPORTED_VERSIONS,
                       allow_partial=True) as reader:
        complete = set(all_ids) <= set(reader.ids) | set(reader.skipped)
        if complete:
            diagnostic = scoring.value(reader)
    if not complete:
        log.info("pseudo-labels: this part is done; the manifest is written by the last part to finish")
        return writer.directory
    holdout = float(clf_attrs.get("holdout_accuracy", -1.0))
    extra = {
        "encoder": absolute_encoder_spec(encoder.spec),  # train, evaluate and predict rebuild it
        "encoder_fingerprint": encoder.fingerprint,
        "input_size": encoder.input_size,
        "grid": list(encoder.grid),
        "feature_dim": encoder.feature_dim,
        "fine_dim": encoder.fine_dim,  # a finer stage packed into the grid (tedloc.pipeline.fine_grid)
        "method": method,
        "dataset": writer.header.config["dataset"],  # absolute: later stages read it from anywhere
        "split": config.split,
        "class_names": list(dataset.class_names),
        "class_names_source": dataset.class_names_source,
        "box_threshold": config.box_threshold,
        "has_features": has_features,
        "has_flip_features": has_flip,
        "classifier_accuracy": None if holdout < 0 else round(holdout, 4),
        "classifier_train_accuracy": round(float(clf_attrs.get("train_accuracy", 0.0)), 4),
        "diagnostic": diagnostic,
    }
    path = writer.finish(all_ids, extra=extra, also=[CLASSIFIER_FILE])
    if path is None:
        return writer.directory
    remove_encoded(writer.directory)  # after the manifest: a kill before this loses nothing
    return path
