"""The ``tedloc.train`` artifact: ``<workdir>/train/`` and what its checkpoints hold.

Layout::

    <workdir>/train/manifest.json   written last
    <workdir>/train/last.pt         every epoch: head, optimizer, scheduler, epoch/step, RNG
                                    states, the per-epoch history, config and hashes (resume)
    <workdir>/train/best.pt         the epoch with the lowest mean training loss (no GT)
    <workdir>/train/model.pt        the best epoch's head with its map threshold
    <workdir>/train/train_log.csv   the history, rewritten atomically every epoch

Checkpoints are written and checked by :mod:`tedloc.artifacts.checkpoint`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tedloc.artifacts.atomic import atomic_path
from tedloc.artifacts.checkpoint import RETRAIN_HINT, load_checkpoint
from tedloc.artifacts.header import ArtifactHeader
from tedloc.artifacts.integrity import check_file
from tedloc.artifacts.manifest import clear_stage_dir, prepare_stage_dir
from tedloc.errors import ArtifactError, ConfigMismatchError

log = logging.getLogger(__name__)

FORMAT = "tedloc.train"
FORMAT_VERSION = 1
STAGE_DIR = "train"
LAST, BEST, MODEL, LOG = "last.pt", "best.pt", "model.pt", "train_log.csv"
LOG_FIELDS = ("epoch", "images", "loss", "loss_kd", "loss_p", "loss_i", "cls_acc", "patch_acc", "lr", "seconds", "best")
#: Files resuming cannot redo (training would start again): their damage is refused.
#: ``model.pt`` and ``train_log.csv`` are made again from them by a rerun.
PRECIOUS = (LAST, BEST)


def prepare_train_dir(stage_dir: Path, header: ArtifactHeader, overwrite: bool
                      ) -> tuple[bool, dict[str, Any] | None]:
    """(finished already, ``last.pt`` state to resume from or None); refuses other
    identities and damaged checkpoints (a damaged ``model.pt`` of a finished run is made
    again), unless ``overwrite``, which deletes the old training (logged)."""
    if prepare_stage_dir(stage_dir, header, overwrite=overwrite, precious=PRECIOUS):
        return True, None
    last = stage_dir / LAST
    if not last.exists():
        return False, None
    try:
        state = load_checkpoint(last)
        if (stage_dir / BEST).exists():  # read at the end: a damaged one must stop us now
            check_file(stage_dir / BEST, hint=RETRAIN_HINT)
        found = f"{state.get('config_hash')}/{state.get('upstream_hash')}"
        problem = None if found == header.identity else ConfigMismatchError(
            f"{last}: made with hash {found}, this run has {header.identity}; pass --overwrite to "
            "start again (the old checkpoints will be deleted), or use another --workdir")
    except ArtifactError as exc:
        state, problem = None, exc
    if problem is None:
        return False, state
    if not overwrite:
        raise problem
    log.warning("--overwrite: deleting the previous training in %s (%s)", stage_dir, problem)
    clear_stage_dir(stage_dir)
    return False, None


def write_train_log(path: Path, history: list[dict[str, Any]]) -> None:
    """``train_log.csv`` (columns :data:`LOG_FIELDS`) from the per-epoch history, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(LOG_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def model_state(head, *, config, header: ArtifactHeader, class_names, index, threshold: float | None
                ) -> dict[str, Any]:
    """What every checkpoint holds: the head's weights and config, the anchors, the classes,
    the encoder and grid it reads (from the pseudo-label ``index``), the map threshold (None
    while training), the config and hashes."""
    return {
        "head_state": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "head_config": head.config.to_dict(),
        "anchors": head.anchors.detach().cpu().clone(),
        "class_names": list(class_names),
        "encoder": index.encoder,
        "input_size": index.input_size,
        "inference_input_size": config.inference_input_size(index.input_size),
        "grid": list(index.grid),
        "threshold": threshold,
        "config": config.to_dict(),
        "config_hash": header.config_hash,
        "upstream_hash": header.upstream_hash,
    }


def rng_state() -> dict[str, Any]:
    """The RNG states of torch, numpy, Python (and CUDA), for ``last.pt``."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
             "python": list(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])
