"""Reading a sharded artifact: the image ids of every shard, one image's row or a whole array."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tedloc.artifacts import integrity
from tedloc.artifacts.header import check_format, redo_hint, stored_image_ids
from tedloc.artifacts.manifest import (
    _CHECK_THREADS,
    MANIFEST,
    SHARD_DIR,
    is_shard_name,
    read_manifest,
)
from tedloc.errors import ArtifactError, DamagedFileError


def _check_links(handle: h5py.File, path: Path, expected_format: str) -> None:
    """Refuse a shard whose external link points to a missing file (a ``*.grids.h5``
    deleted or left behind when copying): HDF5 would only fail at the first read, with a
    bare KeyError."""
    for key in handle:
        link = handle.get(key, getlink=True)
        if isinstance(link, h5py.ExternalLink) and not (path.parent / link.filename).is_file():
            stage = expected_format.rpartition(".")[2].replace("_", "-")
            raise ArtifactError(f"{path.parent / link.filename}: missing ({path.name} keeps its '{key}' there); "
                                f"restore it, or recompute with `tedloc stage {stage} --overwrite`")


class ShardedReader:
    """Read access to a finished (or, with ``allow_partial``, unfinished) sharded artifact.

    ``reader.ids`` lists the image ids in shard order; ``reader.read(name, image_id)``
    returns one image's row; ``reader.read_all(name)`` the stacked array in ``ids`` order.
    Files are opened read-only and kept open until :meth:`close`.  With ``verify`` each
    shard must pass its checksum first (:class:`DamagedFileError` otherwise); the files the
    shards link to are checked by :meth:`verify_linked`, when they are going to be read.
    """

    def __init__(self, directory: str | Path, expected_format: str, *,
                 supported_versions: Sequence[int] = (1,), allow_partial: bool = False,
                 verify: bool = False):
        self.directory = Path(directory)
        self.format = expected_format
        self.manifest: dict[str, Any] | None
        if allow_partial and not (self.directory / MANIFEST).exists():
            self.manifest = None
            files = sorted(str(p.relative_to(self.directory))
                           for p in (self.directory / SHARD_DIR).glob("*.h5") if is_shard_name(p.name))
        else:
            self.manifest = read_manifest(self.directory, expected_format, supported_versions)
            files = self.manifest["files"]
        self._handles: list[h5py.File] = []
        # (file index, name) -> open dataset: saves the name lookup per read and keeps the
        # file behind an external link open (else HDF5 reopens it on every access).
        self._datasets: dict[tuple[int, str], h5py.Dataset] = {}
        self._index: dict[str, tuple[int, int]] = {}
        self.ids: list[str] = []
        self.skipped: dict[str, str] = dict((self.manifest or {}).get("skipped", {}))
        records = (self.manifest or {}).get("checksums") or {}
        for file_index, rel in enumerate(files):
            path = self.directory / rel
            if verify:
                integrity.check_file(path, records.get(rel), hint=redo_hint(expected_format))
            try:
                handle = h5py.File(path, "r")
            except OSError as exc:
                raise ArtifactError(f"{path}: cannot open shard ({exc})") from None
            self._handles.append(handle)
            try:
                check_format(path, handle.attrs.get("format"), handle.attrs.get("format_version"),
                             expected_format, supported_versions)
                _check_links(handle, path, expected_format)
            except ArtifactError:
                self.close()
                raise
            ids = stored_image_ids(handle)
            for row, image_id in enumerate(ids):
                self._index[image_id] = (file_index, row)
                self.ids.append(image_id)
            if self.manifest is None:
                self.skipped.update(json.loads(handle.attrs.get("skipped_json", "{}")))

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    def verify_linked(self) -> None:
        """Check every file the shards link to (the pseudo-labels' grid files): raise
        :class:`DamagedFileError` naming the first one missing or damaged."""
        records = (self.manifest or {}).get("checksums") or {}
        targets: dict[Path, None] = {}
        for handle in self._handles:
            shard = Path(handle.filename)
            for name in handle:
                link = handle.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    targets[shard.parent / link.filename] = None

        def problem(target: Path) -> str | None:
            return integrity.file_problem(target, records.get(target.relative_to(self.directory).as_posix()))

        with ThreadPoolExecutor(max_workers=_CHECK_THREADS, thread_name_prefix="tedloc-check") as pool:
            for target, found in zip(targets, pool.map(problem, targets), strict=True):
                if found is not None:
                    raise DamagedFileError(target, found, redo_hint(self.format))

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes of the first shard (identical across shards)."""
        return dict(self._handles[0].attrs) if self._handles else {}

    def dataset_names(self) -> list[str]:
        return [k for k in self._handles[0].keys() if k != "image_ids"] if self._handles else []

    def dataset_attrs(self, name: str) -> dict[str, Any]:
        return dict(self._handles[0][name].attrs) if self._handles else {}

    def has(self, name: str) -> bool:
        return bool(self._handles) and name in self._handles[0]

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._index

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, name: str, image_id: str) -> np.ndarray:
        try:
            file_index, row = self._index[image_id]
        except KeyError:
            raise ArtifactError(f"{self.directory}: no image {image_id!r} in this artifact") from None
        key = (file_index, name)
        dataset = self._datasets.get(key)
        if dataset is None:
            dataset = self._datasets[key] = self._handles[file_index][name]
        return dataset[row]

    def read_many(self, name: str, image_ids: Sequence[str]) -> np.ndarray:
        return np.stack([self.read(name, i) for i in image_ids]) if image_ids else np.empty((0,))

    def read_all(self, name: str) -> np.ndarray:
        """Every row of ``name``, in ``self.ids`` order (loads all of it into memory)."""
        parts = [h[name][()] for h in self._handles if len(h["image_ids"])]
        return np.concatenate(parts) if parts else np.empty((0,))

    def close(self) -> None:
        self._datasets.clear()
        for handle in self._handles:
            handle.close()
        self._handles.clear()

    def __enter__(self) -> ShardedReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
