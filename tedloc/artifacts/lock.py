"""One writer per stage directory: an ``flock`` on a lock file that names its holder.

The kernel keeps the lock for the process that took it and drops it when that process
ends, however it ends, so a killed run never blocks the next one, and no two processes can
both hold it: there is no "see that the holder is gone, then take over" step that two
processes could pass at once.  The file holds the holder's ``{"pid", "host", "since"}``
for messages; a file left by a killed run is simply locked again (and rewritten).
Sharded runs (``--num-shards``) lock per shard.

The lock belongs to an open file, which forked children share: a worker process forked
while the lock is held would keep it after its parent died.  Children therefore close
their copy at fork (``os.register_at_fork``), and the file is opened close-on-exec.
Release removes the file while still holding the lock; a process that locked the removed
file in that moment sees that the path no longer names it and tries again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from tedloc.errors import WorkdirLockedError

log = logging.getLogger(__name__)

#: Files that can be removed under a process between its open and its lock, one after the
#: other, before it gives up (each removal is a release by another process).
_ATTEMPTS = 100
#: Locks this process holds (closed in forked children).
_HELD: set[StageLock] = set()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        # No process has such an id; and os.kill(-1 or 0, ...) would signal a whole group.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StageLock:
    """Exclusive lock on ``path`` (a file such as ``<stage dir>/.lock``).

    Use as a context manager.  Raises :class:`WorkdirLockedError` when another process
    holds it (or another ``StageLock`` of this process: the lock is per open file), or when
    the file names a process on another host, whose liveness cannot be checked from here.
    ``acquire`` is re-entrant for the same object.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> StageLock:
        if self.held:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(_ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                locked = _try_lock(fd)
                if _names(self.path, fd):
                    if not locked:
                        raise self._locked_error(_read_owner(fd))
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # released and removed meanwhile: lock the file that is there now
        else:
            raise WorkdirLockedError(f"{self.path}: could not acquire the lock (taken and released "
                                     f"{_ATTEMPTS} times meanwhile)")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        previous = _read_owner(fd)
        if previous and previous.get("host") not in (None, me["host"]):
            os.close(fd)  # left as it is: that host's process may still run
            raise self._locked_error(previous)
        self._fd, self.held = fd, True
        _HELD.add(self)
        if previous and previous.get("pid") != me["pid"]:
            log.warning("taking over stale lock %s (pid %s is gone)", self.path, previous.get("pid"))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except OSError as exc:  # a full disk: leave no lock behind, name the file
            self.release()
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        return self

    def _locked_error(self, owner: dict | None) -> WorkdirLockedError:
        if not owner:
            return WorkdirLockedError(f"{self.path}: in use by another process that is starting; "
                                      "wait for it to finish")
        pid, host = owner.get("pid"), owner.get("host")
        if host == socket.gethostname():
            return WorkdirLockedError(f"{self.path}: in use by pid {pid} on {host}; wait for it to finish")
        return WorkdirLockedError(f"{self.path}: in use by pid {pid} on {host} (another host, whose "
                                  "processes cannot be checked from here); wait for it to finish, "
                                  "or delete this file if that process is gone")

    def release(self) -> None:
        if not self.held:
            return
        fd, self._fd, self.held = self._fd, None, False
        _HELD.discard(self)
        try:
            if _names(self.path, fd):  # only the holder removes the file, so it is still ours
                self.path.unlink()
        finally:
            os.close(fd)  # the lock ends here, after the removal

    def __enter__(self) -> StageLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is (still) the file open as ``fd``."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)


def _read_owner(fd: int) -> dict | None:
    """The holder named in the file: None if empty (just created) or cut off by a kill."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return owner if isinstance(owner, dict) else None


def _close_in_child() -> None:
    for lock in _HELD:
        with contextlib.suppress(OSError):
            os.close(lock._fd)
        lock._fd, lock.held = None, False
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)
