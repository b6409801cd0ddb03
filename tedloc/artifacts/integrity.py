"""Checksums of artifact files: a file cut short or with bytes changed in place is found
before it is reused, and named.

Each kind of file carries the cheapest checksum that covers every byte it holds:

* **HDF5 files** (every ``*.h5`` tedloc writes, through
  :func:`tedloc.artifacts.atomic.atomic_h5`) start with a 4 KiB user block, the region HDF5
  reserves for its users and skips (h5py, ``h5ls`` and ``h5dump`` read the file unchanged).
  It holds one line, ``tedloc-checksum 1 {"crc32": "…", "size": N}``: the file's size and
  the CRC-32 of every byte after the block; the rest of the block is zeros.  It is written
  once the file is complete and before the file is renamed into place, so it travels with
  the file (a staging file that becomes a shard's grid file keeps it).
* **Checkpoints** (torch's zip format) hold a CRC-32 of each record, which ``torch.load``
  never checks: :func:`checkpoint_problem` does, before anything is unpickled.
* **Every other file** of a finished stage (``train_log.csv``, ``results.json``, pictures,
  score maps): its size and CRC-32 in the manifest's ``checksums``.

A manifest's ``checksums`` lists every file of the finished stage (relative path ->
``{"size": N}``, plus ``"crc32"`` for files of the third kind), so that a missing file is
found too.  CRC-32 catches every change of up to 32 consecutive bits and misses a random
change with probability 2⁻³²: it finds damage, it is no defence against tampering.  zlib's
CRC-32 runs at about 3.6 GB/s on one core here; files of 16 MiB or more are read past the
page cache (``O_DIRECT``: their pages would be new to the page cache; ``benchmarks/checksums.py``).
HDF5 files written before tedloc recorded checksums (no user block) are read as before,
unverified.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tedloc.errors import DamagedFileError

#: Bytes reserved at the start of every HDF5 file for its checksum line (an HDF5 user block:
#: a power of two of at least 512).
USERBLOCK = 4096
_MAGIC = b"tedloc-checksum 1 "
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Bytes per read while checksumming.
_READ_BLOCK = 8 << 20
#: Files at least this large are read with O_DIRECT (their pages would be new to the page
#: cache, and on a VM new pages cost more than the read).
_DIRECT_MIN_BYTES = 16 << 20
_ALIGN = 4096


# ----------------------------------------------------------------------------- reading

def _open_direct(path: Path) -> int | None:
    if not hasattr(os, "O_DIRECT"):
        return None
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:  # a file system without direct I/O (tmpfs)
        return None


def _chunks(path: Path, start: int) -> Iterator[memoryview]:
    """The bytes of ``path`` from ``start`` (a multiple of 4 KiB), in reads of 8 MiB, each
    valid until the next is asked for."""
    size = os.path.getsize(path)
    fd = _open_direct(path) if size - start >= _DIRECT_MIN_BYTES else None
    direct = fd is not None
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
    buffer = mmap.mmap(-1, _READ_BLOCK)  # page-aligned, as direct reads need
    view = memoryview(buffer)
    try:
        offset = start
        while True:
            try:
                n = os.preadv(fd, [view], offset)
            except OSError:
                if not direct:
                    raise
                # The file system took the open but not the read: read it through the cache.
                os.close(fd)
                fd, direct = os.open(path, os.O_RDONLY), False
                continue
            if n <= 0:
                return
            piece = view[:n]
            try:
                yield piece
            finally:
                piece.release()  # so that the buffer can be closed
            offset += n
            if direct and n % _ALIGN:  # a short direct read ends at the end of the file
                return
    finally:
        os.close(fd)
        view.release()
        buffer.close()


def crc32_of_file(path: str | Path, start: int = 0) -> int:
    """CRC-32 of the bytes of ``path`` from byte ``start`` (0 or :data:`USERBLOCK`) on."""
    crc = 0
    for chunk in _chunks(Path(path), start):
        crc = zlib.crc32(chunk, crc)
    return crc


def _hex(crc: int) -> str:
    return f"{crc:08x}"


# ----------------------------------------------------------------------------- HDF5 files

def checksum_block(size: int, crc: int) -> bytes:
    """The user block of an HDF5 file of ``size`` bytes whose bytes after the block have
    CRC-32 ``crc``: one line, then zeros."""
    line = _MAGIC + json.dumps({"crc32": _hex(crc), "size": size}, sort_keys=True).encode() + b"\n"
    return line.ljust(USERBLOCK, b"\0")


def write_sealed_image(out, image: bytes) -> None:
    """Write an HDF5 file image built in memory (with a :data:`USERBLOCK` user block, which
    the image leaves out) to the binary file ``out``, its checksum block first."""
    out.write(checksum_block(USERBLOCK + len(image), zlib.crc32(image)))
    out.write(image)


def seal_file(path: str | Path) -> None:
    """Write the checksum block of an HDF5 file HDF5 has just written and closed (created
    with a :data:`USERBLOCK` user block, which HDF5 leaves unwritten)."""
    path = Path(path)
    size = os.path.getsize(path)
    crc = crc32_of_file(path, USERBLOCK)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, checksum_block(size, crc), 0)
    finally:
        os.close(fd)


def _h5_problem(path: Path) -> str | None:
    """What is wrong with an HDF5 file against its checksum block; None when intact or when
    it has no block (written before checksums: see :func:`has_checksum`)."""
    with open(path, "rb") as handle:
        head = handle.read(USERBLOCK)
        size = os.fstat(handle.fileno()).st_size
    if head.startswith(_HDF5_SIGNATURE):
        return None
    if not head.startswith(_MAGIC):
        if len(head) < len(_MAGIC):
            return f"damaged (truncated to {size} bytes)"
        return "damaged (its checksum block, the first bytes of the file, was overwritten)"
    line, _, padding = head.partition(b"\n")
    try:
        record = json.loads(line[len(_MAGIC):])
        want_size, want_crc = int(record["size"]), str(record["crc32"])
    except (ValueError, KeyError, TypeError):
        return "damaged (its checksum block, the first bytes of the file, was overwritten)"
    if padding.strip(b"\0"):
        return "damaged (bytes of its checksum block were overwritten)"
    problem = _size_problem(size, want_size)
    if problem is None and _hex(crc32_of_file(path, USERBLOCK)) != want_crc:
        problem = "damaged (CRC-32 mismatch: bytes changed after it was written)"
    return problem


def has_checksum(path: str | Path) -> bool:
    """Whether a file carries or can be given a checksum: False only for an HDF5 file
    written before tedloc recorded checksums (no user block)."""
    path = Path(path)
    if path.suffix != ".h5":
        return True
    with open(path, "rb") as handle:
        return not handle.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE


def _size_problem(size: int, want: int) -> str | None:
    if size < want:
        return f"damaged (truncated: {size} of {want} bytes)"
    if size > want:
        return f"damaged ({size} bytes, {want} written)"
    return None


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_problem(data: bytes) -> str | None:
    """What is wrong with the bytes of a checkpoint (torch's zip format); None when every
    record matches its CRC-32."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        reason = "not a complete zip archive: truncated?" if "not a zip file" in str(exc) else str(exc)
        return f"damaged checkpoint ({reason})"
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        return f"damaged checkpoint ({exc})"
    if bad is not None:
        return f"damaged checkpoint (CRC-32 mismatch in record {bad})"
    return None


# ----------------------------------------------------------------------------- any file

def carries_checksum(name: str | Path) -> bool:
    """Whether a file of this name carries its own checksum (HDF5 file, checkpoint) rather
    than one recorded in the manifest."""
    return Path(name).suffix in (".h5", ".pt")


def file_record(path: str | Path) -> dict[str, Any]:
    """A manifest's record of a finished file: ``{"size": N}``, plus ``"crc32"`` for a file
    that carries no checksum of its own."""
    path = Path(path)
    record: dict[str, Any] = {"size": path.stat().st_size}
    if not carries_checksum(path):
        record["crc32"] = _hex(crc32_of_file(path))
    return record


def file_problem(path: str | Path, record: dict[str, Any] | None = None) -> str | None:
    """What is wrong with ``path`` against its own checksum and the manifest's ``record``
    (:func:`file_record`; None or {} where there is none): ``"missing"``, ``"damaged (…)"``,
    or None when intact (or, for an HDF5 file of before checksums, when it exists)."""
    path = Path(path)
    record = record or {}
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if not path.is_file():
        return "missing (not a file)"
    try:
        if "size" in record:
            problem = _size_problem(size, int(record["size"]))
            if problem is not None:
                return problem
        if "crc32" in record:
            if _hex(crc32_of_file(path)) != record["crc32"]:
                return "damaged (CRC-32 mismatch: bytes changed after it was written)"
            return None
        if path.suffix == ".h5":
            return _h5_problem(path)
        if path.suffix == ".pt":
            return checkpoint_problem(path.read_bytes())
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None


def check_file(path: str | Path, record: dict[str, Any] | None = None, *, hint: str | None = None) -> None:
    """Raise :class:`DamagedFileError` (naming ``path``, with ``hint``) when
    :func:`file_problem` finds something wrong."""
    problem = file_problem(path, record)
    if problem is not None:
        raise DamagedFileError(path, problem, hint)
