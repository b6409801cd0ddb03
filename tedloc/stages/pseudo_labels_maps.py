"""Pseudo-labels, step 3: the maps and the final shards.

From staged grids (:func:`maps_from_staged`, no encoder): the CAM of the GT class
(:func:`~tedloc.pipeline.grid_cams.cam_from_grid`), min–max to [0, 1]; the pseudo box from
the map upsampled to S×S (as the evaluation upsamples) at ``box_threshold``; one final shard
per staging file.  When the shards cache the grids the staging file itself becomes the
shard's grid file (moved into ``shards/``; the shard links to its grids), so the grids are
written to disk once; otherwise the staging file is deleted once the shard holding its
images is on disk.

Two-pass fallback (:func:`maps_two_pass`): the images are decoded and encoded again
(forwards of ``[images; flipped]`` when flipped grids are cached, plus CLIP-ES's own).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tedloc.artifacts.io_strategy import IOStrategy
from tedloc.artifacts.staging import (
    EncodedFile,
    promote_to_grid_file,
    read_encoded,
    read_encoded_chunks,
)
from tedloc.artifacts.store import ShardedWriter
from tedloc.configs.pseudo_labels import Config
from tedloc.data.records import Dataset, Record
from tedloc.pipeline import cam as cam_ops
from tedloc.pipeline.devices import torch_threads
from tedloc.pipeline.forwards import encode_batch
from tedloc.pipeline.grid_cams import CAM_CHUNK, cam_from_grid
from tedloc.pipeline.image_encoders import ImageEncoder
from tedloc.pipeline.progress import progress
from tedloc.stages.pseudo_labels_diagnostic import DiagnosticScoring
from tedloc.stages.pseudo_labels_plan import (
    Plan,
    Progress,
    dataset_attrs,
    feature_compression,
    image_loader,
)

log = logging.getLogger(__name__)

def maps_from_staged(config: Config, encoder: ImageEncoder, files: Sequence[EncodedFile], pending: set[str],
                     writer: ShardedWriter, *, plan: Plan, weight: np.ndarray, io: IOStrategy,
                     scoring: DiagnosticScoring, on_progress: Progress | None = None) -> None:
    """Step 3 from this part's staging files ``files``: maps of the ``pending`` images, final
    shards, staging cleanup.

    A staging file whose images are all pending becomes the grid file of its own shard when
    the shards cache the grids (and ``io.link_grid_files``).  Otherwise (grids not cached, or
    a staging file partly done by an older layout) its rows are copied into shards of
    ``shard_size``.
    """
    attrs = dataset_attrs(config, encoder, plan.method)
    janitor = _StagingJanitor(files, writer)
    buffer = _ShardBuffer(writer, config.shard_size, attrs, on_flush=janitor.sweep,
                          compression=feature_compression(config))
    weight_t = torch.as_tensor(weight, device=encoder.device)
    grids = ["features"] + (["features_flip"] if plan.has_flip else [])
    done = 0
    # Small ops (CAMs of 16 images) beside the diagnostic's worker processes: one thread, or
    # every op waits for a preempted thread (CAMs of 640 Lite0 images took 0.9 s with two
    # threads on 2 cores).
    with torch_threads(1) if encoder.device.type == "cpu" else contextlib.nullcontext():
        for entry in progress(sorted(files, key=lambda f: f.seq), desc="pseudo-labels: maps", unit="batch"):
            rows = [row for row, image_id in enumerate(entry.ids) if image_id in pending]
            skipped = {k: v for k, v in entry.skipped.items() if k in pending}
            whole = len(rows) == len(entry.ids) and len(skipped) == len(entry.skipped)
            promote = io.link_grid_files and plan.has_features and whole and set(grids) <= set(entry.contents) and (
                plan.has_flip or "features_flip" not in entry.contents)
            copied = grids if plan.has_features and not promote else []
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
            if on_progress is not None:
                on_progress("maps", done)
    buffer.flush()
    janitor.sweep()


def staged_map_rows(config: Config, encoder: ImageEncoder, path: Path, rows: Sequence[int], ids: Sequence[str],
                    labels: np.ndarray, sizes: np.ndarray, weight: torch.Tensor, scoring: DiagnosticScoring
                    ) -> dict[str, np.ndarray]:
    """The final shard's rows (:func:`map_rows`) of the staged images ``rows`` of one staging
    file (``ids``, ``labels``, ``sizes``: theirs), made ``CAM_CHUNK`` images at a time from
    grids read into one reused buffer; each chunk goes to the diagnostic as soon as it is
    made, so that its workers start on the file's first images."""
    labels_t = torch.as_tensor(labels, device=encoder.device)
    parts: list[dict[str, np.ndarray]] = []
    for start, grid in read_encoded_chunks(path, "features", rows, CAM_CHUNK):
        end = start + len(grid)
        maps = cam_from_grid(torch.from_numpy(grid).to(encoder.device), weight, labels_t[start:end])
        part = map_rows(config, encoder, maps, labels[start:end], sizes[start:end])
        scoring.add(ids[start:end], part)
        parts.append(part)
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def maps_two_pass(config: Config, encoder: ImageEncoder, dataset: Dataset, records: Sequence[Record],
                  writer: ShardedWriter, *, plan: Plan, weight: np.ndarray, staged: Sequence[EncodedFile],
                  scoring: DiagnosticScoring, on_progress: Progress | None = None) -> None:
    """Step 3 of the two-pass fallback: decode and encode ``records`` again for their maps."""
    clip_es = None
    if plan.method == "clip-es":
        from tedloc.pipeline.clip_es import ClipES

        clip_es = ClipES.from_config(encoder, dataset.class_names, config)
    by_id = {r.image_id: r for r in records}
    janitor = _StagingJanitor(staged, writer)
    buffer = _ShardBuffer(writer, config.shard_size, dataset_attrs(config, encoder, plan.method),
                          on_flush=janitor.sweep, compression=feature_compression(config))
    weight_t = torch.as_tensor(weight, device=encoder.device)
    done = 0
    for batch in progress(image_loader(config, encoder, dataset, records), desc="pseudo-labels: maps",
                          unit="batch"):
        if batch.bad:
            log.warning("skipping %d unreadable image(s): %s", len(batch.bad), "; ".join(batch.bad.values()))
        arrays: dict[str, np.ndarray] = {}
        if len(batch):
            labels = torch.as_tensor(batch.labels, device=encoder.device)
            # CLIP-ES at each image's own size decodes it again (the loader resized it)
            originals = ([dataset.load_image(by_id[i]) for i in batch.ids]
                         if clip_es is not None and clip_es.resolution == "image" else None)
            maps, grid, flip_grid = compute_maps(encoder, batch.pixels, labels, method=plan.method,
                                                 weight=weight_t, clip_es=clip_es, want_grid=plan.has_features,
                                                 want_flip=plan.has_flip, forward_batch=plan.forward_batch,
                                                 originals=originals)
            arrays = map_rows(config, encoder, maps, batch.labels, batch.sizes)
            scoring.add(batch.ids, arrays)
            if grid is not None:
                arrays["features"] = grid.to(torch.float16).cpu().numpy()
            if flip_grid is not None:
                arrays["features_flip"] = flip_grid.to(torch.float16).cpu().numpy()
        buffer.add(batch.ids, arrays, batch.bad)
        done += len(batch) + len(batch.bad)
        if on_progress is not None:
            on_progress("maps", done)
    buffer.flush()
    janitor.sweep()


def compute_maps(encoder: ImageEncoder, pixels: torch.Tensor, labels: torch.Tensor, *, method: str,
                 weight: torch.Tensor, clip_es, want_grid: bool, want_flip: bool, forward_batch: int = 0,
                 originals: Sequence[np.ndarray] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Two-pass fallback, one batch of uint8 (B, S, S, 3) ``pixels``: (maps float32 (B, h, w)
    in [0, 1], grid or None, flipped grid or None).  Grid and flipped grid come from the same
    forwards of ``[images; flipped]`` (:func:`~tedloc.pipeline.forwards.encode_batch`);
    CLIP-ES adds its own forward with gradients (on ``originals``, the images at their own
    sizes, for its resolution ``image``)."""
    grid = flip_grid = None
    if method == "cam" or want_grid:
        _, grid, flip_grid = encode_batch(encoder, pixels, with_flip=want_flip, forward_batch=forward_batch)
    if method == "cam":
        maps = cam_from_grid(grid, weight, labels)
    else:
        maps = clip_es.grid_maps(pixels, labels, originals).to(labels.device)
    return maps, grid if want_grid else None, flip_grid


def map_rows(config: Config, encoder: ImageEncoder, maps: torch.Tensor, labels: np.ndarray,
             sizes: np.ndarray) -> dict[str, np.ndarray]:
    """The per-image rows of the final shards from float32 (B, h, w) maps: ``label``,
    ``image_size``, ``cam`` float16 (B, h, w), ``pseudo_box`` float32 (B, 4)."""
    grid_maps = maps.cpu().numpy()
    return {
        "label": labels.astype(np.int64),
        "image_size": sizes.astype(np.int32),
        "cam": grid_maps.astype(np.float16),
        "pseudo_box": cam_ops.pseudo_boxes_of_grid_maps(grid_maps, encoder.input_size, config.box_threshold),
    }


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
