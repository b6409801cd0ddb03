"""The ``tedloc.pseudo_labels`` artifact: reading it, and the CAM classifier file.

Layout (docs/ARCHITECTURE.md)::

    <workdir>/pseudo_labels/manifest.json
    <workdir>/pseudo_labels/shards/*.h5        image_ids, label, image_size, cam, pseudo_box,
                                               [features, features_flip: links to *.grids.h5]
    <workdir>/pseudo_labels/cam_classifier.h5  weight float32 (C, c), bias float32 (C,)
    <workdir>/pseudo_labels/encoded/*.h5       while the stage runs: staged encoder outputs

``cam_classifier.h5`` is written before any shard and carries the stage's identity, so a
resumed run reuses it instead of refitting (refitting could change the maps already written).

``encoded/`` and the grid files are described in :mod:`tedloc.artifacts.staging`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tedloc.artifacts.atomic import TMP_SUFFIX, atomic_h5
from tedloc.artifacts.integrity import check_file
from tedloc.artifacts.store import (
    MANIFEST,
    ArtifactHeader,
    ShardedReader,
    check_format,
    overwrite_hint,
    write_header_attrs,
)
from tedloc.errors import ArtifactError

log = logging.getLogger(__name__)
FORMAT = "tedloc.pseudo_labels"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
STAGE_DIR = "pseudo_labels"
CLASSIFIER_FILE = "cam_classifier.h5"
CLASSIFIER_FORMAT = "tedloc.cam_classifier"



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
