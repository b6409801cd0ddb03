"""Pseudo-labels, step 1: one pass of the frozen encoder over this part's pending images,
staged per ``shard_size`` images in ``<stage dir>/encoded/`` (:mod:`tedloc.artifacts.staging`).

Each batch: decode (:func:`~tedloc.stages.pseudo_labels_plan.image_loader`), run the encoder
on ``[k images; k flipped images]`` (:func:`~tedloc.pipeline.forwards.encode_batch`), round
the grids into one reused buffer pair, and write the rows into the staging file before the
next batch.  A full file is closed, then fsynced and renamed by the committer's thread.
A killed run resumes with the images not staged (:func:`staging_files`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tedloc.artifacts.atomic import BackgroundCommitter
from tedloc.artifacts.staging import (
    EncodedFile,
    encoded_path,
    recover_orphan_grid_files,
    scan_encoded,
)
from tedloc.artifacts.staging_writer import EncodedFileWriter
from tedloc.artifacts.store import ArtifactHeader, ShardedWriter
from tedloc.configs.pseudo_labels import Config
from tedloc.data.records import Dataset, Record
from tedloc.pipeline.forwards import encode_batch
from tedloc.pipeline.image_encoders import ImageEncoder
from tedloc.pipeline.image_loader import ImageBatch
from tedloc.pipeline.progress import progress
from tedloc.stages.pseudo_labels_plan import (
    STAGED_ALWAYS,
    Plan,
    Progress,
    dataset_attrs,
    feature_compression,
    image_loader,
)

log = logging.getLogger(__name__)

def staging_files(directory: Path, header: ArtifactHeader, writer: ShardedWriter, plan: Plan,
                  pending: set[str], *, overwrite: bool) -> tuple[list[EncodedFile], list[EncodedFile]]:
    """(this part's staging files that still serve, other parts' staging files).

    A grid file whose shard was never written is staged again first.  This part's files
    serve when they hold what the plan stages and images not in a shard yet; the rest of
    them are spent and deleted.  Other parts' files serve the classifier's fit.
    """
    recover_orphan_grid_files(directory, writer.shard_dir, plan.shard_index, plan.num_shards)
    wanted = plan.staged_contents()
    own: list[EncodedFile] = []
    others: list[EncodedFile] = []
    for entry in scan_encoded(directory, header.identity, overwrite=overwrite, part=plan.shard_index,
                              num_parts=plan.num_shards):
        if (entry.part, entry.num_parts) != (plan.shard_index, plan.num_shards):
            others.append(entry)
        elif wanted <= set(entry.contents) and pending & (set(entry.ids) | set(entry.skipped)):
            own.append(entry)
        else:
            log.info("deleting the spent staging file %s", entry.path)
            entry.path.unlink(missing_ok=True)
    return own, others


def encode(config: Config, encoder: ImageEncoder, dataset: Dataset, records: Sequence[Record], *,
           directory: Path, header: ArtifactHeader, plan: Plan, first_seq: int,
           on_progress: Progress | None = None) -> list[EncodedFile]:
    """Step 1 over ``records``: a staging file per ``shard_size`` images (whole batches),
    numbered from ``first_seq``; returns their entries, every file on disk."""
    h, w = encoder.grid
    grid_bytes = h * w * encoder.feature_dim * 2 * (int(plan.stage_grid) + int(plan.stage_flip))  # per image
    # One float16 pair reused batch after batch: fresh arrays per batch cost more in page
    # faults than filling them.
    rows = (min(config.batch_size, len(records)), h, w, encoder.feature_dim)
    pair = None
    if plan.stage_grid:
        pair = (np.empty(rows, np.float16), np.empty(rows, np.float16) if plan.stage_flip else None)
    loader = image_loader(config, encoder, dataset, records)
    with BackgroundCommitter() as committer:
        files = _StagingSeries(
            lambda seq: EncodedFileWriter(
                encoded_path(directory, plan.shard_index, plan.num_shards, seq), header, part=plan.shard_index,
                num_parts=plan.num_shards, seq=seq, grid_compression=feature_compression(config)["features"],
                expected_grid_bytes=grid_bytes * min(config.shard_size, len(records)),
                dataset_attrs=dataset_attrs(config, encoder, plan.method), committer=committer),
            shard_size=config.shard_size, first_seq=first_seq, on_progress=on_progress)
        try:
            for batch in progress(loader, desc="pseudo-labels: encode", unit="batch"):
                if batch.bad:
                    log.warning("skipping %d unreadable image(s): %s", len(batch.bad), "; ".join(batch.bad.values()))
                # The rows are written before the next batch refills the pair.
                files.append(batch, staged_arrays(encoder, batch, plan, pair))
            return files.close()
        except BaseException:
            files.abort()
            raise


def staged_arrays(encoder: ImageEncoder, batch: ImageBatch, plan: Plan,
                  pair: tuple[np.ndarray, np.ndarray | None] | None
                  ) -> dict[str, np.ndarray]:
    """What step 1 stages for one batch of B readable images: ``label``, ``image_size``,
    ``pooled`` float32 (B, c) and the plan's grids, float16 (B, h, w, c) views of ``pair``'s
    rows when a pair is given."""
    arrays = {"label": batch.labels.astype(np.int64), "image_size": batch.sizes.astype(np.int32)}
    if not len(batch):  # every image of the batch was unreadable: empty arrays of the right shapes
        h, w = encoder.grid
        arrays["pooled"] = np.zeros((0, encoder.feature_dim), np.float32)
        for name in plan.staged_contents() - set(STAGED_ALWAYS):
            arrays[name] = np.zeros((0, h, w, encoder.feature_dim), np.float16)
        return arrays
    grid_out, flip_out = pair if pair is not None else (None, None)
    pooled, grid, flip_grid = encode_batch(encoder, batch.pixels, with_flip=plan.stage_flip,
                                           forward_batch=plan.forward_batch, grid_out=grid_out, flip_out=flip_out)
    arrays["pooled"] = pooled.float().cpu().numpy()
    if plan.stage_grid:
        arrays["features"] = grid.numpy()
    if flip_grid is not None:
        arrays["features_flip"] = flip_grid.numpy()
    return arrays


class _StagingSeries:
    """This part's staging files in order: a new one (``open_file(seq)``) for every
    ``shard_size`` images, whole batches."""

    def __init__(self, open_file: Callable[[int], EncodedFileWriter], *, shard_size: int, first_seq: int,
                 on_progress: Progress | None):
        self.open_file = open_file
        self.shard_size = shard_size
        self.first_seq = first_seq
        self.on_progress = on_progress
        self.files: list[EncodedFile] = []
        self.current: EncodedFileWriter | None = None
        self.done = 0

    def append(self, batch: ImageBatch, arrays: dict[str, np.ndarray]) -> None:
        if self.current is None:
            self.current = self.open_file(self.first_seq + len(self.files))
        self.current.append(batch.ids, arrays, batch.bad)
        self.done += len(batch) + len(batch.bad)
        if self.current.num_images >= self.shard_size:
            self._close_current()

    def close(self) -> list[EncodedFile]:
        """Close the last file; the entries of every file (in place once the committer is done)."""
        if self.current is not None:
            self._close_current()
        return self.files

    def abort(self) -> None:
        """Discard the file being written."""
        if self.current is not None:
            self.current.abort()
            self.current = None

    def _close_current(self) -> None:
        current, self.current = self.current, None
        self.files.append(current.close())
        if self.on_progress is not None:
            self.on_progress("encode", self.done)
