"""Random delays at every hand-off between threads and processes, for tests.

:func:`slow_handoffs` patches the few places where tedloc's work crosses from one thread
or process to another, the same ones whatever the stage's code looks like around them:

* ``ThreadPoolExecutor.submit`` (and so ``.map``): every task a thread pool runs (writer
  threads, file commits, read-ahead, decoding threads) starts after a random delay, long
  or short by pool, and the thread that submitted it is itself held back a little at
  random, so that either side can run ahead;
* ``ProcessPoolExecutor.submit``: the same for tasks of worker processes;
* a DataLoader worker's item (``_ResizedImages.__getitem__``), which runs in its processes.

A hand-off that is correct by construction gives the same results under any delays; one
that relies on the other side being fast enough shows up as wrong rows.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest


class Delayed:
    """``fn`` after ``delay`` seconds; picklable when ``fn`` is (so it can go to a process)."""

    def __init__(self, fn: Callable[..., Any], delay: float):
        self.fn = fn
        self.delay = delay

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay)
        return self.fn(*args, **kwargs)


class _Draws:
    """Delays from one seeded generator, shared by every thread.

    Each pool (thread or process pool) is drawn slow or fast once, at its first task: a slow
    pool's tasks wait up to ``max_delay`` (a busy disk under a writer thread), a fast one's
    up to a fiftieth of it.  One slow pool beside fast ones is what lets a submitter get
    several steps ahead of its tasks.
    """

    def __init__(self, seed: int, max_delay: float):
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._scales: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.max_delay = max_delay
        self.count = 0

    def task(self, pool: object) -> float:
        """Delay of one of ``pool``'s tasks before it runs."""
        with self._lock:
            self.count += 1
            scale = self._scales.get(pool)
            if scale is None:
                scale = self._scales[pool] = self.max_delay / (1 if self._rng.random() < 0.5 else 50)
            return self._rng.uniform(0, scale)

    def caller(self) -> float:
        """Delay of the submitting side: short (it lets tasks run ahead of their submitter)."""
        with self._lock:
            self.count += 1
            return self._rng.uniform(0, self.max_delay / 50)


@contextlib.contextmanager
def slow_handoffs(monkeypatch: pytest.MonkeyPatch, *, seed: int = 0, max_delay: float = 0.2
                  ) -> Iterator[_Draws]:
    """Within the block, delay both sides of every hand-off at random (see the module
    docstring); yields the delay source (``.count``: how many delays were drawn)."""
    from tedloc.pipeline import image_loader

    draws = _Draws(seed, max_delay)
    thread_submit = ThreadPoolExecutor.submit
    process_submit = ProcessPoolExecutor.submit
    get_item = image_loader._ResizedImages.__getitem__

    def slow_thread_submit(self, fn, /, *args, **kwargs):
        time.sleep(draws.caller())
        return thread_submit(self, Delayed(fn, draws.task(self)), *args, **kwargs)

    def slow_process_submit(self, fn, /, *args, **kwargs):
        time.sleep(draws.caller())
        return process_submit(self, Delayed(fn, draws.task(self)), *args, **kwargs)

    def slow_get_item(self, index):
        # In a worker process the generator is a copy: seed it from the index instead.
        time.sleep(random.Random(seed * 100_003 + index).uniform(0, max_delay / 50))
        return get_item(self, index)

    with monkeypatch.context() as patch:
        patch.setattr(ThreadPoolExecutor, "submit", slow_thread_submit)
        patch.setattr(ProcessPoolExecutor, "submit", slow_process_submit)
        patch.setattr(image_loader._ResizedImages, "__getitem__", slow_get_item)
        yield draws
