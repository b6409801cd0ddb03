"""What identifies an artifact: its format, version and the hashes of what produced it,
as stored in every HDF5 file's root attributes and every manifest; and the hints a message
about a damaged file gives (which command redoes it)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py

from tedloc import __version__
from tedloc.errors import ArtifactError


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


def stored_identity(handle: h5py.File) -> str:
    """The :attr:`ArtifactHeader.identity` an HDF5 file was written with (``"None/None"``
    for a file without header attributes, which matches no run)."""
    return f"{handle.attrs.get('config_hash')}/{handle.attrs.get('upstream_hash')}"


def stored_image_ids(handle: h5py.File) -> list[str]:
    """The file's ``image_ids`` dataset as str, in row order."""
    return [s.decode() if isinstance(s, bytes) else s for s in handle["image_ids"][()]]


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
