"""The stage lock: one holder at a time, even among processes racing for a dead holder's lock."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tedloc.artifacts.lock import StageLock
from tedloc.errors import WorkdirLockedError

ROOT = Path(__file__).resolve().parent.parent
RACERS = 8
ROUNDS = 5

RACER = r"""
    import sys, time
    from tedloc.artifacts import lock as lock_module
    from tedloc.artifacts.lock import StageLock
    from tedloc.errors import WorkdirLockedError

    alive = lock_module._pid_alive

    def slow_alive(pid):
        # Slow on purpose: widens the moment between finding the holder gone and taking the
        # lock over, where a lock that checks and then deletes lets a second process in.
        time.sleep(0.05)
        return alive(pid)

    lock_module._pid_alive = slow_alive
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        lock = StageLock(sys.argv[1])
        try:
            lock.acquire()
            print("won", flush=True)
        except WorkdirLockedError as exc:
            print("refused", exc, flush=True)
        sys.stdin.readline()  # "release": every racer has answered
        lock.release()
        print("done", flush=True)
"""


def _python(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, **kwargs)


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    return dead.pid


def _tell(procs: list[subprocess.Popen], line: str) -> list[str]:
    """Send ``line`` to every process (all at once: they wait on it), then read one answer of each."""
    for proc in procs:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    return [proc.stdout.readline().strip() for proc in procs]


def test_many_processes_racing_for_a_dead_holders_lock_one_wins(tmp_path):
    path = tmp_path / "stage" / ".lock"
    path.parent.mkdir()
    racers = [_python("-c", textwrap.dedent(RACER), str(path)) for _ in range(RACERS)]
    try:
        assert [proc.stdout.readline().strip() for proc in racers] == ["ready"] * RACERS
        for round_ in range(ROUNDS):
            path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "since": 0}))
            answers = _tell(racers, "go")
            winners = [proc.pid for proc, answer in zip(racers, answers, strict=True) if answer == "won"]
            assert len(winners) == 1, f"round {round_}: {answers}"
            refused = [a for a in answers if a != "won"]
            assert all(a.startswith(f"refused {path}: in use by ") for a in refused), refused
            assert json.loads(path.read_text())["pid"] == winners[0]
            assert _tell(racers, "release") == ["done"] * RACERS
            assert not path.exists()
    finally:
        for proc in racers:
            proc.kill()
            proc.wait()


HOLDER = r"""
    import multiprocessing, os, sys, threading
    from tedloc.artifacts.lock import StageLock

    def child():
        os.write(1, b"child\n")  # one write: parent and child share the pipe
        threading.Event().wait()

    if __name__ == "__main__":
        StageLock(sys.argv[1]).acquire()
        worker = multiprocessing.get_context("fork").Process(target=child)
        worker.start()
        os.write(1, f"{worker.pid}\n".encode())
        threading.Event().wait()
"""


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="needs fork")
def test_forked_child_does_not_keep_a_killed_holders_lock(tmp_path):
    path = tmp_path / ".lock"
    holder = _python("-c", textwrap.dedent(HOLDER), str(path))
    child = None
    try:
        lines = sorted(holder.stdout.readline().strip() for _ in range(2))  # in either order
        assert lines[1] == "child"  # forked: its at-fork step has run
        child = int(lines[0])
        with pytest.raises(WorkdirLockedError, match=f"in use by pid {holder.pid}"):
            StageLock(path).acquire()
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the child still runs, holding a copy of every file of its parent
        with StageLock(path) as lock:
            assert lock.held
    finally:
        holder.kill()
        holder.wait()
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def test_lock_of_another_host_is_left_alone(tmp_path):
    path = tmp_path / ".lock"
    path.write_text(json.dumps({"pid": 1234, "host": "elsewhere.invalid", "since": 0}))
    with pytest.raises(WorkdirLockedError, match="in use by pid 1234 on elsewhere.invalid.*delete this file"):
        StageLock(path).acquire()
    assert json.loads(path.read_text())["host"] == "elsewhere.invalid"
