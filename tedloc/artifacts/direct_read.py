"""Rows of an HDF5 dataset read straight from the disk (``O_DIRECT``), past the page cache.

The pseudo-labels stage writes each image's feature grids to a staging file once and
reads them back once, after the whole split is encoded: by then they are on disk, not in
the page cache (see :class:`tedloc.artifacts.atomic.BackgroundCommitter`).  Read through
the page cache, every MB comes back into pages the kernel must first allocate, then is
copied again into the reader's array; read directly, the disk writes into a buffer the
process already holds.  Measured on a 2-core VM, 140 MB of Lite0 grids: 230-300 ms of CPU
through h5py, 32-46 ms direct (the wait on the disk, ~200 ms, is not CPU: a reader thread
hides it behind the CAM of the previous chunk).

Only for what HDF5 stores as plain bytes: a chunked dataset of one row per chunk without
filters (the staging files' grids when ``feature_compression`` is ``none``), on a file
system that accepts ``O_DIRECT`` (not tmpfs, for one).  :func:`open_direct_rows` returns
None otherwise, and the caller reads through h5py.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

#: Alignment of the file offsets, lengths and memory of direct reads: a multiple of every
#: logical block size in use (512 or 4096 bytes).
ALIGN = 4096


def row_chunk_offsets(dataset: h5py.Dataset, rows: Sequence[int]) -> np.ndarray | None:
    """int64 (len(rows),) byte offsets in the file of the chunks holding ``rows`` of
    ``dataset``, when each row is one unfiltered, allocated chunk; None otherwise."""
    row_shape = dataset.shape[1:]
    if dataset.chunks is None or tuple(dataset.chunks) != (1, *row_shape):
        return None
    if dataset.id.get_create_plist().get_nfilters():
        return None
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dataset.dtype.itemsize
    zeros = (0,) * len(row_shape)
    offsets = np.empty(len(rows), np.int64)
    for k, row in enumerate(rows):
        info = dataset.id.get_chunk_info_by_coord((int(row), *zeros))
        if info.byte_offset is None or info.size != row_bytes:
            return None
        offsets[k] = info.byte_offset
    return offsets


class DirectRows:
    """Reads rows of one dataset, given their chunks' byte offsets, into caller's arrays.

    Args:
        path: the HDF5 file.
        offsets: int64 (N,) byte offset of each row's chunk (:func:`row_chunk_offsets`).
        row_bytes: bytes per row.
        max_rows: most rows one :meth:`read` is asked for.

    Raises OSError when the file cannot be opened for direct reads (the caller falls back).
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path, offsets: np.ndarray, row_bytes: int, max_rows: int):
        self.path = Path(path)
        self.offsets = np.asarray(offsets, np.int64)
        self.row_bytes = row_bytes
        self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
        # Page-aligned (mmap), reused by every read; a run of rows spans at most two
        # partial blocks beyond its bytes.
        self._bounce = mmap.mmap(-1, max_rows * row_bytes + 2 * ALIGN)
        self._view = memoryview(self._bounce)

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        """Rows ``start:stop`` (positions in ``offsets``) into the C-contiguous ``out``
        (at least that many rows of ``row_bytes``), run of adjacent chunks by run."""
        flat = out.reshape(-1).view(np.uint8)
        k = start
        while k < stop:
            end = k + 1  # the run of chunks that follow each other in the file
            while end < stop and self.offsets[end] == self.offsets[end - 1] + self.row_bytes:
                end += 1
            first = int(self.offsets[k])
            last = first + (end - k) * self.row_bytes
            aligned = first - first % ALIGN
            length = -(-(last - aligned) // ALIGN) * ALIGN
            self._read_exactly(aligned, length, last - aligned)
            skip = first - aligned
            flat[(k - start) * self.row_bytes:(end - start) * self.row_bytes] = np.frombuffer(
                self._bounce, np.uint8, count=last - first, offset=skip)
            k = end

    def _read_exactly(self, offset: int, length: int, needed: int) -> None:
        """Fill the bounce buffer from ``offset`` (``length`` aligned bytes asked; at least
        ``needed`` must come: the aligned end may lie past the end of the file)."""
        got = 0
        while got < needed:
            n = os.preadv(self._fd, [self._view[got:length]], offset + got)
            if n <= 0:
                raise OSError(f"{self.path}: file ends {needed - got} bytes short of a staged row")
            got += n
            if got % ALIGN:  # a short read can only end at the end of the file
                break
        if got < needed:
            raise OSError(f"{self.path}: file ends {needed - got} bytes short of a staged row")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._view.release()
        self._bounce.close()

    def __enter__(self) -> DirectRows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_direct_rows(path: str | Path, dataset: h5py.Dataset, rows: Sequence[int], max_rows: int
                     ) -> DirectRows | None:
    """A :class:`DirectRows` for ``rows`` of ``dataset`` (an open dataset of the file at
    ``path``), or None where direct reads do not apply (layout, platform, file system)."""
    if not hasattr(os, "O_DIRECT"):
        return None
    offsets = row_chunk_offsets(dataset, rows)
    if offsets is None:
        return None
    row_bytes = int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize
    try:
        return DirectRows(path, offsets, row_bytes, max_rows)
    except OSError:
        return None
