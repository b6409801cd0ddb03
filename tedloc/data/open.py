"""Open a dataset from a spec string, whatever its format."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tedloc.data.records import Dataset, Problems, strict_if_none
from tedloc.errors import InputError


def dataset_kind(spec: str, metadata: str | Path | None = None) -> str:
    """Which reader ``spec`` goes to: ``demo``, ``hf``, ``wsol``, ``cub`` or ``imagefolder``
    (``wsol`` whenever a ``metadata`` folder is given)."""
    if metadata and (spec == "demo" or spec.startswith("hf:")):
        raise InputError(metadata, f"--metadata is for a wsolevaluation layout kept apart from its images: "
                                   f"give --dataset the folder the image ids are relative to, not {spec!r}")
    if metadata and not Path(metadata).is_dir():
        raise InputError(metadata, "metadata folder not found (expected <split>/image_ids.txt inside)")
    if spec == "demo":
        return "demo"
    if spec.startswith("hf:"):
        return "hf"
    root = Path(spec)
    if not root.exists():
        raise InputError(root, "dataset not found (no such folder; Hugging Face datasets are given as hf:NAME)")
    if not root.is_dir():
        raise InputError(root, "a dataset is a folder (or hf:NAME), not a file")
    if metadata or (root / "metadata").is_dir():
        return "wsol"
    from tedloc.data.cub import is_cub

    if is_cub(root):
        return "cub"
    if any(p.is_dir() for p in root.iterdir()):
        return "imagefolder"
    raise InputError(root, "not a dataset this version can read (expected metadata/<split>/, "
                           "CUB's images.txt + classes.txt, or one subfolder per class)")


def open_dataset(spec: str, split: str, *, metadata: str | Path | None = None,
                 class_names: str | Path | None = None, problems: Problems | None = None) -> Dataset:
    """Open ``split`` of the dataset named by ``spec``.

    ``spec`` forms (checked in this order):
      * ``demo``: the demo dataset bundled with tedloc (wsolevaluation layout);
      * ``hf:<name or path>[?image=..&label=..&boxes=..&box_format=xyxy|xywh]``: a Hugging
        Face dataset (see :mod:`tedloc.data.hf`);
      * a folder with ``metadata/<split>/`` (wsolevaluation layout, :mod:`tedloc.data.wsol`),
        or with ``metadata`` given, the image folder of a wsolevaluation layout whose
        metadata lives apart (``--dataset dataset/CUB --metadata metadata/CUB``);
      * a folder with ``images.txt`` and ``classes.txt`` (CUB-200-2011, :mod:`tedloc.data.cub`);
      * a folder of class subfolders, optionally under ``<split>/`` (:mod:`tedloc.data.imagefolder`).

    ``class_names``: a file of class names that comes before every other source
    (:mod:`tedloc.data.class_names`).  By default the first problem raises
    :class:`InputError`; pass a collecting :class:`~tedloc.data.records.Problems` to gather
    them all (``tedloc data check``).
    """
    problems = strict_if_none(problems)
    kind = dataset_kind(spec, metadata)
    if kind == "demo":
        from tedloc.data.demo import demo_root
        from tedloc.data.wsol import read_wsol

        # Keep the spec "demo" (not the install path) so artifacts stay valid where tedloc moves.
        return dataclasses.replace(read_wsol(demo_root(), split, class_names=class_names, problems=problems),
                                   spec="demo")
    if kind == "hf":
        from tedloc.data.hf import read_hf

        dataset = read_hf(spec, split, problems=problems)
        return _renamed(dataset, class_names, problems) if class_names else dataset
    if kind == "wsol":
        from tedloc.data.wsol import read_wsol

        return read_wsol(spec, split, metadata=metadata, class_names=class_names, problems=problems)
    if kind == "cub":
        from tedloc.data.cub import read_cub

        return read_cub(spec, split, class_names=class_names, problems=problems)
    from tedloc.data.imagefolder import read_imagefolder

    return read_imagefolder(spec, split, class_names=class_names, problems=problems)


def _renamed(dataset: Dataset, class_names: str | Path, problems: Problems) -> Dataset:
    """``dataset`` with its classes named by the ``class_names`` file (same count)."""
    from tedloc.data.class_names import resolve_class_names

    named = resolve_class_names(len(dataset.class_names), explicit=class_names, own=dataset.class_names,
                                own_source=f"the classes of {dataset.spec}", problems=problems)
    return dataclasses.replace(dataset, class_names=named.names, class_names_source=named.source)
