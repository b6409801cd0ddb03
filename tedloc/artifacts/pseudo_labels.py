"""The ``tedloc.pseudo_labels`` artifact: reading it, and the CAM classifier file.

Layout (docs/ARCHITECTURE.md)::

    <workdir>/pseudo_labels/manifest.json
    <workdir>/pseudo_labels/shards/*.h5        image_ids, label, image_size, cam, pseudo_box,
                                               [features, features_flip: links to *.grids.h5]
    <workdir>/pseudo_labels/cam_classifier.h5  weight float32 (C, c), bias float32 (C,)
    <workdir>/pseudo_labels/encoded/*.h5       while the stage runs: staged encoder outputs

``cam_classifier.h5`` is written before any shard and carries the stage's identity, so a
resumed run reuses it instead of refitting (refitting could change the maps already written).

``encoded/partPPPofNNN-SSSSS.h5`` (format ``tedloc.pseudo_labels.encoded``, the stage's
hashes, one file per ``shard_size`` images, written atomically; :class:`EncodedFileWriter`)
holds what the single encoder pass produced for its images: ``image_ids``, ``label``,
``image_size``, ``pooled`` float32 (B, c) and, when the maps are made from staged grids,
``features`` / ``features_flip`` float16 (B, h, w, c), one image per chunk.  Root attribute
``contents`` lists the arrays; ``skipped_json`` the unreadable images.  When the final
shards cache the grids, a staging file is moved into ``shards/`` as
``partPPPofNNN-SSSSS.grids.h5`` and its shard links to its ``features`` / ``features_flip``
(HDF5 external links, resolved in the shard's folder): the grids are written once.  Other
staging files are deleted as the shards holding their images are written, and the folder
once the manifest is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tedloc.artifacts.atomic import TMP_SUFFIX, BackgroundCommitter, atomic_h5
from tedloc.artifacts.direct_io import (
    ALIGN,
    DirectRows,
    direct_dataset_options,
    open_direct_rows,
    open_direct_writer,
    row_chunk_offsets,
)
from tedloc.artifacts.integrity import check_file, file_problem
from tedloc.artifacts.store import (
    MANIFEST,
    ArtifactHeader,
    ShardedReader,
    check_format,
    overwrite_hint,
    owner_of,
    write_arrays,
    write_header_attrs,
)
from tedloc.errors import ArtifactError, ConfigMismatchError

log = logging.getLogger(__name__)
FORMAT = "tedloc.pseudo_labels"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
STAGE_DIR = "pseudo_labels"
CLASSIFIER_FILE = "cam_classifier.h5"
CLASSIFIER_FORMAT = "tedloc.cam_classifier"
ENCODED_DIR = "encoded"
ENCODED_FORMAT = "tedloc.pseudo_labels.encoded"
_ENCODED_RE = re.compile(r"^part(\d{3})of(\d{3})-(\d{5})\.h5$")
#: A shard's grid file: the promoted staging file whose grids the shard links to.
GRID_SUFFIX = ".grids.h5"
GRID_ARRAYS = ("features", "features_flip")


def stage_dir(workdir_or_dir: str | Path) -> Path:
    """``<workdir>/pseudo_labels`` from a workdir, or the stage directory itself."""
    path = Path(workdir_or_dir)
    if (path / MANIFEST).exists() or path.name == STAGE_DIR or (path / "shards").is_dir():
        return path
    return path / STAGE_DIR


@dataclasses.dataclass
class CamClassifier:
    """Linear classifier on pooled features: ``logits = pooled @ weight.T + bias``.

    Attributes:
        weight: float32 (C, c).  bias: float32 (C,).  attrs: the file's root attributes.
    """

    weight: np.ndarray
    bias: np.ndarray
    attrs: dict[str, Any]

    @property
    def identity(self) -> str:
        return f"{self.attrs.get('config_hash')}/{self.attrs.get('upstream_hash')}"


def write_classifier_once(path: str | Path, header: ArtifactHeader, weight: np.ndarray, bias: np.ndarray,
                          attrs: dict[str, Any] | None = None) -> bool:
    """Write the classifier file atomically unless it exists; True if this call created it.

    Exclusive creation (``os.link`` of the finished temporary file fails when the name
    exists), so that among processes fitting concurrently exactly one file wins and every
    process then reads that one.
    """
    path = Path(path)
    # A finished candidate under a *.tmp name (cleaned up as debris if we are killed),
    # then published by hard link, which fails when another process already published.
    candidate = path.with_name(f"{path.name}.candidate.{os.getpid()}{TMP_SUFFIX}")
    try:
        with atomic_h5(candidate) as handle:
            write_header_attrs(handle, header)
            handle.attrs["format"] = CLASSIFIER_FORMAT
            for key, value in (attrs or {}).items():
                handle.attrs[key] = value
            handle.create_dataset("weight", data=np.asarray(weight, np.float32))
            handle.create_dataset("bias", data=np.asarray(bias, np.float32))
        try:
            os.link(candidate, path)
            return True
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()


def read_classifier(workdir_or_path: str | Path) -> CamClassifier:
    """Load ``cam_classifier.h5`` (a path to it, its stage directory or the workdir).

    Raises:
        DamagedFileError: the file fails its checksum (only a fresh run remakes it: the
            pseudo-labels' maps were made with it).
        ArtifactError: missing, unreadable, or of another format.
    """
    path = Path(workdir_or_path)
    if path.is_dir():
        path = stage_dir(path) / CLASSIFIER_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; run the pseudo-labels stage first")
    check_file(path, hint=overwrite_hint(FORMAT))
    try:
        with h5py.File(path, "r") as handle:
            check_format(path, handle.attrs.get("format"), handle.attrs.get("format_version"),
                         CLASSIFIER_FORMAT, SUPPORTED_VERSIONS)
            return CamClassifier(weight=handle["weight"][()], bias=handle["bias"][()], attrs=dict(handle.attrs))
    except (OSError, KeyError) as exc:
        raise ArtifactError(f"{path}: unreadable classifier file ({exc})") from None


class PseudoLabels(ShardedReader):
    """A finished pseudo-labels artifact (``ShardedReader`` plus the manifest's facts).

    ``read("cam", image_id)`` -> float16 (h, w); ``read("features", id)`` -> float16
    (h, w, c) when ``has_features``; ``read_all("label")`` -> int64 (N,) in ``ids`` order.
    """

    def __init__(self, workdir_or_dir: str | Path, *, allow_partial: bool = False, verify: bool = False):
        super().__init__(stage_dir(workdir_or_dir), FORMAT, supported_versions=SUPPORTED_VERSIONS,
                         allow_partial=allow_partial, verify=verify)

    def _fact(self, key: str, default: Any = None) -> Any:
        return (self.manifest or {}).get(key, default)

    @property
    def encoder(self) -> str:
        return self._fact("encoder")

    @property
    def input_size(self) -> int:
        return int(self._fact("input_size"))

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self._fact("grid"))

    @property
    def feature_dim(self) -> int:
        return int(self._fact("feature_dim"))

    @property
    def has_features(self) -> bool:
        return bool(self._fact("has_features", False))

    @property
    def has_flip_features(self) -> bool:
        return bool(self._fact("has_flip_features", False))

    @property
    def identity(self) -> str:
        """``config_hash/upstream_hash``: what downstream stages put in their upstream hash."""
        return f"{self._fact('config_hash')}/{self._fact('upstream_hash')}"

    def classifier(self) -> CamClassifier:
        return read_classifier(self.directory / CLASSIFIER_FILE)


def open_pseudo_labels(workdir_or_dir: str | Path, *, verify: bool = True) -> PseudoLabels:
    """Open the finished artifact under ``<workdir>/pseudo_labels`` (ArtifactError if
    unfinished).  With ``verify`` every shard must pass its checksum (DamagedFileError
    naming it); the grid files they link to are checked by ``verify_linked()``."""
    return PseudoLabels(workdir_or_dir, verify=verify)


# ----------------------------------------------------------------------------- staged encoder outputs

@dataclasses.dataclass
class EncodedFile:
    """Index entry of one staging file (its arrays are read with :func:`read_encoded`).

    Attributes:
        path: the file.  part, num_parts, seq: from its name.
        ids: image ids of its rows.  skipped: id -> reason for its unreadable images.
        contents: names of its per-image arrays.
    """

    path: Path
    part: int
    num_parts: int
    seq: int
    ids: list[str]
    skipped: dict[str, str]
    contents: tuple[str, ...]


def encoded_path(directory: str | Path, part: int, num_parts: int, seq: int) -> Path:
    """``<stage dir>/encoded/partPPPofNNN-SSSSS.h5``."""
    return Path(directory) / ENCODED_DIR / f"part{part:03d}of{num_parts:03d}-{seq:05d}.h5"


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

    With ``background``, an append's grids are written by a thread of the writer's own
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
        background: write the grids in a thread (see above).
    """

    def __init__(self, path: str | Path, header: ArtifactHeader, *, part: int, num_parts: int, seq: int,
                 grid_compression: str | None = None, expected_grid_bytes: int = 0,
                 dataset_attrs: dict[str, dict[str, Any]] | None = None,
                 committer: BackgroundCommitter | None = None, background: bool = False):
        self.path = Path(path)
        self.entry = EncodedFile(path=self.path, part=part, num_parts=num_parts, seq=seq, ids=[],
                                 skipped={}, contents=())
        self.header = header
        self.grid_compression = grid_compression
        self.dataset_attrs = dataset_attrs or {}
        self._small: dict[str, list[np.ndarray]] = {}
        self._context = atomic_h5(self.path, size_hint=expected_grid_bytes, committer=committer,
                                  align_large=ALIGN if grid_compression is None else 1)
        self._handle = self._context.__enter__()
        self._open = True
        # Unfiltered grids in a file on disk are written past the page cache (direct_io).
        self._direct = open_direct_writer(self._handle) if grid_compression is None else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tedloc-staging") if background else None
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
                self._append_grid(name, array)
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

    def _append_grid(self, name: str, array: np.ndarray) -> None:
        dset = self._handle.get(name)
        if dset is None:
            row = array.shape[1:]
            dset = self._handle.create_dataset(name, shape=(0, *row), maxshape=(None, *row), dtype=array.dtype,
                                               chunks=(1, *row), compression=self.grid_compression,
                                               dcpl=direct_dataset_options() if self._direct else None)
            for key, value in self.dataset_attrs.get(name, {}).items():
                dset.attrs[key] = value
        start = len(dset)
        dset.resize(start + len(array), axis=0)
        if not len(array):
            return
        offsets = row_chunk_offsets(dset, range(start, start + len(array))) if self._direct else None
        if offsets is not None:
            self._direct.write(offsets, array)
        else:
            dset[start:] = array

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
            self._close_direct()
            self._context.__exit__(type(exc), exc, exc.__traceback__)  # deletes the temporary file
            raise
        self._close_direct()  # its writes reach the disk with the commit's fsync
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
            self._close_direct()
            self._context.__exit__(_Aborted, _Aborted(), None)

    def _close_direct(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None

    def __enter__(self) -> EncodedFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._open:
            self.close()


def grid_file_name(shard_name: str) -> str:
    """The grid file beside shard ``partPPPofNNN-SSSSS.h5``: ``partPPPofNNN-SSSSS.grids.h5``."""
    return shard_name[:-len(".h5")] + GRID_SUFFIX


def promote_to_grid_file(staged: Path, shard_dir: Path, shard_name: str) -> str:
    """Move a staging file into ``shard_dir`` as the grid file of shard ``shard_name``
    (atomic rename, no copy); return the grid file's name.  The shard, written next, links
    to its ``features``/``features_flip``."""
    name = grid_file_name(shard_name)
    os.replace(staged, shard_dir / name)
    return name


def recover_orphan_grid_files(directory: str | Path, shard_dir: Path, part: int, num_parts: int) -> list[Path]:
    """Move this part's grid files whose shard was never written (a kill between the two
    steps of a promotion) back into ``encoded/`` as staging files, after the part's other
    staging files; return their new paths.  Run before scanning the staging files."""
    prefix = f"part{part:03d}of{num_parts:03d}-"
    orphans = [p for p in sorted(shard_dir.glob(f"{prefix}*{GRID_SUFFIX}"))
               if not (shard_dir / (p.name[:-len(GRID_SUFFIX)] + ".h5")).exists()]
    if not orphans:
        return []
    folder = Path(directory) / ENCODED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    seqs = [int(m.group(3)) for m in (_ENCODED_RE.match(p.name) for p in folder.glob(f"{prefix}*.h5")) if m]
    moved = []
    for seq, orphan in enumerate(orphans, start=max(seqs, default=-1) + 1):
        target = encoded_path(directory, part, num_parts, seq)
        log.info("%s has no shard (interrupted); staging it again as %s", orphan, target)
        os.replace(orphan, target)
        moved.append(target)
    return moved


def scan_encoded(directory: str | Path, identity: str, *, overwrite: bool = False, part: int = 0,
                 num_parts: int = 1) -> list[EncodedFile]:
    """Index the staging files under ``<directory>/encoded`` (sorted by name).

    A file of another identity raises :class:`ConfigMismatchError` (the same rule as the
    shards: never reuse or delete silently) unless ``overwrite``, which deletes it.  An
    unreadable file, or one of process ``part`` (of ``num_parts``; each process checks its
    own) that fails its checksum, is damage from outside (they appear atomically): it is
    deleted with a warning, and its images are encoded again.
    """
    folder = Path(directory) / ENCODED_DIR
    found: list[EncodedFile] = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.h5")):
        match = _ENCODED_RE.match(path.name)
        if match is None:
            continue
        try:
            with h5py.File(path, "r") as handle:
                check_format(path, handle.attrs.get("format"), handle.attrs.get("format_version"),
                             ENCODED_FORMAT, SUPPORTED_VERSIONS)
                file_identity = f"{handle.attrs.get('config_hash')}/{handle.attrs.get('upstream_hash')}"
                ids = [s.decode() if isinstance(s, bytes) else s for s in handle["image_ids"][()]]
                skipped = json.loads(handle.attrs.get("skipped_json", "{}"))
                contents = tuple(json.loads(handle.attrs.get("contents", "[]")))
        except FileNotFoundError:
            continue  # deleted meanwhile by the process that owns it
        except (OSError, KeyError, ValueError) as exc:
            log.warning("%s: unreadable staging file (%s); deleting it, its images will be encoded again",
                        path, exc)
            path.unlink(missing_ok=True)
            continue
        if file_identity != identity:
            if not overwrite:
                raise ConfigMismatchError(
                    f"{path}: staged by a run with hash {file_identity}, this run has {identity}; "
                    "pass --overwrite to recompute (the old results will be deleted)")
            log.warning("--overwrite: deleting %s (hash %s)", path, file_identity)
            path.unlink(missing_ok=True)
            continue
        file_part, file_parts, seq = map(int, match.groups())
        problem = file_problem(path) if owner_of(path.name, num_parts) == part else None
        if problem is not None:
            log.warning("%s: %s; deleting it, its images will be encoded again", path, problem)
            path.unlink(missing_ok=True)
            continue
        found.append(EncodedFile(path=path, part=file_part, num_parts=file_parts, seq=seq, ids=ids,
                                 skipped=skipped, contents=contents))
    return found


def read_encoded(path: str | Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named arrays of one staging file (whole, in row order)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            return {name: handle[name][()] for name in names}
    except (OSError, KeyError) as exc:
        raise ArtifactError(f"{path}: cannot read staged arrays {list(names)} ({exc})") from None


def read_encoded_chunks(path: str | Path, name: str, rows: Sequence[int], chunk: int
                        ) -> Iterator[tuple[int, np.ndarray]]:
    """Rows ``rows`` (ascending) of the array ``name`` of one staging file, ``chunk`` rows at
    a time: yields (position of the chunk's first row in ``rows``, array (k, ...)).

    The yielded array is a view of a reused buffer, valid until the next chunk is asked
    for: a staging file's grids are hundreds of MB, and a fresh array of that size costs
    more in page faults than the read itself (measured on a VM: ~3 ms per MB touched for
    the first time, against ~0.2 ms per MB read from the page cache).

    Unfiltered grids are read straight from the disk (:mod:`tedloc.artifacts.direct_io`)
    by a thread one chunk ahead of the caller, into two alternating buffers; anything else
    through h5py.
    """
    path = Path(path)
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return
    try:
        with h5py.File(path, "r") as handle:
            dataset = handle[name]
            size = min(chunk, len(rows))
            direct = open_direct_rows(path, dataset, rows, size)
            if direct is not None:
                with direct:
                    buffers = [np.empty((size, *dataset.shape[1:]), dataset.dtype) for _ in range(2)]
                    try:  # the first read tells whether the disk takes direct reads at all
                        direct.read(0, size, buffers[0])
                    except OSError:
                        direct = None
                    if direct is not None:
                        yield from _direct_chunks(direct, len(rows), size, buffers)
                        return
            yield from _h5py_chunks(dataset, rows, size)
    except (OSError, KeyError) as exc:
        raise ArtifactError(f"{path}: cannot read staged array {name!r} ({exc})") from None


def _direct_chunks(direct: DirectRows, count: int, chunk: int, buffers: list[np.ndarray]
                   ) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`read_encoded_chunks` from direct reads, the first chunk already in
    ``buffers[0]``: while the caller works on chunk k (in one buffer), a thread reads
    chunk k + 1 into the other, so the wait on the disk hides behind the caller's work."""
    starts = list(range(0, count, chunk))

    def read(k: int) -> None:
        direct.read(starts[k], min(starts[k] + chunk, count), buffers[k % 2])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tedloc-read") as reader:
        for k, start in enumerate(starts):
            ahead = reader.submit(read, k + 1) if k + 1 < len(starts) else None
            yield start, buffers[k % 2][:min(chunk, count - start)]
            if ahead is not None:
                ahead.result()


def _h5py_chunks(dataset: h5py.Dataset, rows: np.ndarray, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`read_encoded_chunks` through h5py, into one buffer."""
    # Consecutive rows are read straight into the buffer; others through h5py's selection.
    contiguous = int(rows[-1] - rows[0]) + 1 == len(rows)
    buffer = np.empty((chunk, *dataset.shape[1:]), dataset.dtype)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        if contiguous:
            dataset.read_direct(buffer, np.s_[int(part[0]):int(part[-1]) + 1], np.s_[:len(part)])
        else:
            buffer[:len(part)] = dataset[part]
        yield start, buffer[:len(part)]


def remove_encoded(directory: str | Path) -> None:
    """Delete ``<directory>/encoded`` (after the manifest is written: nothing needs it)."""
    folder = Path(directory) / ENCODED_DIR
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed the staging folder %s", folder)
