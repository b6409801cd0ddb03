"""Open a dataset from a spec string, whatever its format."""

from __future__ import annotations

from pathlib import Path

from tedloc.data.records import Dataset
from tedloc.errors import InputError


def open_dataset(spec: str, split: str) -> Dataset:
    """Open ``split`` of the dataset named by ``spec``.

    ``spec`` forms:
      * a directory with ``metadata/<split>/`` (wsolevaluation layout), e.g. the demo data;
      * ``demo``: the demo dataset bundled with tedloc.
    """
    if spec == "demo":
        from tedloc.data.demo import demo_root

        spec = str(demo_root())
    root = Path(spec)
    if (root / "metadata").is_dir():
        from tedloc.data.wsol import read_wsol

        return read_wsol(root, split)
    raise InputError(root, "not a dataset this version can read (expected metadata/<split>/ inside)")
