"""Crash-safe file writes: write ``NAME.tmp``, flush, fsync, then ``os.replace`` into place.

A reader therefore sees either the old file or the complete new one, never a half-written
file, whatever moment a process is killed at.  Left-over ``*.tmp`` files are garbage by
construction and are removed by the next run of the stage that owns them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py

TMP_SUFFIX = ".tmp"


def tmp_path_for(path: Path) -> Path:
    """The temporary sibling a final ``path`` is written through (pid-tagged, so that two
    processes writing the same final name never share a temporary file)."""
    return path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not all filesystems allow opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit_tmp(tmp: Path, final: Path) -> None:
    """fsync ``tmp`` and atomically move it to ``final``."""
    _fsync_file(tmp)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched.  An OS
    error that names no file (a full disk while writing, HDF5's several-line messages) is
    raised again as ``OSError(errno, strerror, path)``, so that it can be reported in one
    line naming the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        commit_tmp(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        cleaned = _clean_os_error(exc, path)
        if cleaned is exc:
            raise
        raise cleaned from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """Open a new HDF5 file for writing that appears at ``path`` only once closed.

    The file is built in memory (HDF5's ``core`` driver, nothing on disk) and its bytes are
    then written with plain Python I/O.  HDF5 itself never writes to the disk because on
    a full disk it fails inside object destructors, where the error can only be printed,
    and its retries at exit crash the interpreter; a plain write raises a clean ``OSError``
    (ENOSPC) that is reported in one line.  Cost: the file's size in memory while written
    (shards are written whole anyway).
    """
    with atomic_path(path) as tmp:
        handle = h5py.File(str(tmp), "w", driver="core", backing_store=False)
        try:
            yield handle
            handle.flush()
            image = handle.id.get_file_image()
        finally:
            handle.close()
        with open(tmp, "wb") as out:
            out.write(image)


def _clean_os_error(exc: OSError, path: Path) -> OSError:
    """``exc`` with a one-line message naming ``path`` when it carries an errno, else ``exc``."""
    if exc.filename is not None:  # names its own file already (raised by other code in the block)
        return exc
    code = exc.errno
    if code is None:  # h5py sometimes only states the errno inside its message
        match = re.search(r"errno = (\d+)", str(exc))
        code = int(match.group(1)) if match else None
    if code is None:
        return exc
    # OSError(errno, ...) builds the matching subclass (PermissionError for EACCES, ...).
    return OSError(code, os.strerror(code), str(path))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _writer_pid(tmp: Path) -> int | None:
    """The pid in a ``<name>.<pid>.tmp`` file name (see :func:`tmp_path_for`), if any."""
    stem = tmp.name[: -len(TMP_SUFFIX)]
    pid = stem.rsplit(".", 1)[-1]
    return int(pid) if pid.isdigit() else None


def remove_stale_tmp(directory: str | Path) -> list[Path]:
    """Delete the ``*.tmp`` files below ``directory`` left by writers that are gone; return them.

    A temporary file of another live process (processes splitting one stage with
    ``--num-shards`` share the directory) is left alone: it is that process's write in
    progress, not debris.  Pids are only meaningful on this host, which is where a
    shared-directory multi-process run writes from anyway.
    """
    from tedloc.artifacts.lock import _pid_alive

    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for tmp in sorted(directory.rglob(f"*{TMP_SUFFIX}")):
            pid = _writer_pid(tmp)
            if pid is not None and pid != os.getpid() and _pid_alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed
