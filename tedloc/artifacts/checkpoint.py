"""Checkpoints: ``torch.save`` to a temporary file, then ``os.replace`` into place."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from tedloc.artifacts.atomic import write_bytes_atomic
from tedloc.errors import ArtifactError

CHECKPOINT_FORMAT = "tedloc.checkpoint"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically to ``path``.

    Serialized in memory first (a head's checkpoint is a few MB): ``torch.save`` to a file
    name writes from C++, and on a full disk fails with "unexpected pos ..." instead of
    saying that the disk is full.
    """
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    return write_bytes_atomic(path, buffer.getbuffer())


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Loaded with ``weights_only=True``: checkpoints hold only tensors and plain Python
    values (RNG states included), so no pickled code is ever executed.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling error becomes one line
        raise ArtifactError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{path}: not a tedloc checkpoint")
    return state
