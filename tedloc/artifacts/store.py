"""The artifact store: a stage's directory of HDF5 shards and the manifest written last.

Layout of one stage directory (e.g. ``<workdir>/pseudo_labels``)::

    manifest.json                      written last: the stage is finished iff it exists
    shards/part000of001-00000.h5       per-image arrays, stacked, with an ``image_ids`` index
    shards/part000of001-00001.h5       ...
    .lock                              held by the one writer (``.lock-part003of008`` when sharded)

Rules (STYLE.md, points 4-6):

* Every HDF5 file carries root attributes ``format``, ``format_version``, ``config_json``,
  ``config_hash``, ``upstream_hash``, ``tedloc_version`` and ``created``.
* A shard is written as ``*.tmp`` and ``os.replace``-d into place once closed, so a shard
  on disk is always complete; resume drops ``*.tmp`` and keeps shards whose hashes match.
* Every file carries or is given a checksum (:mod:`tedloc.artifacts.integrity`); the
  manifest's ``checksums`` lists every file of the finished stage.  A shard is reused
  only once it (and any file it links to) passes its checksum; a damaged one is deleted
  with a warning and its images are redone in the same run.
* A finished stage with the same hashes returns at once once its files pass their
  checksums; a damaged or missing file is redone in the same run (the manifest is
  deleted first and written again at the end), or, for a file the stage cannot redo
  (``precious``), refused with a one-line error.  Different hashes are refused (naming
  both) unless ``overwrite=True``, which deletes the old results with a warning.
* Multi-process runs split the ids by a stable hash (``--num-shards N --shard-index i``);
  the process that finds every id done writes the manifest.

This module writes shards (:class:`ShardedWriter`); the header lives in
:mod:`tedloc.artifacts.header`, the manifest and the checks before a run in
:mod:`tedloc.artifacts.manifest`, reading in :mod:`tedloc.artifacts.reader`.  Their public
names are importable from here too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tedloc.artifacts import integrity
from tedloc.artifacts.atomic import atomic_h5
from tedloc.artifacts.header import (  # noqa: F401 (the store's names, wherever they live)
    ArtifactHeader,
    check_format,
    overwrite_hint,
    redo_hint,
    stage_command,
    stored_identity,
    stored_image_ids,
    write_header_attrs,
)
from tedloc.artifacts.lock import StageLock
from tedloc.artifacts.manifest import (  # noqa: F401 (the store's names, wherever they live)
    _SHARD_RE,
    MANIFEST,
    SHARD_DIR,
    _mismatch_message,
    clear_stage_dir,
    is_shard_name,
    linked_files,
    owner_of,
    prepare_stage_dir,
    read_manifest,
    stage_file_problems,
    stage_files,
    write_manifest,
)
from tedloc.artifacts.reader import ShardedReader  # noqa: F401 (the store's names, wherever they live)
from tedloc.errors import ArtifactError, ConfigMismatchError

log = logging.getLogger(__name__)

#: Arrays at least this large per image are compressed (lzf: fast, always available in h5py).
_COMPRESS_MIN_BYTES = 1024


def shard_of(image_id: str, num_shards: int) -> int:
    """Stable assignment of an id to one of ``num_shards`` processes (independent of order)."""
    if num_shards == 1:
        return 0
    return int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) % num_shards


def write_arrays(handle: h5py.File, arrays: dict[str, np.ndarray], *,
                 compression: dict[str, str | None] | None = None,
                 dataset_attrs: dict[str, dict[str, Any]] | None = None) -> None:
    """Create one dataset per array, the store's way: arrays of more than one dimension are
    chunked one image (row) per chunk, lzf-compressed when a row has at least 1 KiB unless
    ``compression`` names the filter (None = raw) for that name; ``dataset_attrs`` are set
    on the datasets."""
    for key, array in arrays.items():
        array = np.asarray(array)
        kwargs: dict[str, Any] = {}
        if len(array) and array.ndim > 1:
            kwargs["chunks"] = (1, *array.shape[1:])
            default = "lzf" if array[0].nbytes >= _COMPRESS_MIN_BYTES else None
            kwargs["compression"] = (compression or {}).get(key, default)
        dset = handle.create_dataset(key, data=array, **kwargs)
        for akey, avalue in ((dataset_attrs or {}).get(key) or {}).items():
            dset.attrs[akey] = avalue


class ShardedWriter:
    """Writes one stage's per-image results as shards; see the module docstring.

    Typical use::

        writer = ShardedWriter(stage_dir, header, num_shards=n, shard_index=i)
        with writer:
            if writer.open(overwrite=overwrite):       # True: already finished
                return writer.manifest_path
            for batch_ids in chunks(writer.pending(all_ids), 256):
                writer.write_shard(batch_ids, {"cam": cams, "label": labels})
            writer.finish(all_ids, extra={...})

    A shard is reused only once it and the files it links to pass their checksums; a
    damaged one is deleted with a warning (a damaged file it links to too) and its images
    are pending again.  Each process checks the files of its own part (the first process
    also those of no current part: the classifier, reports, another layout's shards), so
    that processes do not read each other's files.

    Args:
        directory: the stage directory.
        header: identity of the results.
        num_shards, shard_index: this process's part of a multi-process run.
        supported_versions: ``format_version`` values this code can resume from.
        precious: files of the stage (relative paths) that resuming cannot redo: damage to
            them is refused (:func:`prepare_stage_dir`).
    """

    def __init__(self, directory: str | Path, header: ArtifactHeader, *, num_shards: int = 1,
                 shard_index: int = 0, supported_versions: Sequence[int] = (1,),
                 precious: Sequence[str] = ()):
        if not 0 <= shard_index < num_shards:
            raise ArtifactError(f"shard index {shard_index} is outside 0..{num_shards - 1}")
        self.directory = Path(directory)
        self.header = header
        self.num_shards = num_shards
        self.shard_index = shard_index
        self.supported_versions = tuple(supported_versions)
        self.precious = tuple(precious)
        lock_name = ".lock" if num_shards == 1 else f".lock-part{shard_index:03d}of{num_shards:03d}"
        self.lock = StageLock(self.directory / lock_name)
        self.complete = False
        self._done: dict[str, str] = {}  # image id -> shard file name
        self._skipped: dict[str, str] = {}  # image id -> reason
        self._next_seq = 0
        self._holes: list[int] = []  # see _scan
        # Files (relative paths) known intact: checked once, or written by this writer.
        self._checked: set[str] = set()

    def owns(self, name: str) -> bool:
        """Whether this process checks the file ``name`` (see the class docstring)."""
        return owner_of(name, self.num_shards) == self.shard_index

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    @property
    def shard_dir(self) -> Path:
        return self.directory / SHARD_DIR

    def __enter__(self) -> ShardedWriter:
        self.lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def open(self, *, overwrite: bool = False) -> bool:
        """Validate what is on disk and index finished shards. True if already complete
        (and intact)."""
        self.lock.acquire()
        self._checked.clear()
        self.complete = prepare_stage_dir(self.directory, self.header,
                                          supported_versions=self.supported_versions,
                                          overwrite=overwrite, precious=self.precious, owns=self.owns,
                                          checked=self._checked)
        self.shard_dir.mkdir(exist_ok=True)
        self._scan(overwrite=overwrite)
        return self.complete

    def clear(self, reason: str) -> None:
        """Delete every result of the stage (``--overwrite`` over a file the stage cannot
        redo); the writer then starts from nothing."""
        log.warning("--overwrite: deleting the previous results in %s (%s)", self.directory, reason)
        clear_stage_dir(self.directory)
        self.shard_dir.mkdir(exist_ok=True)
        self._checked.clear()
        self.complete = False
        self._next_seq = 0
        self._scan(overwrite=True)

    def _damage(self, path: Path) -> str | None:
        """What is wrong with the shard ``path`` or a file it links to (deleting a damaged
        linked file), or None; files already checked are not read again."""
        rel = f"{SHARD_DIR}/{path.name}"
        if rel not in self._checked:
            problem = integrity.file_problem(path)
            if problem is not None:
                return problem
        try:
            targets = linked_files(path)
        except (OSError, KeyError) as exc:
            return f"unreadable ({' '.join(str(exc).split())})"
        for target in targets:
            target_rel = f"{SHARD_DIR}/{target}"
            if target_rel in self._checked:
                continue
            problem = integrity.file_problem(self.shard_dir / target)
            if problem is not None:
                if not problem.startswith("missing"):
                    log.warning("%s: %s; deleting it", self.shard_dir / target, problem)
                    (self.shard_dir / target).unlink(missing_ok=True)
                return f"damaged (the file it links to, {target}, is {problem.split(' (')[0]})"
            self._checked.add(target_rel)
        self._checked.add(rel)
        return None

    def _scan(self, *, overwrite: bool) -> None:
        self._done.clear()
        self._skipped.clear()
        own_seqs: set[int] = set()
        for path in sorted(self.shard_dir.glob("*.h5")):
            match = _SHARD_RE.match(path.name)
            if match is None:
                continue
            try:
                with h5py.File(path, "r") as handle:
                    check_format(path, handle.attrs.get("format"), handle.attrs.get("format_version"),
                                 self.header.format, self.supported_versions)
                    found = stored_identity(handle)
                    ids = stored_image_ids(handle)
                    skipped = json.loads(handle.attrs.get("skipped_json", "{}"))
            except ArtifactError:
                if not overwrite:
                    raise
                found, ids, skipped = None, [], {}
            except (OSError, KeyError, ValueError) as exc:
                # Shards appear atomically, so this is damage from outside (disk, a user).
                log.warning("%s: unreadable shard (%s); deleting it, its images are redone in this run", path, exc)
                path.unlink()
                continue
            if found != self.header.identity:
                if not overwrite:
                    raise ConfigMismatchError(_mismatch_message(path, str(found), self.header.identity))
                log.warning("--overwrite: deleting %s (hash %s)", path, found)
                path.unlink()
                continue
            # Format and identity first: a shard of another version or config is refused,
            # not mistaken for damage.
            problem = self._damage(path) if self.owns(path.name) else None
            if problem is not None:
                log.warning("%s: %s; deleting it, its images are redone in this run", path, problem)
                path.unlink(missing_ok=True)
                continue
            for image_id in ids:
                self._done[image_id] = path.name
            self._skipped.update(skipped)
            part, of, seq = map(int, match.groups())
            if part == self.shard_index and of == self.num_shards:
                self._next_seq = max(self._next_seq, seq + 1)
                own_seqs.add(seq)
        # Names of this part's shards that are gone (deleted as damaged): the images redone
        # go there first, so that the shards keep the order of an undamaged run (readers
        # list ids in shard-name order, and training draws its batches in that order).
        self._holes = sorted(set(range(self._next_seq)) - own_seqs)

    def done_ids(self) -> set[str]:
        """Ids finished by any process (written or skipped)."""
        return set(self._done) | set(self._skipped)

    def pending(self, all_ids: Iterable[str]) -> list[str]:
        """This process's ids that are not done yet, in the order given."""
        done = self.done_ids()
        return [i for i in all_ids
                if i not in done and shard_of(i, self.num_shards) == self.shard_index]

    @property
    def next_shard_name(self) -> str:
        """File name (in :attr:`shard_dir`) of the next shard :meth:`write_shard` writes."""
        seq = self._holes[0] if self._holes else self._next_seq
        return f"part{self.shard_index:03d}of{self.num_shards:03d}-{seq:05d}.h5"

    def write_shard(self, image_ids: Sequence[str], arrays: dict[str, np.ndarray], *,
                    skipped: dict[str, str] | None = None,
                    dataset_attrs: dict[str, dict[str, Any]] | None = None,
                    attrs: dict[str, Any] | None = None,
                    compression: dict[str, str | None] | None = None,
                    links: dict[str, str] | None = None) -> Path:
        """Write one shard atomically (as :attr:`next_shard_name`).

        Args:
            image_ids: N ids, row i of every array belongs to ``image_ids[i]``.
            arrays: name -> array with leading dimension N (stacked per image).
            skipped: ids given up on (bad images), id -> reason; recorded, not redone.
            dataset_attrs: name -> attributes of that dataset (units, shapes, conventions).
            attrs: extra root attributes.
            compression: name -> HDF5 filter (``"lzf"``, ``"gzip"``) or None (stored raw),
                overriding the default for that dataset (lzf for arrays of at least 1 KiB
                per image, raw otherwise).  Either way datasets of more than one dimension
                are chunked one image per chunk.
            links: name -> the file (in the shard folder) that holds dataset ``/name`` with
                one row per id, in this shard's order; stored as an HDF5 external link, so
                readers see ``name`` as a dataset of this shard.  For arrays already on disk
                (the pseudo-labels stage's feature grids), which are then never copied.
        """
        n = len(image_ids)
        for name, array in arrays.items():
            if len(array) != n:
                raise ValueError(f"array {name!r} has {len(array)} rows for {n} ids")
        name = self.next_shard_name
        path = self.shard_dir / name
        with atomic_h5(path) as handle:
            write_header_attrs(handle, self.header)
            handle.attrs["skipped_json"] = json.dumps(skipped or {}, sort_keys=True)
            for key, value in (attrs or {}).items():
                handle.attrs[key] = value
            handle.create_dataset("image_ids", data=np.array(list(image_ids), dtype=object),
                                  dtype=h5py.string_dtype())
            write_arrays(handle, arrays, compression=compression, dataset_attrs=dataset_attrs)
            for key, filename in (links or {}).items():
                # Resolved relative to this file's folder, so the stage folder can be moved.
                handle[key] = h5py.ExternalLink(filename, f"/{key}")
        self._checked.update([f"{SHARD_DIR}/{name}", *(f"{SHARD_DIR}/{f}" for f in (links or {}).values())])
        if self._holes:
            self._holes.pop(0)
        else:
            self._next_seq += 1
        for image_id in image_ids:
            self._done[image_id] = name
        self._skipped.update(skipped or {})
        return path

    def finish(self, all_ids: Sequence[str], *, extra: dict[str, Any] | None = None,
               also: Sequence[str] = ()) -> Path | None:
        """Write the manifest if every id is done (by any process); else return None.
        ``also``: the stage's other files (relative paths), recorded in its ``checksums``."""
        self._scan(overwrite=False)  # see other processes' shards
        missing = [i for i in all_ids if i not in self.done_ids()]
        if missing:
            log.info("%d images still to do by other shards; manifest not written yet", len(missing))
            return None
        files = sorted(f"{SHARD_DIR}/{p.name}" for p in self.shard_dir.glob("*.h5")
                       if is_shard_name(p.name))
        wanted = set(all_ids)
        extra = {"num_images": len(wanted - set(self._skipped)),
                 "skipped": {k: v for k, v in sorted(self._skipped.items()) if k in wanted},
                 **(extra or {})}
        write_manifest(self.directory, self.header, files=files, extra=extra, also=also)
        self.complete = True
        return self.manifest_path
