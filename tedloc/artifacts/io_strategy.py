"""Disk and memory strategies: how the pseudo-labels stage's feature grids move between the
encoder, memory and the disk, and what memory CPU forwards keep.  The stages call this
interface (:class:`IOStrategy`); none of them opens a file ``O_DIRECT`` or calls ``mallopt``.

Every strategy changes speed only, never a value written: with all of them off the grids
go through h5py and the page cache and malloc keeps its defaults, and the artifacts hold
the same values.  When each applies:

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
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tedloc.artifacts.atomic import BackgroundCommitter, atomic_h5

#: A buffer pair: grids and flipped grids (None without flips) of one batch.
GridBuffers = tuple[np.ndarray, np.ndarray | None]


@dataclasses.dataclass(frozen=True)
class IOStrategy:
    """Which disk and memory strategies are on (see the module docstring); all on by default."""

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

    def grid_buffers(self, rows: int, row_shape: tuple[int, ...], *, flip: bool) -> GridBuffers:
        """A float16 buffer pair of ``rows`` grid rows, reused batch after batch (a fresh
        array per batch would cost more in page faults than filling it)."""
        return (np.empty((rows, *row_shape), np.float16),
                np.empty((rows, *row_shape), np.float16) if flip else None)

    def committer(self) -> BackgroundCommitter:
        """What puts finished staging files in place (fsync, rename; see the docstring)."""
        return BackgroundCommitter()

    def open_grid_file(self, path: Path, *, size_hint: int, committer: BackgroundCommitter | None,
                       compression: str | None) -> contextlib.AbstractContextManager[h5py.File]:
        """:func:`~tedloc.artifacts.atomic.atomic_h5` for a file of grids."""
        return atomic_h5(path, size_hint=size_hint, committer=committer)

    def grid_writer(self, handle: h5py.File, compression: str | None) -> GridRowWriter:
        """Appends rows to the grid datasets of ``handle`` (a file open for writing)."""
        return GridRowWriter(handle, compression)

    def read_rows(self, path: Path, name: str, rows: Sequence[int], chunk: int
                  ) -> Iterator[tuple[int, np.ndarray]]:
        """Rows ``rows`` (ascending) of the array ``name`` of the HDF5 file ``path``, ``chunk``
        rows at a time: yields (position of the chunk's first row in ``rows``, array (k, ...)).

        The yielded array is a view of one reused buffer, valid until the next chunk is asked
        for: a staging file's grids are hundreds of MB, and a fresh array of that size costs
        more in page faults than the read itself.  Raises OSError / KeyError as h5py does.
        """
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return
        with h5py.File(path, "r") as handle:
            dataset = handle[name]
            # Consecutive rows are read straight into the buffer; others through h5py's selection.
            contiguous = int(rows[-1] - rows[0]) + 1 == len(rows)
            buffer = np.empty((min(chunk, len(rows)), *dataset.shape[1:]), dataset.dtype)
            for start in range(0, len(rows), chunk):
                part = rows[start:start + chunk]
                if contiguous:
                    dataset.read_direct(buffer, np.s_[int(part[0]):int(part[-1]) + 1], np.s_[:len(part)])
                else:
                    buffer[:len(part)] = dataset[part]
                yield start, buffer[:len(part)]


class GridRowWriter:
    """Grows one dataset per grid name of a file being written, one image per chunk, and
    writes the rows through h5py."""

    def __init__(self, handle: h5py.File, compression: str | None):
        self.handle = handle
        self.compression = compression

    def append(self, name: str, array: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        """Rows (B, ...) at the end of dataset ``name`` (created with ``attrs`` if new)."""
        dset = self.handle.get(name)
        if dset is None:
            row = array.shape[1:]
            dset = self.handle.create_dataset(name, shape=(0, *row), maxshape=(None, *row), dtype=array.dtype,
                                              chunks=(1, *row), compression=self.compression)
            for key, value in (attrs or {}).items():
                dset.attrs[key] = value
        start = len(dset)
        dset.resize(start + len(array), axis=0)
        if len(array):
            dset[start:] = array


#: The strategies the stages use (benchmarks switch them one at a time).
DEFAULT = IOStrategy()
