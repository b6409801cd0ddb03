"""The artifact store: crash leftovers, hash mismatches, one writer, stale locks, versions."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tedloc.artifacts.lock import StageLock
from tedloc.artifacts.store import ArtifactHeader, ShardedReader, ShardedWriter
from tedloc.errors import ArtifactError, ConfigMismatchError, WorkdirLockedError

FORMAT = "tedloc.test"
IDS = ["a", "b", "c", "d"]


def header(config_hash: str = "h1", upstream: str = "") -> ArtifactHeader:
    return ArtifactHeader(format=FORMAT, format_version=1, config={"k": config_hash},
                          config_hash=config_hash, upstream_hash=upstream)


def values(ids):
    return {"x": np.array([ord(i) for i in ids], np.int64), "m": np.ones((len(ids), 3, 3), np.float16)}


def run_all(stage: Path, head: ArtifactHeader, *, overwrite: bool = False) -> list[str]:
    """Run a fake stage to completion; return the ids it computed."""
    computed = []
    with ShardedWriter(stage, head) as writer:
        if writer.open(overwrite=overwrite):
            return computed
        pending = writer.pending(IDS)
        for start in range(0, len(pending), 2):
            chunk = pending[start:start + 2]
            writer.write_shard(chunk, values(chunk))
            computed += chunk
        assert writer.finish(IDS) is not None
    return computed


def python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True, **kwargs)


def test_tmp_shard_left_by_crash_is_ignored_and_redone(tmp_path):
    stage = tmp_path / "stage"
    # A process that finishes one shard, then dies (os._exit: no cleanup) in the middle of
    # writing the next one, as a SIGKILL would.
    proc = python(f"""
        import os, numpy as np
        from tedloc.artifacts import atomic
        from tedloc.artifacts.store import ArtifactHeader, ShardedWriter
        head = ArtifactHeader(format={FORMAT!r}, format_version=1, config={{"k": "h1"}}, config_hash="h1")
        w = ShardedWriter({str(stage)!r}, head)
        w.open()
        w.write_shard(["a", "b"], {{"x": np.array([97, 98]), "m": np.ones((2, 3, 3), np.float16)}})

        class DiesHalfway:  # the file atomic_h5 writes the HDF5 bytes to
            def __init__(self, path, mode):
                self.handle = open(path, mode)
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                pass
            def write(self, data):
                self.handle.write(bytes(data)[: len(data) // 2])
                self.handle.flush()
                os._exit(9)

        atomic.open = DiesHalfway
        w.write_shard(["c", "d"], {{"x": np.array([99, 100]), "m": np.ones((2, 3, 3), np.float16)}})
    """)
    assert proc.wait(timeout=60) == 9
    leftovers = list((stage / "shards").glob("*.tmp"))
    assert len(leftovers) == 1
    assert not (stage / "manifest.json").exists()

    # Next run: the .tmp is dropped, the finished shard kept, only c and d computed.
    assert run_all(stage, header()) == ["c", "d"]
    assert not list(stage.rglob("*.tmp"))
    with ShardedReader(stage, FORMAT) as reader:
        assert sorted(reader.ids) == IDS
        assert reader.read("x", "d") == ord("d")
    # And a finished stage with the same hash is reused, nothing recomputed.
    assert run_all(stage, header()) == []


def test_mismatching_hash_refused_then_overwritten(tmp_path):
    stage = tmp_path / "stage"
    run_all(stage, header("aaaa"))
    with pytest.raises(ConfigMismatchError) as info:
        run_all(stage, header("bbbb"))
    message = str(info.value)
    assert "aaaa/" in message and "bbbb/" in message and "--overwrite" in message
    assert run_all(stage, header("bbbb"), overwrite=True) == IDS
    with ShardedReader(stage, FORMAT) as reader:
        assert reader.manifest["config_hash"] == "bbbb"


def test_mismatching_hash_of_unfinished_shards_refused(tmp_path):
    stage = tmp_path / "stage"
    with ShardedWriter(stage, header("old")) as writer:
        writer.open()
        writer.write_shard(["a"], values(["a"]))  # killed before finishing: no manifest
    with pytest.raises(ConfigMismatchError, match="old/.*new/"):
        run_all(stage, header("new"))
    assert run_all(stage, header("new"), overwrite=True) == IDS


def test_second_writer_refused_while_lock_held(tmp_path):
    stage = tmp_path / "stage"
    holder = python(f"""
        import sys
        from tedloc.artifacts.lock import StageLock
        lock = StageLock({str(stage / '.lock')!r}).acquire()
        print("held", flush=True)
        sys.stdin.read()  # hold until the test closes stdin
        lock.release()
    """)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLockedError) as info:
            run_all(stage, header())
        assert f"pid {holder.pid}" in str(info.value)
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    assert not (stage / ".lock").exists()
    assert run_all(stage, header()) == IDS  # free again once released


def test_stale_lock_of_dead_process_is_taken_over(tmp_path, caplog):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    lock_path = tmp_path / "stage" / ".lock"
    lock_path.parent.mkdir()
    lock_path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": 0}))
    with caplog.at_level("WARNING"):
        assert run_all(tmp_path / "stage", header()) == IDS
    assert "stale lock" in caplog.text
    # A lock file cut off mid-write (kill during acquire) is stale too.
    lock_path.write_text('{"pid": ')
    with StageLock(lock_path) as lock:
        assert lock.held and json.loads(lock_path.read_text())["pid"] == os.getpid()


def test_unknown_format_version_refused_by_reader(tmp_path):
    stage = tmp_path / "stage"
    run_all(stage, header())
    manifest_path = stage / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format_version 99 is not supported"):
        ShardedReader(stage, FORMAT)
    with pytest.raises(ArtifactError, match="format is 'tedloc.test', expected 'tedloc.other'"):
        ShardedReader(stage, "tedloc.other", allow_partial=True)


def test_unknown_shard_version_refused(tmp_path):
    import h5py

    stage = tmp_path / "stage"
    run_all(stage, header())
    shard = sorted((stage / "shards").glob("*.h5"))[0]
    with h5py.File(shard, "r+") as handle:
        handle.attrs["format_version"] = 7
    with pytest.raises(ArtifactError, match=f"{shard.name}.*format_version 7"):
        ShardedReader(stage, FORMAT)


def test_skipped_ids_recorded_not_redone(tmp_path):
    stage = tmp_path / "stage"
    with ShardedWriter(stage, header()) as writer:
        writer.open()
        writer.write_shard(["a", "b", "c"], values(["a", "b", "c"]), skipped={"d": "corrupt JPEG"})
        assert writer.pending(IDS) == []
        writer.finish(IDS)
    with ShardedReader(stage, FORMAT) as reader:
        assert reader.skipped == {"d": "corrupt JPEG"}
        assert reader.manifest["num_images"] == 3


def test_tmp_files_of_live_writers_are_left_alone(tmp_path):
    """Processes sharing a stage directory must not delete each other's writes in progress."""
    import subprocess
    import sys

    from tedloc.artifacts.atomic import remove_stale_tmp

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f"part001of002-00000.h5.{sleeper.pid}.tmp"
        dead = tmp_path / "part000of002-00000.h5.999999999.tmp"
        unnamed = tmp_path / "leftover.tmp"
        for path in (live, dead, unnamed):
            path.write_bytes(b"x")
        removed = remove_stale_tmp(tmp_path)
        assert sorted(removed) == sorted([dead, unnamed])
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_tmp(tmp_path) == [live]
