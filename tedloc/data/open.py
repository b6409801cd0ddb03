"""Open a dataset from a spec string, whatever its format."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tedloc.data.records import Dataset, Problems, strict_if_none
from tedloc.errors import InputError


def dataset_kind(spec: str) -> str:
    """Which reader ``spec`` goes to: ``demo``, ``hf``, ``wsol``, ``cub`` or ``imagefolder``."""
    if spec == "demo":
        return "demo"
    if spec.startswith("hf:"):
        return "hf"
    root = Path(spec)
    if not root.exists():
        raise InputError(root, "dataset not found (no such folder; Hugging Face datasets are given as hf:NAME)")
    if not root.is_dir():
        raise InputError(root, "a dataset is a folder (or hf:NAME), not a file")
    if (root / "metadata").is_dir():
        return "wsol"
    from tedloc.data.cub import is_cub

    if is_cub(root):
        return "cub"
    if any(p.is_dir() for p in root.iterdir()):
        return "imagefolder"
    raise InputError(root, "not a dataset this version can read (expected metadata/<split>/, "
                           "CUB's images.txt + classes.txt, or one subfolder per class)")


def open_dataset(spec: str, split: str, *, problems: Problems | None = None) -> Dataset:
    """Open ``split`` of the dataset named by ``spec``.

    ``spec`` forms (checked in this order):
      * ``demo``: the demo dataset bundled with tedloc (wsolevaluation layout);
      * ``hf:<name or path>[?image=..&label=..&boxes=..&box_format=xyxy|xywh]``: a Hugging
        Face dataset (see :mod:`tedloc.data.hf`);
      * a folder with ``metadata/<split>/`` (wsolevaluation layout, :mod:`tedloc.data.wsol`);
      * a folder with ``images.txt`` and ``classes.txt`` (CUB-200-2011, :mod:`tedloc.data.cub`);
      * a folder of class subfolders, optionally under ``<split>/`` (:mod:`tedloc.data.imagefolder`).

    By default the first problem raises :class:`InputError`; pass a collecting
    :class:`~tedloc.data.records.Problems` to gather them all (``tedloc data check``).
    """
    problems = strict_if_none(problems)
    kind = dataset_kind(spec)
    if kind == "demo":
        from tedloc.data.demo import demo_root
        from tedloc.data.wsol import read_wsol

        # Keep the spec "demo" (not the install path) so artifacts stay valid where tedloc moves.
        return dataclasses.replace(read_wsol(demo_root(), split, problems=problems), spec="demo")
    if kind == "hf":
        from tedloc.data.hf import read_hf

        return read_hf(spec, split, problems=problems)
    if kind == "wsol":
        from tedloc.data.wsol import read_wsol

        return read_wsol(spec, split, problems=problems)
    if kind == "cub":
        from tedloc.data.cub import read_cub

        return read_cub(spec, split, problems=problems)
    from tedloc.data.imagefolder import read_imagefolder

    return read_imagefolder(spec, split, problems=problems)
