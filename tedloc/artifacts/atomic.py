"""Crash-safe file writes: write ``NAME.tmp``, flush, fsync, then ``os.replace`` into place.

A reader therefore sees either the old file or the complete new one, never a half-written
file, whatever moment a process is killed at.  Left-over ``*.tmp`` files are garbage by
construction and are removed by the next run of the stage that owns them.
"""

from __future__ import annotations

import contextlib
import json
import os
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

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        commit_tmp(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """Open a new HDF5 file for writing that appears at ``path`` only once closed."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            yield handle


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def remove_stale_tmp(directory: str | Path) -> list[Path]:
    """Delete every ``*.tmp`` below ``directory`` (left by a killed writer); return them."""
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for tmp in sorted(directory.rglob(f"*{TMP_SUFFIX}")):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed
