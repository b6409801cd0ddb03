"""Disk and memory strategies: how the pseudo-labels stage's feature grids move between the
encoder, memory and the disk, and what memory CPU forwards keep.  The stages call this
interface (:class:`IOStrategy`); none of them opens a file ``O_DIRECT`` or calls ``mallopt``.

Every strategy changes speed only, never a value written: with all of them off the grids
go through h5py and the page cache and malloc keeps its defaults, and the artifacts hold
the same values.  When each applies:

* ``direct_io``: raw grids (``feature_compression`` none) of a staging file that HDF5 writes
  to disk (16 MiB or more with room on the disk, :func:`tedloc.artifacts.atomic.atomic_h5`),
  on a file system that takes ``O_DIRECT`` (not tmpfs).  Each grid row is rounded into a
  page-aligned buffer row and written into its chunk past the page cache, and the maps step
  reads the rows back the same way, a thread one chunk ahead
  (:mod:`tedloc.artifacts.direct_io`).  Anything else (compressed grids, files built in
  memory, a file system refusing it) goes through h5py, silently.
* ``drop_staged_pages``: every staging file, once fsynced: its pages leave the page cache,
  so the next files reuse them instead of the kernel allocating new ones (costly where a VM
  is given memory lazily); the file is read back once, from the disk.
* ``background_writes``: each staging file's grid writes and its close run in the writer's
  own thread while the encoder runs the next batch (one write in flight per file; the
  buffers come back through :class:`~tedloc.artifacts.buffer_pool.BufferPool`), and its
  fsync and rename in a committer thread.  Off: the encoder waits for every write.
* ``link_grid_files``: when the final shards cache the grids, a staging file whose images are
  all in one shard becomes that shard's grid file (renamed into ``shards/``; the shard links
  to its grids), so the grids are written to disk once.  Off: the maps step reads the grids
  back and writes them again into the shard.
* ``keep_freed_memory``: forwards on a CPU, with glibc (the stages' ``cpu_keep_freed_memory``
  field): freed blocks up to 32 MB stay in the process for the next forward
  (:mod:`tedloc.artifacts.cpu_memory`).  Process-wide and lasting.

What each was measured to buy is in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tedloc.artifacts.atomic import BackgroundCommitter, atomic_h5
from tedloc.artifacts.buffer_pool import BufferPool
from tedloc.artifacts.direct_io import (
    ALIGN,
    DirectRows,
    aligned_rows,
    direct_dataset_options,
    open_direct_rows,
    open_direct_writer,
    row_chunk_offsets,
)

#: A buffer pair: grids and flipped grids (None without flips) of one batch.
GridBuffers = tuple[np.ndarray, np.ndarray | None]


@dataclasses.dataclass(frozen=True)
class IOStrategy:
    """Which disk and memory strategies are on (see the module docstring); all on by default."""

    direct_io: bool = True
    drop_staged_pages: bool = True
    background_writes: bool = True
    link_grid_files: bool = True
    keep_freed_memory: bool = True

    def with_config(self, config: Any) -> IOStrategy:
        """This strategy with the switches a stage's config holds (``cpu_keep_freed_memory``)."""
        return dataclasses.replace(self, keep_freed_memory=bool(getattr(config, "cpu_keep_freed_memory", True)))

    def prepare_forwards(self, device: Any) -> bool:
        """Before forwards on ``device``: keep freed memory in the process where it applies
        (a CPU, glibc); returns whether that setting is in force."""
        if not self.keep_freed_memory or getattr(device, "type", str(device)) != "cpu":
            return False
        from tedloc.artifacts.cpu_memory import keep_freed_memory

        return keep_freed_memory()

    def grid_buffers(self, rows: int, row_shape: tuple[int, ...], *, flip: bool) -> BufferPool[GridBuffers]:
        """A pool of two float16 buffer pairs of ``rows`` grid rows (one being filled, one
        being written), rows on page boundaries when direct writes may take them."""
        def make(count: int) -> np.ndarray:
            if self.direct_io:
                return aligned_rows(count, row_shape, np.float16)
            return np.empty((count, *row_shape), np.float16)

        return BufferPool(lambda: (make(rows), make(rows) if flip else None), count=2)

    def committer(self) -> BackgroundCommitter:
        """What puts finished staging files in place (fsync, rename; see the docstring)."""
        return BackgroundCommitter(drop_cache=self.drop_staged_pages)

    def open_grid_file(self, path: Path, *, size_hint: int, committer: BackgroundCommitter | None,
                       compression: str | None) -> contextlib.AbstractContextManager[h5py.File]:
        """:func:`~tedloc.artifacts.atomic.atomic_h5` for a file of grids; with direct writes
        possible, its large objects (the grid chunks) start on 4 KiB boundaries."""
        align = ALIGN if self.direct_io and compression is None else 1
        return atomic_h5(path, size_hint=size_hint, committer=committer, align_large=align)

    def grid_writer(self, handle: h5py.File, compression: str | None) -> GridRowWriter:
        """Appends rows to the grid datasets of ``handle`` (a file open for writing)."""
        direct = open_direct_writer(handle) if self.direct_io and compression is None else None
        return GridRowWriter(handle, compression, direct)

    def read_rows(self, path: Path, name: str, rows: Sequence[int], chunk: int
                  ) -> Iterator[tuple[int, np.ndarray]]:
        """Rows ``rows`` (ascending) of the array ``name`` of the HDF5 file ``path``, ``chunk``
        rows at a time: yields (position of the chunk's first row in ``rows``, array (k, ...)).

        The yielded array is a view of a reused buffer, valid until the next chunk is asked
        for: a staging file's grids are hundreds of MB, and a fresh array of that size costs
        more in page faults than the read itself.  Raises OSError / KeyError as h5py does.
        """
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return
        with h5py.File(path, "r") as handle:
            dataset = handle[name]
            size = min(chunk, len(rows))
            direct = open_direct_rows(path, dataset, rows, size) if self.direct_io else None
            if direct is not None:
                with direct:
                    buffers = [np.empty((size, *dataset.shape[1:]), dataset.dtype) for _ in range(2)]
                    try:  # the first read tells whether the disk takes direct reads at all
                        direct.read(0, size, buffers[0])
                    except OSError:
                        direct = None
                    if direct is not None:
                        yield from _direct_chunks(direct, len(rows), size, buffers)
                        return
            yield from _h5py_chunks(dataset, rows, size)


class GridRowWriter:
    """Grows one dataset per grid name of a file being written, one image per chunk, and
    writes the rows: straight into their chunks where a direct writer is given (and the
    rows are plain, allocated chunks), else through h5py."""

    def __init__(self, handle: h5py.File, compression: str | None, direct):
        self.handle = handle
        self.compression = compression
        self.direct = direct  # a DirectRowWriter or None

    def append(self, name: str, array: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        """Rows (B, ...) at the end of dataset ``name`` (created with ``attrs`` if new)."""
        dset = self.handle.get(name)
        if dset is None:
            row = array.shape[1:]
            dset = self.handle.create_dataset(name, shape=(0, *row), maxshape=(None, *row), dtype=array.dtype,
                                              chunks=(1, *row), compression=self.compression,
                                              dcpl=direct_dataset_options() if self.direct else None)
            for key, value in (attrs or {}).items():
                dset.attrs[key] = value
        start = len(dset)
        dset.resize(start + len(array), axis=0)
        if not len(array):
            return
        offsets = row_chunk_offsets(dset, range(start, start + len(array))) if self.direct else None
        if offsets is not None:
            self.direct.write(offsets, array)
        else:
            dset[start:] = array

    def close(self) -> None:
        """Close the direct writer (its writes reach the disk with the file's fsync)."""
        if self.direct is not None:
            self.direct.close()
            self.direct = None


def _direct_chunks(direct: DirectRows, count: int, chunk: int, buffers: list[np.ndarray]
                   ) -> Iterator[tuple[int, np.ndarray]]:
    """:meth:`IOStrategy.read_rows` from direct reads, the first chunk already in
    ``buffers[0]``: while the caller works on chunk k (in one buffer), a thread reads
    chunk k + 1 into the other, so the wait on the disk hides behind the caller's work."""
    starts = list(range(0, count, chunk))

    def read(k: int) -> None:
        direct.read(starts[k], min(starts[k] + chunk, count), buffers[k % 2])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tedloc-read") as reader:
        for k, start in enumerate(starts):
            ahead = reader.submit(read, k + 1) if k + 1 < len(starts) else None
            yield start, buffers[k % 2][:min(chunk, count - start)]
            if ahead is not None:
                ahead.result()


def _h5py_chunks(dataset: h5py.Dataset, rows: np.ndarray, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """:meth:`IOStrategy.read_rows` through h5py, into one buffer."""
    # Consecutive rows are read straight into the buffer; others through h5py's selection.
    contiguous = int(rows[-1] - rows[0]) + 1 == len(rows)
    buffer = np.empty((chunk, *dataset.shape[1:]), dataset.dtype)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        if contiguous:
            dataset.read_direct(buffer, np.s_[int(part[0]):int(part[-1]) + 1], np.s_[:len(part)])
        else:
            buffer[:len(part)] = dataset[part]
        yield start, buffer[:len(part)]


#: The strategies the stages use (benchmarks switch them one at a time).
DEFAULT = IOStrategy()
