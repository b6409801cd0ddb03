"""Reusable buffers handed from a producer to the thread that writes them.

A buffer belongs to exactly one side at a time.  The producer takes a free one with
:meth:`BufferPool.acquire` (waiting while all are out), fills it and hands it over with
the rows it writes; the consumer gives it back with :meth:`BufferPool.release` once it
will never read it again (after its write, whether that succeeded or not).  So a buffer
is never refilled while any reader of it is still at work, whatever the threads' timing:
no write can see another batch's rows.

Why reuse at all: the pseudo-labels stage's feature grids are tens of MB per batch, and on
a VM each fresh page costs a fault (about 3 ms per MB touched for the first time).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BufferPool(Generic[T]):
    """At most ``count`` buffers made by ``make()`` (lazily), each out to one holder at a time.

    Args:
        make: builds one buffer (e.g. a tuple of page-aligned arrays).
        count: how many buffers exist at most (2: one being filled, one being written).
    """

    def __init__(self, make: Callable[[], T], count: int = 2):
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self._make = make
        self._count = count
        self._made = 0
        self._free: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._out: set[int] = set()  # ids of the buffers handed out
        self._lock = threading.Lock()

    def acquire(self) -> T:
        """A free buffer (its contents are stale), waiting for a release while all are out."""
        with self._lock:
            make = self._free.empty() and self._made < self._count
            if make:
                self._made += 1
        buffer = self._make() if make else self._free.get()
        with self._lock:
            self._out.add(id(buffer))
        return buffer

    def release(self, buffer: T) -> None:
        """Give ``buffer`` back: its holder will not read or write it again."""
        with self._lock:
            if id(buffer) not in self._out:
                raise ValueError("releasing a buffer that is not out of this pool")
            self._out.remove(id(buffer))
        self._free.put(buffer)
