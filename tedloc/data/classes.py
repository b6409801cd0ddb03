"""Classes matched by name between a dataset and a model (or an upstream artifact).

A label is an index into a list of class names, and two lists of the same names can be in
different orders: an ImageFolder always sorts its class folders alphabetically, a
wsolevaluation ``class_names.txt`` keeps the order it was written in.  Comparing labels
across them is only meaningful after mapping each label to the other list's index of the
same name; a name missing on one side is an error that names every such class.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from tedloc.data.records import Record
from tedloc.errors import ConfigError

log = logging.getLogger(__name__)


def _duplicates(names: Sequence[str]) -> list[str]:
    return sorted(name for name, count in collections.Counter(names).items() if count > 1)


def match_classes(found: Sequence[str], wanted: Sequence[str], *, found_where: str, wanted_where: str,
                  hint: str) -> list[int] | None:
    """Map ``found``'s labels to ``wanted``'s by class name.

    Args:
        found: the class names of the side whose labels are mapped (a dataset), label order.
        wanted: the class names labels are mapped to (the model's), label order.
        found_where / wanted_where: what each list belongs to, for messages (files, specs).
        hint: what to do when they cannot be matched (ends the error message).

    Returns:
        None when both lists are equal (labels already agree); else ``label_map`` with
        ``label_map[k]`` = the index in ``wanted`` of ``found[k]`` (logged).

    Raises:
        ConfigError: names only one side has (each listed in full), or duplicate names
        where the orders differ (a name would not say which label it is).
    """
    found, wanted = [str(n) for n in found], [str(n) for n in wanted]
    if found == wanted:
        return None
    difference = class_difference(found, wanted)
    if difference:
        raise ConfigError(f"{found_where}: the classes differ from {wanted_where}'s ({difference}); {hint}")
    repeated = _duplicates(found) or _duplicates(wanted)
    if repeated or len(found) != len(wanted):
        raise ConfigError(f"{found_where}: class names repeat ({', '.join(repeated)}) and are in another order "
                          f"than {wanted_where}'s, so labels cannot be matched by name; {hint}")
    index = {name: k for k, name in enumerate(wanted)}
    label_map = [index[name] for name in found]
    log.info("%s lists the classes of %s in another order; labels mapped by name: %s", found_where,
             wanted_where, describe_map(found, label_map))
    return label_map


def class_difference(found: Sequence[str], wanted: Sequence[str]) -> str:
    """``N of its M classes missing: ...; K not among them: ...`` (``its``: ``wanted``'s),
    every name in full; '' when both hold the same names."""
    missing = [n for n in wanted if n not in set(found)]
    extra = [n for n in found if n not in set(wanted)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its {len(wanted)} classes missing: {', '.join(missing)}")
    if extra:
        parts.append(f"{len(extra)} not among them: {', '.join(extra)}")
    return "; ".join(parts)


def describe_map(found: Sequence[str], label_map: Sequence[int]) -> str:
    """``'name' k->j`` for every label that moves (for logs)."""
    return ", ".join(f"{name!r} {k}->{j}" for k, (name, j) in enumerate(zip(found, label_map, strict=True)) if k != j)


def remap_records(records: Sequence[Record], label_map: Sequence[int] | None) -> list[Record]:
    """``records`` with each ``label`` replaced by ``label_map[label]`` (unchanged for None)."""
    if label_map is None:
        return list(records)
    return [dataclasses.replace(r, label=int(label_map[r.label])) for r in records]


def remap_labels(labels: np.ndarray, label_map: Sequence[int] | None) -> np.ndarray:
    """int (N,) labels mapped through ``label_map`` (unchanged for None)."""
    if label_map is None:
        return labels
    return np.asarray(label_map, dtype=labels.dtype)[labels]
