"""Writing one staging file of the pseudo-labels stage (:mod:`tedloc.artifacts.staging`)
batch by batch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tedloc.artifacts.atomic import BackgroundCommitter, atomic_h5
from tedloc.artifacts.header import ArtifactHeader, write_header_attrs
from tedloc.artifacts.staging import ENCODED_FORMAT, GRID_ARRAYS, EncodedFile
from tedloc.artifacts.store import write_arrays


class _Aborted(Exception):
    """Thrown into a staging file's write to discard it."""


class GridRowWriter:
    """Grows one dataset per grid name of a file being written, one image per chunk, and
    writes the rows."""

    def __init__(self, handle: h5py.File, compression: str | None):
        self.handle = handle
        self.compression = compression

    def append(self, name: str, array: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        """Rows (B, ...) at the end of dataset ``name`` (created with ``attrs`` if new)."""
        dset = self.handle.get(name)
        if dset is None:
            row = array.shape[1:]
            dset = self.handle.create_dataset(name, shape=(0, *row), maxshape=(None, *row), dtype=array.dtype,
                                              chunks=(1, *row), compression=self.compression)
            for key, value in (attrs or {}).items():
                dset.attrs[key] = value
        start = len(dset)
        dset.resize(start + len(array), axis=0)
        if len(array):
            dset[start:] = array


class EncodedFileWriter:
    """One staging file, written batch by batch; it appears at ``path`` on :meth:`close`.

    Contents: ``image_ids``; ``label`` int64 (B,), ``image_size`` int32 (B, 2), ``pooled``
    float32 (B, c); optional ``features`` / ``features_flip`` float16 (B, h, w, c), laid
    out as the final shards lay out their arrays (one image per chunk, ``grid_compression``),
    so that the file can become a shard's grid file unchanged.  Root attributes: the stage's
    header, ``contents`` (the arrays' names) and ``skipped_json`` (unreadable images).

    The grids go into the temporary file as each batch arrives (:meth:`append` returns once
    they are written, so the caller may refill its arrays), so a file's worth of grids
    (hundreds of MB) is neither held in memory nor copied into one array; the small arrays
    are kept and written on close.  The file is written atomically (``*.tmp``, renamed on
    close; through ``committer`` when given, whose ``wait()`` puts it in place);
    :meth:`abort`, or an exception inside ``with``, deletes the temporary file.

    Args:
        expected_grid_bytes: about how many bytes of grids the file will hold (decides
            how it is built, see :func:`tedloc.artifacts.atomic.atomic_h5`).
        dataset_attrs: name -> attributes of that dataset.
    """

    def __init__(self, path: str | Path, header: ArtifactHeader, *, part: int, num_parts: int, seq: int,
                 grid_compression: str | None = None, expected_grid_bytes: int = 0,
                 dataset_attrs: dict[str, dict[str, Any]] | None = None,
                 committer: BackgroundCommitter | None = None):
        self.path = Path(path)
        self.entry = EncodedFile(path=self.path, part=part, num_parts=num_parts, seq=seq, ids=[],
                                 skipped={}, contents=())
        self.header = header
        self.grid_compression = grid_compression
        self.dataset_attrs = dataset_attrs or {}
        self._small: dict[str, list[np.ndarray]] = {}
        self._context = atomic_h5(self.path, size_hint=expected_grid_bytes, committer=committer)
        self._handle = self._context.__enter__()
        self._open = True
        self._grids = GridRowWriter(self._handle, grid_compression)

    @property
    def num_images(self) -> int:
        """Images added so far, readable or not."""
        return len(self.entry.ids) + len(self.entry.skipped)

    def append(self, image_ids: Sequence[str], arrays: dict[str, np.ndarray],
               skipped: dict[str, str] | None = None) -> None:
        """Add B rows: ``arrays`` maps each name to an array with leading dimension B
        (the same names every call), row i belonging to ``image_ids[i]``."""
        for name, array in arrays.items():
            if len(array) != len(image_ids):
                raise ValueError(f"array {name!r} has {len(array)} rows for {len(image_ids)} ids")
        for name, array in arrays.items():
            if name in GRID_ARRAYS:
                self._grids.append(name, np.asarray(array), self.dataset_attrs.get(name))
            else:
                self._small.setdefault(name, []).append(np.array(array))  # a copy: kept until close
        self.entry.ids.extend(image_ids)
        self.entry.skipped.update(skipped or {})

    def close(self) -> EncodedFile:
        """Write the rest and publish the file; returns its index entry."""
        if not self._open:
            raise ValueError(f"{self.path}: already closed")
        self._open = False
        try:
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
            self._context.__exit__(type(exc), exc, exc.__traceback__)  # deletes the temporary file
            raise
        self._context.__exit__(None, None, None)
        self.entry.contents = tuple(names)
        return self.entry

    def abort(self) -> None:
        """Discard the file (its temporary file is deleted)."""
        if self._open:
            self._open = False
            self._context.__exit__(_Aborted, _Aborted(), None)

    def __enter__(self) -> EncodedFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._open:
            self.close()
