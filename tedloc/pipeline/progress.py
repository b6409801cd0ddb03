"""Progress of long loops: a tqdm bar on a terminal, a log line every tenth elsewhere.

A bar redraws itself several times a second with carriage returns; written to a file or a
pipe (a job's log, ``tee``, CI) every redraw is kept, and the log drowns in them.  So a bar
is drawn only where its stream is a terminal; elsewhere the same loop logs one INFO line
each time it passes a tenth of its total (and one at the end), with the rate and the time
left: ``evaluate: maps: 20/200 img (10%), 3.1 img/s, 58 s left``.

``progress`` takes tqdm's arguments (``iterable``, ``total``, ``desc``, ``unit``,
``disable``, ``leave``) and returns an object with tqdm's ``update``, ``set_postfix`` and
``close``, usable as a context manager or an iterable, so loops read the same either way.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

log = logging.getLogger("tedloc.progress")

#: Share of the total between two log lines off a terminal ("a line every ~10 %").
LOG_STEP = 0.1
#: Seconds between two log lines of a loop whose total is unknown.
LOG_SECONDS_WITHOUT_TOTAL = 60.0


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an open terminal (closed or odd streams are not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool = False, leave: bool = True, stream: TextIO | None = None):
    """A tqdm bar when ``stream`` (default: stderr, where tqdm draws) is a terminal, else a
    :class:`LogProgress`; nothing at all with ``disable``."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if disable:
        return tqdm(iterable, total=total, disable=True)
    if is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream)
    return LogProgress(iterable, total=total, desc=desc, unit=unit)


class LogProgress:
    """tqdm's interface, reporting by log lines: one each time the count passes a multiple
    of ``step`` × ``total`` (so about 1 / ``step`` lines per loop), one at the end; without
    a total, one every ``LOG_SECONDS_WITHOUT_TOTAL`` seconds and one at the end."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", step: float = LOG_STEP, logger: logging.Logger = log,
                 clock: Callable[[], float] = time.monotonic):
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.step = step
        self.logger = logger
        self.clock = clock
        self.n = 0
        self.postfix = ""
        self.started = clock()
        self._last_time = self.started
        self._next_mark = 1  # the next multiple of step × total to report
        self._closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LogProgress was given no iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count in the next line (tqdm's ``set_postfix``)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if self.total:
            mark = int(self.n / (self.total * self.step) + 1e-9)
            if mark >= self._next_mark and self.n < self.total:
                self._next_mark = mark + 1
                self._emit(now)
        elif now - self._last_time >= LOG_SECONDS_WITHOUT_TOTAL:
            self._emit(now)

    def close(self) -> None:
        """Log the final line (once)."""
        if not self._closed:
            self._closed = True
            if self.n:
                self._emit(self.clock())

    def _speed(self, rate: float) -> str:
        """``3.1 img/s``, or ``156 s/batch`` when an item takes more than a second (a rate
        like ``0.00641 batch/s`` is hard to read)."""
        if 0 < rate < 1:
            return f"{1 / rate:.3g} s/{self.unit}"
        return f"{rate:.3g} {self.unit}/s"

    def _emit(self, now: float) -> None:
        self._last_time = now
        elapsed = max(now - self.started, 1e-9)
        rate = self.n / elapsed
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else float("inf")
            count = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
            timing = f"{self._speed(rate)}, " + (f"{left:.0f} s left" if self.n < self.total
                                                 else f"took {elapsed:.1f} s")
        else:
            count, timing = f"{self.n} {self.unit}", f"{self._speed(rate)}, {elapsed:.0f} s"
        extra = f", {self.postfix}" if self.postfix else ""
        self.logger.info("%s: %s, %s%s", self.desc or "progress", count, timing, extra)
