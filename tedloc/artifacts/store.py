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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tedloc import __version__
from tedloc.artifacts import integrity
from tedloc.artifacts.atomic import atomic_h5, remove_stale_tmp, write_json_atomic
from tedloc.artifacts.lock import StageLock
from tedloc.errors import ArtifactError, ConfigMismatchError, DamagedFileError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARD_DIR = "shards"
_SHARD_RE = re.compile(r"^part(\d{3})of(\d{3})-(\d{5})\.h5$")
#: Files checked at once by :func:`stage_file_problems`.
_CHECK_THREADS = 3
#: The part a file of a multi-process run belongs to (shards, grid files, staging files).
_PART_RE = re.compile(r"^part(\d{3})of(\d{3})-")
#: Arrays at least this large per image are compressed (lzf: fast, always available in h5py).
_COMPRESS_MIN_BYTES = 1024


def is_shard_name(name: str) -> bool:
    """Whether a file name in ``shards/`` is a shard (``partPPPofNNN-SSSSS.h5``), not a file
    a shard links to."""
    return _SHARD_RE.match(name) is not None


@dataclasses.dataclass(frozen=True)
class ArtifactHeader:
    """What identifies an artifact: its format and the hashes of what produced it.

    ``format`` names the kind of artifact (``"tedloc.pseudo_labels"``); ``config_hash`` the
    stage config's fields that affect outputs; ``upstream_hash`` the artifacts it was
    computed from ("" for none).
    """

    format: str
    format_version: int
    config: dict[str, Any]
    config_hash: str
    upstream_hash: str = ""

    @property
    def identity(self) -> str:
        """The combined hash that decides whether existing results can be reused."""
        return f"{self.config_hash}/{self.upstream_hash}"

    def attrs(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "config_json": json.dumps(self.config, sort_keys=True),
            "config_hash": self.config_hash,
            "upstream_hash": self.upstream_hash,
            "tedloc_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def write_header_attrs(handle: h5py.File, header: ArtifactHeader) -> None:
    for key, value in header.attrs().items():
        handle.attrs[key] = value


def check_format(where: Path, found_format: Any, found_version: Any, expected_format: str,
                 supported_versions: Sequence[int]) -> None:
    """Refuse an artifact of another format or an unknown version."""
    if found_format != expected_format:
        raise ArtifactError(f"{where}: format is {found_format!r}, expected {expected_format!r}")
    try:
        version = int(found_version)
    except (TypeError, ValueError):
        raise ArtifactError(f"{where}: format_version {found_version!r} is not a number") from None
    if version not in supported_versions:
        raise ArtifactError(
            f"{where}: {expected_format} format_version {version} is not supported by tedloc "
            f"{__version__} (supports {', '.join(map(str, supported_versions))})"
        )


def stage_command(format_name: str) -> str:
    """The command that runs the stage of an artifact format: ``tedloc.pseudo_labels`` ->
    ``tedloc stage pseudo-labels``."""
    return "tedloc stage " + format_name.split(".")[1].replace("_", "-")


def redo_hint(format_name: str) -> str:
    """What to tell a user about a damaged file of a stage that redoes damaged files."""
    return f"rerun `{stage_command(format_name)}`, which redoes it"


def overwrite_hint(format_name: str) -> str:
    """What to tell a user about a damaged file that only a fresh run of the stage remakes."""
    return f"rerun `{stage_command(format_name)} --overwrite`"


def read_manifest(directory: str | Path, expected_format: str,
                  supported_versions: Sequence[int] = (1,)) -> dict[str, Any]:
    """Load and validate ``<directory>/manifest.json`` of a finished stage.

    Raises:
        DamagedFileError: the file is not valid JSON (cut short, bytes overwritten).
        ArtifactError: missing, or of another format or an unknown version.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        stage = expected_format.rpartition(".")[2].replace("_", "-")
        raise ArtifactError(f"{path}: not found; the {stage} stage has not finished here "
                            f"(run `tedloc stage {stage}` first, with this --workdir)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedFileError(path, f"damaged (not valid JSON: {exc})", redo_hint(expected_format)) from None
    if not isinstance(manifest, dict):
        raise DamagedFileError(path, "damaged (not a JSON object)", redo_hint(expected_format))
    check_format(path, manifest.get("format"), manifest.get("format_version"),
                 expected_format, supported_versions)
    return manifest


def linked_files(path: Path) -> list[str]:
    """Names of the files the HDF5 file ``path`` links to (external links at its root,
    resolved in its folder), relative to that folder."""
    with h5py.File(path, "r") as handle:
        links = [handle.get(name, getlink=True) for name in handle]
    return sorted({link.filename for link in links if isinstance(link, h5py.ExternalLink)})


def _with_links(directory: Path, names: Sequence[str]) -> list[str]:
    """``names`` (relative paths) and, after each HDF5 file, the files it links to."""
    out: dict[str, None] = {}
    for name in names:
        out[name] = None
        if name.endswith(".h5") and (directory / name).is_file():
            folder = Path(name).parent
            try:
                targets = linked_files(directory / name)
            except (OSError, KeyError):  # unreadable: found as damaged by its own check
                targets = []
            for target in targets:
                out[(folder / target).as_posix()] = None
    return list(out)


def write_manifest(directory: str | Path, header: ArtifactHeader, *, files: Sequence[str],
                   extra: dict[str, Any] | None = None, also: Sequence[str] = ()) -> Path:
    """Write the manifest that marks ``directory`` as finished (atomically, last).

    ``files`` (relative paths) are the stage's main files (for a sharded stage: its shards,
    which readers open); ``checksums`` records every file of the finished stage: ``files``,
    the files they link to, and ``also`` (:func:`tedloc.artifacts.integrity.file_record`).
    """
    directory = Path(directory)
    names = _with_links(directory, list(files)) + [n for n in also if n not in files]
    manifest = {
        "format": header.format,
        "format_version": header.format_version,
        "config": header.config,
        "config_hash": header.config_hash,
        "upstream_hash": header.upstream_hash,
        "tedloc_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": True,
        "files": list(files),
        "checksums": {name: integrity.file_record(directory / name) for name in dict.fromkeys(names)},
        **(extra or {}),
    }
    return write_json_atomic(directory / MANIFEST, manifest)


def owner_of(name: str, num_parts: int) -> int:
    """The process (of ``num_parts``) that checks a file: the part in its name
    (``partPPPofNNN-...``) when the run has that many parts, else the first."""
    match = _PART_RE.match(Path(name).name)
    if match is not None and int(match.group(2)) == num_parts:
        return int(match.group(1))
    return 0


def stage_files(directory: str | Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """relative path -> manifest record of every file of a finished stage (its
    ``checksums``; for a manifest of before checksums, its ``files`` and the files they
    link to, with empty records)."""
    directory = Path(directory)
    records = manifest.get("checksums")
    if isinstance(records, dict):
        return {str(k): (v if isinstance(v, dict) else {}) for k, v in records.items()}
    listed = [str(f) for f in manifest.get("files", [])]
    found = {name: {} for name in _with_links(directory, [n for n in listed if (directory / n).is_file()])}
    return {**found, **{name: {} for name in listed if name not in found}}


def stage_file_problems(directory: str | Path, manifest: dict[str, Any], *,
                        owns: Callable[[str], bool] | None = None) -> dict[str, str]:
    """relative path -> problem (:func:`tedloc.artifacts.integrity.file_problem`) of every
    missing or damaged file of a finished stage that ``owns`` accepts (default: all).

    A manifest of before checksums lists only ``files``: those, and the files they link
    to, are checked (HDF5 files without their own checksum only for existence).  A file
    whose linked file is damaged or missing is damaged too (a shard without its grids).
    """
    directory = Path(directory)
    records = stage_files(directory, manifest)
    names = [name for name in records if owns is None or owns(name)]
    # A few files at a time: reads and CRC-32s release the GIL, so one file's CRC runs
    # while another's next block comes from the disk (the demo's 590 MB of grid files:
    # 0.6-0.7 s instead of 1.0 s).
    with ThreadPoolExecutor(max_workers=_CHECK_THREADS, thread_name_prefix="tedloc-check") as pool:
        found = pool.map(lambda name: integrity.file_problem(directory / name, records[name]), names)
        problems = {name: problem for name, problem in zip(names, found, strict=True) if problem is not None}
    for name in manifest.get("files", []):
        if name in problems or not str(name).endswith(".h5") or (owns is not None and not owns(name)):
            continue
        folder = Path(name).parent
        try:
            targets = linked_files(directory / name)
        except (OSError, KeyError) as exc:
            problems[name] = f"unreadable ({' '.join(str(exc).split())})"
            continue
        for target in targets:
            problem = problems.get((folder / target).as_posix())
            if problem is None and (folder / target).as_posix() not in records:
                problem = integrity.file_problem(directory / folder / target)
            if problem is not None:
                problems[name] = f"damaged (the file it links to, {target}, is {problem.split(' (')[0]})"
                break
    return problems


def _mismatch_message(where: Path, found: str, wanted: str) -> str:
    return (
        f"{where}: existing results were made with hash {found}, this run has {wanted}; "
        "pass --overwrite to recompute them (the old results will be deleted), "
        "or use another --workdir"
    )


def prepare_stage_dir(directory: str | Path, header: ArtifactHeader, *,
                      supported_versions: Sequence[int] = (1,), overwrite: bool = False,
                      precious: Sequence[str] = (), owns: Callable[[str], bool] | None = None,
                      checked: set[str] | None = None) -> bool:
    """Check what a stage directory holds before (re)running the stage.

    Returns True when a finished artifact with the same identity exists and every file of
    it that ``owns`` accepts (default: all) passes its checksum: nothing to do.  A damaged
    or missing file is logged and deleted, after the manifest, and False is returned: the
    stage resumes and redoes it in this run.  A damaged manifest (not JSON) is treated the
    same way.  Files named in ``precious`` cannot be redone by resuming: their damage raises
    :class:`DamagedFileError` unless ``overwrite``, which deletes the old results (logged).
    Raises :class:`ConfigMismatchError` for a finished artifact of another identity, and
    :class:`ArtifactError` for an unknown format or version, unless ``overwrite``, which
    deletes the old contents (logged).  Stale ``*.tmp`` files are removed.  ``checked``
    receives the relative paths found intact.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for tmp in remove_stale_tmp(directory):
        log.info("removed unfinished file %s", tmp)
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        return False
    problem: Exception | None = None
    try:
        manifest = read_manifest(directory, header.format, supported_versions)
    except DamagedFileError as exc:
        log.warning("%s: %s; the stage resumes and writes it again", exc.path, exc.problem)
        manifest_path.unlink(missing_ok=True)
        return False
    except ArtifactError as exc:
        problem = exc
    if problem is None:
        found = f"{manifest.get('config_hash')}/{manifest.get('upstream_hash')}"
        if found == header.identity:
            return _finished_and_intact(directory, manifest, header, overwrite=overwrite, precious=precious,
                                        owns=owns, checked=checked)
        problem = ConfigMismatchError(_mismatch_message(manifest_path, found, header.identity))
    if not overwrite:
        raise problem
    log.warning("--overwrite: deleting the previous results in %s (%s)", directory, problem)
    clear_stage_dir(directory)
    return False


def _finished_and_intact(directory: Path, manifest: dict[str, Any], header: ArtifactHeader, *,
                         overwrite: bool, precious: Sequence[str], owns: Callable[[str], bool] | None,
                         checked: set[str] | None) -> bool:
    """The finished case of :func:`prepare_stage_dir`: True when every file checked is intact."""
    problems = stage_file_problems(directory, manifest, owns=owns)
    if checked is not None:
        checked.update(name for name in (manifest.get("checksums") or {})
                       if name not in problems and (owns is None or owns(name)))
    if not problems:
        return True
    lost = [name for name in problems if name in precious]
    if lost:
        error = DamagedFileError(directory / lost[0], problems[lost[0]], overwrite_hint(header.format))
        if not overwrite:
            raise error
        log.warning("--overwrite: deleting the previous results in %s (%s)", directory, error)
        clear_stage_dir(directory)
        return False
    # The manifest goes first: a kill from here on leaves an unfinished stage, which resumes.
    (directory / MANIFEST).unlink(missing_ok=True)
    for name, problem in problems.items():
        log.warning("%s: %s; %sredone in this run", directory / name, problem,
                    "" if problem.startswith("missing") else "deleting it, ")
        (directory / name).unlink(missing_ok=True)
    return False


def clear_stage_dir(directory: Path) -> None:
    """Delete a stage's results (manifest first, so that a kill midway leaves no 'finished')."""
    (directory / MANIFEST).unlink(missing_ok=True)
    for child in sorted(directory.iterdir()):
        if child.name.startswith(".lock"):
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


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
                    found = f"{handle.attrs.get('config_hash')}/{handle.attrs.get('upstream_hash')}"
                    ids = [s.decode() if isinstance(s, bytes) else s for s in handle["image_ids"][()]]
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
            ids = [s.decode() if isinstance(s, bytes) else s for s in handle["image_ids"][()]]
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
