"""Checkpoints: ``torch.save`` to a temporary file, then ``os.replace`` into place.

A checkpoint is torch's zip format, which holds a CRC-32 of each record; torch never
checks them, :func:`load_checkpoint` does before unpickling anything
(:func:`tedloc.artifacts.integrity.checkpoint_problem`), so a file cut short or with bytes
changed is refused in one line naming it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from tedloc.artifacts.atomic import write_bytes_atomic
from tedloc.artifacts.integrity import checkpoint_problem
from tedloc.errors import ArtifactError, DamagedFileError

CHECKPOINT_FORMAT = "tedloc.checkpoint"
#: What to do about a damaged checkpoint that only a fresh training makes again.
RETRAIN_HINT = "rerun `tedloc stage train --overwrite`"


def damage_hint(path: Path) -> str:
    """What to do about a damaged checkpoint: the train stage makes ``model.pt`` again from
    ``last.pt`` and ``best.pt``; the others need a fresh training."""
    if path.name == "model.pt":
        return "rerun `tedloc stage train`, which makes it again from last.pt and best.pt"
    return RETRAIN_HINT


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

    Its records are checked against their CRC-32 first (:class:`DamagedFileError` naming
    the file, with :func:`damage_hint`).  Loaded with ``weights_only=True``: checkpoints hold only
    tensors and plain Python values (RNG states included), so no pickled code is ever
    executed.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: checkpoint not found")
    data = path.read_bytes()  # checked and loaded from the same bytes
    problem = checkpoint_problem(data)
    if problem is not None:
        raise DamagedFileError(path, problem, damage_hint(path))
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling error becomes one line
        # torch's messages run to several lines of advice (weights_only=False, ...): not
        # for a file that is not a tedloc checkpoint, so only their first sentence is kept.
        if "Weights only load failed" in str(exc):
            reason = "it holds objects other than tensors and plain values"
        else:
            reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0].split('. ')[0][:200]}"
        raise ArtifactError(f"{path}: not a tedloc checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{path}: not a tedloc checkpoint")
    return state
