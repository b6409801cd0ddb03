"""One writer per stage directory: a lock file that holds the writer's pid and host.

A lock whose process is gone (same host, pid not alive) is stale and is taken over, so a
killed run never blocks the next one.  Sharded runs (``--num-shards``) lock per shard.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from tedloc.errors import WorkdirLockedError

log = logging.getLogger(__name__)


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

    Use as a context manager.  Raises :class:`WorkdirLockedError` when a live process
    holds it.  ``acquire`` is re-entrant for the owning process.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.held = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            # A lock file cut off mid-write by a kill: nobody can hold it.
            return {"pid": -1, "host": socket.gethostname()}

    def acquire(self) -> StageLock:
        if self.held:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released meanwhile
                same_host = owner.get("host") == me["host"]
                pid = int(owner.get("pid", -1))
                if pid == me["pid"] and same_host:
                    break
                if same_host and not _pid_alive(pid):
                    log.warning("taking over stale lock %s (pid %s is gone)", self.path, pid)
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                raise WorkdirLockedError(
                    f"{self.path}: in use by pid {pid} on {owner.get('host')}; "
                    "wait for it to finish (or delete this file if that process is gone)"
                ) from None
            else:
                try:
                    with os.fdopen(fd, "w") as handle:
                        json.dump(me, handle)
                except OSError as exc:  # a full disk: leave no empty lock behind, name the file
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
                break
        else:
            raise WorkdirLockedError(f"{self.path}: could not acquire the lock")
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner and owner.get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self.held = False

    def __enter__(self) -> StageLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
