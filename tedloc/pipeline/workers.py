"""Worker processes that end when the process that started them dies.

A stage killed with SIGKILL runs no cleanup, and its workers do not notice by themselves:
a worker of a ``ProcessPoolExecutor`` waits for its next task on a queue whose write end
it holds itself (forked, or passed to it when spawned), so it never reads end-of-file and
sleeps forever, holding its memory and the stage's open files.  Every worker process of
tedloc is started through this module, whose initializer ties the worker's life to its
parent's:

* on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker when its
  parent dies.  The signal comes when the worker's parent *thread* ends, so it is set only
  for children of the parent's main thread (whose end is the process's end), read from
  ``/proc/<parent>/task/<parent>/children``;
* otherwise (another OS, a child of another thread, no ``/proc``), a daemon
  thread in the worker polls ``os.getppid()`` every :data:`POLL_SECONDS` and kills the
  worker once it changes (an orphan is handed to another parent).

Either way the parent may already be gone when the initializer runs, before anything
watches it; so the initializer compares ``os.getppid()`` with the pid the parent recorded
when it built the pool, after the watch is set up, and ends the worker if they differ.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

#: How often the portable watch reads the parent pid (seconds): an orphaned worker lives
#: at most this long.
POLL_SECONDS = 0.2
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def process_pool(max_workers: int, *, start_method: str, initializer: Callable[..., None] | None = None,
                 initargs: tuple = ()) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` whose workers end when this process dies.

    Args:
        max_workers: worker processes.
        start_method: ``"fork"`` or ``"spawn"``; where the platform lacks it, its default.
        initializer: run in each worker after the parent watch is set up (with ``initargs``).
    """
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context(start_method if start_method in methods else None)
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=context, initializer=_start_worker,
                               initargs=(os.getpid(), initializer, initargs))


def loader_worker_init() -> Callable[[int], None]:
    """A ``worker_init_fn`` for a torch ``DataLoader`` built in this process: its workers end
    when this process dies (the loader's own check of its parent runs only between items)."""
    return functools.partial(_start_loader_worker, os.getpid())


def die_with_parent(parent_pid: int, *, use_prctl: bool = True) -> None:
    """End this process (SIGKILL) when ``parent_pid``, the process that started it, dies;
    at once if it is not this process's parent any more.  ``use_prctl=False`` forces the
    portable watch."""
    if not (use_prctl and _started_by_main_thread(parent_pid) and _set_parent_death_signal()):
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="tedloc-parent-watch",
                         daemon=True).start()
    # Checked after the watch is in place: a parent that died before is seen here, one that
    # dies after is seen by the watch.
    if os.getppid() != parent_pid:
        _end_now()


def _start_worker(parent_pid: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    die_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def _start_loader_worker(parent_pid: int, worker_id: int) -> None:
    die_with_parent(parent_pid)


def _started_by_main_thread(parent_pid: int) -> bool:
    """Whether this process is a child of its parent's main thread (tid = pid): started by it,
    or handed to it by the kernel when the thread that started it ended.  The kernel's list
    may miss a child while others start or end: then False, and the portable watch is used."""
    try:
        with open(f"/proc/{parent_pid}/task/{parent_pid}/children", encoding="ascii") as handle:
            return str(os.getpid()) in handle.read().split()
    except OSError:
        return False


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    _end_now()


def _end_now() -> None:
    # SIGKILL, as the kernel's parent-death signal does: no cleanup that could block on
    # the dead parent's queues or locks.
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(1)
