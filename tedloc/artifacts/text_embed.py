"""Read and write ``<workdir>/text_embed/text_embed.h5`` (format ``tedloc.text_embed``, v1).

Datasets: ``class_names`` str (C,) in label order (the dataset's names), ``prompt_names``
str (C,) (the names put into the templates, after the optional class-name map),
``templates`` str (T,), ``raw`` float32 (C, d) L2-normalized template-averaged class
embeddings, ``anchors`` float32 (C, d) the anchors used for training.
Root attributes: the artifact header plus ``text_encoder``, ``encoder_fingerprint``,
``orthogonalization`` (``qr`` / ``qr-whiten`` / ``none``), ``mean_abs_cos_before``,
``mean_abs_cos_after``, ``num_classes``, ``dim``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tedloc.artifacts.atomic import atomic_h5
from tedloc.artifacts.integrity import check_file
from tedloc.artifacts.store import (
    MANIFEST,
    ArtifactHeader,
    check_format,
    read_manifest,
    redo_hint,
    write_header_attrs,
)
from tedloc.errors import ArtifactError

FORMAT = "tedloc.text_embed"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
STAGE_DIR = "text_embed"
FILE_NAME = "text_embed.h5"


@dataclasses.dataclass(frozen=True)
class TextEmbedArtifact:
    """A finished text-embed artifact, loaded into memory.

    Attributes:
        class_names: C names in label order (as the dataset names them).
        prompt_names: C names as put into the prompts.
        templates: T prompt templates (``{}`` = class name).
        raw: float32 (C, d), unit rows: template-averaged class embeddings.
        anchors: float32 (C, d), unit rows: what training aligns patches with.
        identity: ``config_hash/upstream_hash`` of the artifact (for downstream hashes).
        attrs: the file's root attributes (encoder, fingerprint, branch, cosines, header).
        path: the HDF5 file.
    """

    class_names: list[str]
    prompt_names: list[str]
    templates: list[str]
    raw: np.ndarray
    anchors: np.ndarray
    identity: str
    attrs: dict[str, Any]
    path: Path

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dim(self) -> int:
        return int(self.anchors.shape[1])


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=object)


def write_text_embed(path: str | Path, header: ArtifactHeader, *, class_names: Sequence[str],
                     prompt_names: Sequence[str], templates: Sequence[str], raw: np.ndarray,
                     anchors: np.ndarray, attrs: dict[str, Any]) -> Path:
    """Write the HDF5 file atomically (it appears at ``path`` only when complete)."""
    raw = np.asarray(raw, dtype=np.float32)
    anchors = np.asarray(anchors, dtype=np.float32)
    c = len(class_names)
    if raw.ndim != 2 or raw.shape[0] != c or anchors.shape != raw.shape or len(prompt_names) != c:
        raise ValueError(f"inconsistent shapes: {c} classes, {len(prompt_names)} prompt names, "
                         f"raw {raw.shape}, anchors {anchors.shape}")
    path = Path(path)
    string = h5py.string_dtype()
    with atomic_h5(path) as handle:
        write_header_attrs(handle, header)
        for key, value in attrs.items():
            handle.attrs[key] = value
        handle.attrs["num_classes"] = c
        handle.attrs["dim"] = raw.shape[1]
        handle.create_dataset("class_names", data=_strings(class_names), dtype=string)
        handle.create_dataset("prompt_names", data=_strings(prompt_names), dtype=string)
        handle.create_dataset("templates", data=_strings(templates), dtype=string)
        dset = handle.create_dataset("raw", data=raw)
        dset.attrs["meaning"] = "L2-normalized template-averaged class embeddings (C, d), label order"
        dset = handle.create_dataset("anchors", data=anchors)
        dset.attrs["meaning"] = "orthogonalized anchors (C, d), unit rows, label order"
    return path


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def stage_dir(workdir_or_dir: str | Path) -> Path:
    """The text-embed stage directory given a workdir, the stage directory or the .h5 file."""
    path = Path(workdir_or_dir)
    if path.is_file() and path.name == FILE_NAME:
        return path.parent
    if (path / MANIFEST).exists() or path.name == STAGE_DIR:
        return path
    return path / STAGE_DIR


def read_text_embed(workdir_or_dir: str | Path) -> TextEmbedArtifact:
    """Load a finished text-embed artifact (a workdir, its ``text_embed/`` or the .h5 file).

    Raises:
        DamagedFileError: the file is missing or fails its checksum.
        ArtifactError: not finished (no manifest), unknown format or version, missing data.
    """
    directory = stage_dir(workdir_or_dir)
    manifest = read_manifest(directory, FORMAT, SUPPORTED_VERSIONS)
    path = directory / FILE_NAME
    check_file(path, (manifest.get("checksums") or {}).get(FILE_NAME), hint=redo_hint(FORMAT))
    try:
        handle = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as exc:
        raise ArtifactError(f"{path}: cannot open ({exc})") from None
    with handle:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in handle.attrs.items()}
        check_format(path, attrs.get("format"), attrs.get("format_version"), FORMAT, SUPPORTED_VERSIONS)
        identity = f"{attrs.get('config_hash')}/{attrs.get('upstream_hash')}"
        wanted = f"{manifest.get('config_hash')}/{manifest.get('upstream_hash')}"
        if identity != wanted:
            raise ArtifactError(f"{path}: hash {identity} does not match its manifest ({wanted})")
        try:
            artifact = TextEmbedArtifact(
                class_names=_decode(handle["class_names"][()]),
                prompt_names=_decode(handle["prompt_names"][()]),
                templates=_decode(handle["templates"][()]),
                raw=handle["raw"][()].astype(np.float32),
                anchors=handle["anchors"][()].astype(np.float32),
                identity=identity,
                attrs=attrs,
                path=path,
            )
        except KeyError as exc:
            raise ArtifactError(f"{path}: missing dataset ({exc})") from None
    if artifact.raw.shape != artifact.anchors.shape or len(artifact.class_names) != len(artifact.raw):
        raise ArtifactError(f"{path}: inconsistent shapes: {len(artifact.class_names)} classes, "
                            f"raw {artifact.raw.shape}, anchors {artifact.anchors.shape}")
    return artifact
