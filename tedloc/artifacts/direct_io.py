"""Rows of an HDF5 dataset written to and read from the disk directly (``O_DIRECT``),
past the page cache.

The pseudo-labels stage writes each image's feature grids to a staging file once (1.1 MB
per Lite0 image with the flipped grid) and reads the unflipped half back once, after the
whole split is encoded.  Through the page cache every MB is copied once more and lands in
pages the kernel must allocate; where memory is given to the machine lazily (a VM) new
pages cost far more than the copy.  Direct I/O moves the bytes between the disk and
buffers the process already holds.  Measured on a 2-core VM: 140 MB of grids read back in
230-300 ms of CPU through h5py, 32-46 ms direct; 350 MB written in 0.1-1.0 s of CPU
buffered (recycled or new pages), 0.02-0.03 s direct.  The waits on the disk are not CPU:
the stage reads in a thread one chunk ahead and writes in the staging writer's thread.

Only for what HDF5 stores as plain bytes: a chunked dataset of one row per chunk without
filters (the staging grids when ``feature_compression`` is ``none``), on a file system
that accepts ``O_DIRECT`` (not tmpfs, for one).  Elsewhere :func:`open_direct_rows` and
:func:`open_direct_writer` return None and the callers go through h5py.

Writing bytes into chunks that HDF5 allocated, beside HDF5, is safe because only whole
4 KiB blocks inside a row's own chunk are written directly (the chunk's first bytes when it
does not start on a block, and its last partial block, go through an ordinary write), the
dataset is created with its chunks allocated on resize and never filled by HDF5
(:func:`direct_dataset_options`), and HDF5 is never asked to write those rows itself.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

#: Alignment of the file offsets, lengths and memory of direct reads: a multiple of every
#: logical block size in use (512 or 4096 bytes).
ALIGN = 4096


def row_bytes_of(row_shape: Sequence[int], dtype) -> int:
    """Bytes of one C-contiguous row of ``row_shape`` and ``dtype``."""
    return int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize


@functools.cache
def _chunk_address_shift(userblock: int) -> int | None:
    """What to add to the chunk address HDF5 reports for its byte offset in a file with a
    ``userblock``-byte user block: 0 where HDF5 reports offsets in the file (HDF5 2.0),
    ``userblock`` where it reports them from the end of the user block, as releases before
    it may; None when neither holds (no direct I/O then).  Found once per process on a
    small probe file, because a wrong offset would write rows over other data."""
    if not userblock:
        return 0
    row = np.arange(ALIGN // 4, dtype=np.int32)
    with tempfile.TemporaryDirectory(prefix="tedloc-probe-") as folder:
        path = Path(folder) / "probe.h5"
        with h5py.File(path, "w", userblock_size=userblock) as handle:
            address = handle.create_dataset("row", data=row[None], chunks=(1, len(row))
                                            ).id.get_chunk_info_by_coord((0, 0)).byte_offset
        data = path.read_bytes()
    for shift in (0, userblock):
        if data[address + shift:address + shift + row.nbytes] == row.tobytes():
            return shift
    return None


def row_chunk_offsets(dataset: h5py.Dataset, rows: Sequence[int]) -> np.ndarray | None:
    """int64 (len(rows),) byte offsets in the file of the chunks holding ``rows`` of
    ``dataset``, when each row is one unfiltered, allocated chunk; None otherwise."""
    row_shape = dataset.shape[1:]
    if dataset.chunks is None or tuple(dataset.chunks) != (1, *row_shape):
        return None
    if dataset.id.get_create_plist().get_nfilters():
        return None
    shift = _chunk_address_shift(dataset.file.id.get_create_plist().get_userblock())
    if shift is None:
        return None
    row_bytes = row_bytes_of(row_shape, dataset.dtype)
    zeros = (0,) * len(row_shape)
    offsets = np.empty(len(rows), np.int64)
    for k, row in enumerate(rows):
        info = dataset.id.get_chunk_info_by_coord((int(row), *zeros))
        if info.byte_offset is None or info.size != row_bytes:
            return None
        offsets[k] = info.byte_offset + shift
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
    row_bytes = row_bytes_of(dataset.shape[1:], dataset.dtype)
    try:
        return DirectRows(path, offsets, row_bytes, max_rows)
    except OSError:
        return None


def direct_dataset_options() -> h5py.h5p.PropDCID:
    """Creation properties of a dataset whose rows are written by :class:`DirectRowWriter`:
    chunks allocated as soon as the dataset is created or grown (so their file offsets are
    known before any row is written) and never filled with a fill value by HDF5."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def aligned_rows(num_rows: int, row_shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialized (num_rows, *row_shape) array whose every row starts on a 4 KiB
    boundary (rows C-contiguous, row stride rounded up to :data:`ALIGN`), so that a row
    can be the memory of a direct write."""
    dtype = np.dtype(dtype)
    row_bytes = row_bytes_of(row_shape, dtype)
    stride = -(-row_bytes // ALIGN) * ALIGN
    backing = np.frombuffer(mmap.mmap(-1, max(1, num_rows) * stride), np.uint8)  # page-aligned
    rows = np.lib.stride_tricks.as_strided(backing, (num_rows, row_bytes), (stride, 1))
    return rows.view(dtype).reshape(num_rows, *row_shape)


class DirectRowWriter:
    """Writes rows into their allocated chunks of a file being built by HDF5.

    A row whose chunk starts on a block and whose memory starts on a page is written by
    one direct write of its whole blocks and one ordinary write of the rest; any other row
    (or every row, once the file system has refused a direct write) by ordinary writes.
    The ordinary writes go through the page cache and reach the disk with the file's fsync.

    Raises OSError when the file cannot be opened.  Use as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY)
        try:
            self._direct_fd = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
        except OSError:
            self._direct_fd = -1
        #: Rows written directly so far (tests, benchmarks).
        self.direct_rows = 0

    def write(self, offsets: np.ndarray, rows: np.ndarray) -> None:
        """Row i of ``rows`` (each row C-contiguous) to the chunk at byte ``offsets[i]``."""
        for offset, row in zip(np.asarray(offsets, np.int64), rows, strict=True):
            data = memoryview(row.reshape(-1).view(np.uint8))
            body = len(data) - len(data) % ALIGN
            offset = int(offset)
            if (self._direct_fd >= 0 and body and offset % ALIGN == 0 and row.ctypes.data % ALIGN == 0
                    and self._write_direct(data[:body], offset)):
                self._write_all(self._fd, data[body:], offset + body)
                self.direct_rows += 1
            else:
                self._write_all(self._fd, data, offset)

    def _write_direct(self, data: memoryview, offset: int) -> bool:
        """Direct write of whole blocks; False (and no more direct writes) if refused."""
        try:
            self._write_all(self._direct_fd, data, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            os.close(self._direct_fd)
            self._direct_fd = -1
            return False
        return True

    @staticmethod
    def _write_all(fd: int, data: memoryview, offset: int) -> None:
        while len(data):
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n

    def close(self) -> None:
        for fd in (self._fd, self._direct_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._direct_fd = -1

    def __enter__(self) -> DirectRowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_direct_writer(handle: h5py.File) -> DirectRowWriter | None:
    """A :class:`DirectRowWriter` on the file of ``handle`` (open for writing), or None
    where it does not apply (a file built in memory, a platform without ``O_DIRECT``)."""
    if not hasattr(os, "O_DIRECT") or handle.driver != "sec2":
        return None
    try:
        return DirectRowWriter(handle.filename)
    except OSError:
        return None
