"""BufferPool: a buffer is out to one holder at a time; acquire waits for a release."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tedloc.artifacts.buffer_pool import BufferPool


def test_at_most_count_buffers_and_acquire_waits_for_a_release():
    made = []
    pool = BufferPool(lambda: made.append(np.zeros(4)) or made[-1], count=2)
    first, second = pool.acquire(), pool.acquire()
    assert len(made) == 2 and first is not second
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    waiter.join(timeout=0.2)
    assert waiter.is_alive() and not got  # both buffers are out: it waits
    pool.release(second)
    waiter.join(timeout=30)
    assert got == [second] and len(made) == 2


def test_release_of_a_buffer_not_out_is_refused():
    pool = BufferPool(lambda: np.zeros(2), count=1)
    buffer = pool.acquire()
    with pytest.raises(ValueError):
        pool.release(np.zeros(2))
    pool.release(buffer)
    with pytest.raises(ValueError):
        pool.release(buffer)  # twice


def test_a_slow_consumer_never_sees_its_buffer_refilled():
    """Producer fills buffers with a batch number, consumers (one thread per batch, as one
    writer thread per file) read them late: every consumer reads its own batch."""
    pool = BufferPool(lambda: np.zeros(1000, np.int64), count=2)
    seen: dict[int, set[int]] = {}
    threads = []

    def consume(batch: int, buffer: np.ndarray) -> None:
        time.sleep(0.01 * (batch % 3))
        seen[batch] = set(buffer.tolist())
        pool.release(buffer)

    for batch in range(30):
        buffer = pool.acquire()
        buffer[:] = batch
        thread = threading.Thread(target=consume, args=(batch, buffer))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(timeout=30)
    assert seen == {batch: {batch} for batch in range(30)}
