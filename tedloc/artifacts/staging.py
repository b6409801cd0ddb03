"""Staging files of the pseudo-labels stage: what its single encoder pass produced, per
``shard_size`` images, until the maps are made.

``<stage dir>/encoded/partPPPofNNN-SSSSS.h5`` (format ``tedloc.pseudo_labels.encoded``, the
stage's hashes, written atomically by
:class:`~tedloc.artifacts.staging_writer.EncodedFileWriter`) holds ``image_ids``, ``label``,
``image_size``, ``pooled`` float32 (B, c) and, when the maps are made from staged grids,
``features`` / ``features_flip`` float16 (B, h, w, c), one image per chunk.  Root attribute
``contents`` lists the arrays; ``skipped_json`` the unreadable images.  When the final shards
cache the grids, a staging file is moved into ``shards/`` as ``partPPPofNNN-SSSSS.grids.h5``
and its shard links to its ``features`` / ``features_flip`` (HDF5 external links, resolved in
the shard's folder): the grids are written once.  Other staging files are deleted as the
shards holding their images are written, and the folder once the manifest is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from tedloc.artifacts.header import check_format, stored_identity, stored_image_ids
from tedloc.artifacts.integrity import file_problem
from tedloc.artifacts.manifest import owner_of
from tedloc.artifacts.pseudo_labels import SUPPORTED_VERSIONS
from tedloc.errors import ArtifactError, ConfigMismatchError

log = logging.getLogger(__name__)
ENCODED_DIR = "encoded"
ENCODED_FORMAT = "tedloc.pseudo_labels.encoded"
_ENCODED_RE = re.compile(r"^part(\d{3})of(\d{3})-(\d{5})\.h5$")
#: A shard's grid file: the promoted staging file whose grids the shard links to.
GRID_SUFFIX = ".grids.h5"
GRID_ARRAYS = ("features", "features_flip")


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
                file_identity = stored_identity(handle)
                ids = stored_image_ids(handle)
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

    The yielded array is a view of one reused buffer, valid until the next chunk is asked
    for: a staging file's grids are hundreds of MB, and a fresh array of that size costs
    more in page faults than the read itself.
    """
    path = Path(path)
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return
    try:
        with h5py.File(path, "r") as handle:
            dataset = handle[name]
            # Consecutive rows are read straight into the buffer; others through h5py's selection.
            contiguous = int(rows[-1] - rows[0]) + 1 == len(rows)
            buffer = np.empty((min(chunk, len(rows)), *dataset.shape[1:]), dataset.dtype)
            for start in range(0, len(rows), chunk):
                part = rows[start:start + chunk]
                if contiguous:
                    dataset.read_direct(buffer, np.s_[int(part[0]):int(part[-1]) + 1], np.s_[:len(part)])
                else:
                    buffer[:len(part)] = dataset[part]
                yield start, buffer[:len(part)]
    except (OSError, KeyError) as exc:
        raise ArtifactError(f"{path}: cannot read staged array {name!r} ({exc})") from None


def remove_encoded(directory: str | Path) -> None:
    """Delete ``<directory>/encoded`` (after the manifest is written: nothing needs it)."""
    folder = Path(directory) / ENCODED_DIR
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed the staging folder %s", folder)
