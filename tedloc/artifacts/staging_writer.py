"""Writing one staging file of the pseudo-labels stage (:mod:`tedloc.artifacts.staging`)
batch by batch, while the encoder goes on."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tedloc.artifacts.atomic import BackgroundCommitter
from tedloc.artifacts.header import ArtifactHeader, write_header_attrs
from tedloc.artifacts.io_strategy import DEFAULT, IOStrategy
from tedloc.artifacts.staging import ENCODED_FORMAT, GRID_ARRAYS, EncodedFile
from tedloc.artifacts.store import write_arrays


class _Aborted(Exception):
    """Thrown into a staging file's write to discard it."""


class EncodedFileWriter:
    """One staging file, written batch by batch; it appears at ``path`` on :meth:`close`.

    Contents: ``image_ids``; ``label`` int64 (B,), ``image_size`` int32 (B, 2), ``pooled``
    float32 (B, c); optional ``features`` / ``features_flip`` float16 (B, h, w, c), laid
    out as the final shards lay out their arrays (one image per chunk, ``grid_compression``),
    so that the file can become a shard's grid file unchanged.  Root attributes: the stage's
    header, ``contents`` (the arrays' names) and ``skipped_json`` (unreadable images).

    The grids go into the temporary file as each batch arrives, so a file's worth of grids
    (hundreds of MB) is neither held in memory nor copied into one array; the small arrays
    are kept and written on close.  The file is written atomically (``*.tmp``, renamed on
    close; through ``committer`` when given, whose ``wait()`` puts it in place);
    :meth:`abort`, or an exception inside ``with``, deletes the temporary file.

    With ``io.background_writes``, an append's grids are written by a thread of the writer's own
    while the caller goes on (the encoder's next forward).  The arrays passed belong to the
    writer until their write is over: ``on_written`` (if given) is then called, from the
    thread that wrote them, whether the write succeeded or not; a caller reusing buffers
    gives them back to their :class:`~tedloc.artifacts.buffer_pool.BufferPool` there, and
    never from its own idea of when the write is done (a file's last write can still be
    running while the next file's writer has started).  The next :meth:`append`,
    :meth:`close` or :meth:`abort` first waits for the write in flight and raises its error.

    Args:
        expected_grid_bytes: about how many bytes of grids the file will hold (decides
            how it is built, see :func:`tedloc.artifacts.atomic.atomic_h5`).
        dataset_attrs: name -> attributes of that dataset.
        io: the disk strategies (:mod:`tedloc.artifacts.io_strategy`): direct writes of raw
            grids, the writer's thread (see above).
    """

    def __init__(self, path: str | Path, header: ArtifactHeader, *, part: int, num_parts: int, seq: int,
                 grid_compression: str | None = None, expected_grid_bytes: int = 0,
                 dataset_attrs: dict[str, dict[str, Any]] | None = None,
                 committer: BackgroundCommitter | None = None, io: IOStrategy = DEFAULT):
        self.path = Path(path)
        self.entry = EncodedFile(path=self.path, part=part, num_parts=num_parts, seq=seq, ids=[],
                                 skipped={}, contents=())
        self.header = header
        self.grid_compression = grid_compression
        self.dataset_attrs = dataset_attrs or {}
        self._small: dict[str, list[np.ndarray]] = {}
        self._context = io.open_grid_file(self.path, size_hint=expected_grid_bytes, committer=committer,
                                          compression=grid_compression)
        self._handle = self._context.__enter__()
        self._open = True
        self._grids = io.grid_writer(self._handle, grid_compression)
        self._thread = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="tedloc-staging")
                        if io.background_writes else None)
        self._in_flight: Future | None = None

    @property
    def num_images(self) -> int:
        """Images added so far, readable or not."""
        return len(self.entry.ids) + len(self.entry.skipped)

    def append(self, image_ids: Sequence[str], arrays: dict[str, np.ndarray],
               skipped: dict[str, str] | None = None, *,
               on_written: Callable[[], None] | None = None) -> None:
        """Add B rows: ``arrays`` maps each name to an array with leading dimension B
        (the same names every call), row i belonging to ``image_ids[i]``.  ``on_written``:
        called once the grids have been read for the last time (see the class docstring)."""
        try:
            for name, array in arrays.items():
                if len(array) != len(image_ids):
                    raise ValueError(f"array {name!r} has {len(array)} rows for {len(image_ids)} ids")
            self._wait()
        except BaseException:
            if on_written is not None:
                on_written()  # nothing of these arrays was handed to the writer's thread
            raise
        grids = {name: np.asarray(array) for name, array in arrays.items() if name in GRID_ARRAYS}
        for name, array in arrays.items():
            if name not in GRID_ARRAYS:
                self._small.setdefault(name, []).append(np.array(array))  # a copy: kept until close
        if self._thread is not None:
            self._in_flight = self._thread.submit(self._append_grids, grids, on_written)
        else:
            self._append_grids(grids, on_written)
        self.entry.ids.extend(image_ids)
        self.entry.skipped.update(skipped or {})

    def _append_grids(self, grids: dict[str, np.ndarray], on_written: Callable[[], None] | None) -> None:
        try:
            for name, array in grids.items():
                self._grids.append(name, array, self.dataset_attrs.get(name))
        finally:
            if on_written is not None:
                on_written()

    def _wait(self) -> None:
        """Wait for the grid write in flight, if any; raise its error."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    def close(self) -> EncodedFile:
        """Write the rest and publish the file; returns its index entry."""
        return self.close_in_background().result()

    def close_in_background(self) -> Future:
        """:meth:`close` in the writer's thread, after the grid write in flight (the caller
        goes on meanwhile); the Future gives the index entry or raises the error.  Without
        ``background`` the file is closed before this returns."""
        if not self._open:
            raise ValueError(f"{self.path}: already closed")
        self._open = False
        if self._thread is None:
            done: Future = Future()
            try:
                done.set_result(self._finish())
            except BaseException as exc:
                done.set_exception(exc)
            return done
        closing = self._thread.submit(self._finish)
        self._thread.shutdown(wait=False)  # the thread ends once the close is done
        self._thread = None
        return closing

    def _finish(self) -> EncodedFile:
        try:
            self._wait()  # done by now in the writer's thread (one task at a time, in order)
            handle = self._handle
            names = sorted({*self._small, *(n for n in GRID_ARRAYS if n in handle)})
            write_header_attrs(handle, self.header)
            handle.attrs["format"] = ENCODED_FORMAT
            handle.attrs["contents"] = json.dumps(names)
            handle.attrs["skipped_json"] = json.dumps(self.entry.skipped, sort_keys=True)
            handle.create_dataset("image_ids", data=np.array(self.entry.ids, dtype=object),
                                  dtype=h5py.string_dtype())
            small = {name: np.concatenate(parts) for name, parts in self._small.items()}
            write_arrays(handle, small, compression=dict.fromkeys(small), dataset_attrs=self.dataset_attrs)
        except BaseException as exc:
            self._grids.close()
            self._context.__exit__(type(exc), exc, exc.__traceback__)  # deletes the temporary file
            raise
        self._grids.close()  # its writes reach the disk with the commit's fsync
        self._context.__exit__(None, None, None)
        self.entry.contents = tuple(names)
        return self.entry

    def abort(self) -> None:
        """Discard the file (its temporary file is deleted)."""
        if self._open:
            self._open = False
            with contextlib.suppress(Exception):  # the write in flight is discarded with the file
                self._wait()
            self._stop_thread()
            self._grids.close()
            self._context.__exit__(_Aborted, _Aborted(), None)

    def __enter__(self) -> EncodedFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._open:
            self.close()


