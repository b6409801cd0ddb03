"""A stage directory's layout, its manifest (written last: the stage is finished iff it
exists) and the checks before a stage (re)runs in it.

Layout (e.g. ``<workdir>/pseudo_labels``)::

    manifest.json                      written last; ``checksums`` lists every file of the stage
    shards/part000of001-00000.h5       per-image arrays (:mod:`tedloc.artifacts.store`)
    .lock                              held by the one writer (``.lock-part003of008`` when sharded)

A finished stage with the same hashes is reused once its files pass their checksums; a
damaged or missing file is redone in the same run (the manifest is deleted first and
written again at the end), or, for a file the stage cannot redo (``precious``), refused
with a one-line error.  Different hashes are refused (naming both) unless ``overwrite``,
which deletes the old results with a warning.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py

from tedloc import __version__
from tedloc.artifacts import integrity
from tedloc.artifacts.atomic import remove_stale_tmp, write_json_atomic
from tedloc.artifacts.header import ArtifactHeader, check_format, overwrite_hint, redo_hint
from tedloc.errors import ArtifactError, ConfigMismatchError, DamagedFileError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARD_DIR = "shards"
_SHARD_RE = re.compile(r"^part(\d{3})of(\d{3})-(\d{5})\.h5$")
#: Files checked at once by :func:`stage_file_problems`.
_CHECK_THREADS = 3
#: The part a file of a multi-process run belongs to (shards, grid files, staging files).
_PART_RE = re.compile(r"^part(\d{3})of(\d{3})-")


def is_shard_name(name: str) -> bool:
    """Whether a file name in ``shards/`` is a shard (``partPPPofNNN-SSSSS.h5``), not a file
    a shard links to."""
    return _SHARD_RE.match(name) is not None


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
