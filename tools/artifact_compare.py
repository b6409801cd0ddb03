"""Compare two finished stage directories of the same stage, value by value.

Used by ``tools/kill_test.py`` (a resumed run against an uninterrupted one) and
``tools/same_outputs.py`` (this tree's code against another revision's).

"Equal" means: every per-image array equal (sharded stages, compared per image id, so a
different shard layout does not matter), every dataset of the stage's other HDF5 files
equal, the trained weights and the stored threshold equal, and for evaluate the metrics in
``results.json`` equal.  With ``strict`` also: the weights of ``last.pt`` and ``best.pt``,
their epochs, thresholds and threshold choices, the per-epoch history but for its
``seconds`` (wall time), the whole ``results.json`` and ``predictions.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

#: History entries that are measurements of time, not results.
TIMING_KEYS = ("seconds",)


def h5_datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by its path, external links at the root followed."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                          if isinstance(obj, h5py.Dataset) else None)
        for name in handle:  # external links (a shard's grids in its grid file): not visited above
            if isinstance(handle.get(name, getlink=True), h5py.ExternalLink):
                out[name] = handle[name][()]
    return out


def sharded_rows(stage_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """{dataset: {image id: row}} over all shards listed in the manifest."""
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    rows: dict[str, dict[str, np.ndarray]] = {}
    for rel in manifest["files"]:
        arrays = h5_datasets(stage_dir / rel)
        ids = [i.decode() if isinstance(i, bytes) else i for i in arrays.pop("image_ids")]
        for name, array in arrays.items():
            rows.setdefault(name, {}).update(zip(ids, array, strict=True))
    return rows


def arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape and the same values, to the bit for floats (NaN equal to NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=True))
    return a.shape == b.shape and bool(np.all(a == b))


def _rooted(text: str, roots: Sequence[Path]) -> str:
    """``text`` with each of ``roots`` (longest first) replaced by ``<root k>``."""
    for k, root in sorted(enumerate(roots), key=lambda item: -len(str(item[1]))):
        text = text.replace(str(root), f"<root {k}>")
    return text


def _checkpoint_difference(got: dict[str, Any], ref: dict[str, Any], name: str, *, strict: bool) -> str:
    """'' when two checkpoints hold the same model, else what differs."""
    import torch

    if got["head_state"].keys() != ref["head_state"].keys():
        return f"{name}: weights of other layers"
    for key, value in ref["head_state"].items():
        if not torch.equal(got["head_state"][key], value):
            return f"{name}: weight {key} differs"
    if got.get("threshold") != ref.get("threshold"):
        return f"{name}: stored threshold differs"
    if not strict:
        return ""
    if not torch.equal(got["anchors"], ref["anchors"]):
        return f"{name}: anchors differ"
    for key in ("epoch", "threshold_choice", "best", "class_names", "grid", "config_hash", "upstream_hash"):
        if got.get(key) != ref.get(key):
            return f"{name}: {key} differs"
    untimed = [[{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in c.get("history", [])]
               for c in (got, ref)]
    if untimed[0] != untimed[1]:
        return f"{name}: history differs"
    return ""


def artifacts_equal(stage: str, got: Path, ref: Path, *, strict: bool = False,
                    roots: tuple[Sequence[Path], Sequence[Path]] = ((), ())) -> tuple[bool, str]:
    """Compare a stage directory ``got`` with the reference ``ref``: (equal, what differs).

    ``roots``: the folders of each side (its workdir, its code) whose paths in text files
    (``results.json``: the checkpoint, the class-names file) stand for the same thing.
    """
    if (ref / "shards").is_dir():
        rows_got, rows_ref = sharded_rows(got), sharded_rows(ref)
        if rows_got.keys() != rows_ref.keys():
            return False, f"datasets differ: {sorted(rows_got)} vs {sorted(rows_ref)}"
        for name in rows_ref:
            if rows_got[name].keys() != rows_ref[name].keys():
                return False, f"{name}: image ids differ"
            for image_id, row in rows_ref[name].items():
                if not arrays_equal(rows_got[name][image_id], row):
                    return False, f"{name}[{image_id}] differs"
    for path in sorted(ref.glob("*.h5")):
        a, b = h5_datasets(got / path.name), h5_datasets(path)
        if a.keys() != b.keys() or not all(arrays_equal(a[k], b[k]) for k in b):
            return False, f"{path.name} differs"
    if stage == "train":
        from tedloc.artifacts.checkpoint import load_checkpoint

        for name in ("model.pt", "best.pt", "last.pt") if strict else ("model.pt",):
            why = _checkpoint_difference(load_checkpoint(got / name), load_checkpoint(ref / name), name,
                                         strict=strict)
            if why:
                return False, why
    if stage == "evaluate":
        a, b = (json.loads(_rooted((side / "results.json").read_text(), folders))
                for side, folders in ((got, roots[0]), (ref, roots[1])))
        if a.get("methods") != b.get("methods"):
            return False, "results.json metrics differ"
        if strict and a != b:
            return False, "results.json differs: " + ", ".join(sorted(k for k in b if a.get(k) != b[k]))
        if strict and (got / "predictions.jsonl").read_bytes() != (ref / "predictions.jsonl").read_bytes():
            return False, "predictions.jsonl differs"
    return True, ""
