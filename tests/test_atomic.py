"""Crash-safe writes: the two ways atomic_h5 builds a file, and the background committer."""

import errno
from pathlib import Path

import h5py
import numpy as np
import pytest

from tedloc.artifacts import atomic
from tedloc.artifacts.atomic import BackgroundCommitter, atomic_h5, has_room_for

GRIDS = np.arange(4 * 3 * 3 * 5, dtype=np.float16).reshape(4, 3, 3, 5)


def _write(path: Path, **kwargs) -> None:
    with atomic_h5(path, **kwargs) as handle:
        handle.create_dataset("features", data=GRIDS, chunks=(1, 3, 3, 5))


def _plain_writes(monkeypatch) -> list[str]:
    """Record the files atomic_h5 writes with plain Python I/O (its in-memory path)."""
    written: list[str] = []

    def recording_open(file, mode="r", *args, **kwargs):
        if "w" in mode:
            written.append(str(file))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", recording_open, raising=False)
    return written


def test_small_files_are_built_in_memory(tmp_path, monkeypatch):
    written = _plain_writes(monkeypatch)
    _write(tmp_path / "small.h5", size_hint=GRIDS.nbytes)
    assert len(written) == 1  # the file image, written by Python
    with h5py.File(tmp_path / "small.h5", "r") as handle:
        np.testing.assert_array_equal(handle["features"][()], GRIDS)


def test_large_files_with_room_are_written_by_hdf5(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "DIRECT_WRITE_MIN_BYTES", GRIDS.nbytes)
    written = _plain_writes(monkeypatch)
    _write(tmp_path / "large.h5", size_hint=GRIDS.nbytes)
    assert written == []  # HDF5 wrote the temporary file itself
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.h5"]
    with h5py.File(tmp_path / "large.h5", "r") as handle:
        np.testing.assert_array_equal(handle["features"][()], GRIDS)
        assert handle["features"].chunks == (1, 3, 3, 5)


def test_a_large_file_in_a_folder_not_made_yet_is_written_by_hdf5_too(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "DIRECT_WRITE_MIN_BYTES", GRIDS.nbytes)
    written = _plain_writes(monkeypatch)
    _write(tmp_path / "encoded" / "large.h5", size_hint=GRIDS.nbytes)
    assert written == [] and (tmp_path / "encoded" / "large.h5").is_file()


def test_large_files_on_a_disk_short_of_room_are_built_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "DIRECT_WRITE_MIN_BYTES", GRIDS.nbytes)
    monkeypatch.setattr(atomic, "has_room_for", lambda directory, size: False)
    written = _plain_writes(monkeypatch)
    _write(tmp_path / "large.h5", size_hint=GRIDS.nbytes)
    assert len(written) == 1


def test_has_room_for_counts_twice_the_size_and_the_headroom(tmp_path, monkeypatch):
    free = 10 << 30

    class Usage:
        pass

    usage = Usage()
    usage.free = free
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage)
    headroom = atomic.DIRECT_WRITE_HEADROOM_BYTES
    assert has_room_for(tmp_path, (free - headroom) // 2)
    assert not has_room_for(tmp_path, (free - headroom) // 2 + 1)
    monkeypatch.undo()
    assert not has_room_for(tmp_path / "does-not-exist", 1)  # cannot be told: the safe answer


def test_background_commits_appear_after_wait_in_order(tmp_path):
    with BackgroundCommitter() as committer:
        for k in range(3):
            _write(tmp_path / f"f{k}.h5", committer=committer)
        committer.wait()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.h5", "f1.h5", "f2.h5"]
    for k in range(3):
        with h5py.File(tmp_path / f"f{k}.h5", "r") as handle:
            np.testing.assert_array_equal(handle["features"][()], GRIDS)


def test_a_failed_background_commit_names_the_file_and_leaves_no_tmp(tmp_path, monkeypatch):
    def full_disk_fsync(path):
        raise OSError(errno.ENOSPC, "fsync failed")

    monkeypatch.setattr(atomic, "_fsync_file", full_disk_fsync)
    target = tmp_path / "grids.h5"
    with pytest.raises(OSError) as info:
        with BackgroundCommitter() as committer:
            _write(target, committer=committer)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert "No space left on device" in str(info.value) and str(target) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_an_exception_in_flight_is_not_replaced_by_a_commit_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_fsync_file",
                        lambda path: (_ for _ in ()).throw(OSError(errno.EIO, "io")))
    with pytest.raises(KeyboardInterrupt):
        with BackgroundCommitter() as committer:
            _write(tmp_path / "a.h5", committer=committer)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
