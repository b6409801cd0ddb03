"""Which labels the evaluate stage scores: the model's classes, or the dataset's own.

* Default: the split's classes must be the model's (by name, in any order: an ImageFolder
  sorts its own); its labels are mapped to the model's indices, so that Top-1/Top-5 Cls and
  Loc compare the model's prediction with the GT class.  Other classes are refused, naming
  every missing and extra one and the option that scores such a split anyway.
* Class-agnostic (``--class-agnostic``): any split with boxes or masks.  TeD-Loc's map does
  not use a class, so MaxBoxAccV1/V2, GT-known Loc and PxAP are well defined whatever the
  split's classes; the labels keep the dataset's own indices (per-class tables are by the
  dataset's classes) and the metrics that need the model to name the GT class (Top-1/Top-5
  Cls and Loc), like the CAM baseline (the CAM of the GT class among the model's), are left
  out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from tedloc.data.classes import match_classes, remap_records
from tedloc.data.records import Dataset, Record
from tedloc.errors import InputError

log = logging.getLogger(__name__)

#: What results.json and results.md say about a class-agnostic evaluation.
CLASS_AGNOSTIC_NOTE = ("the split's classes need not be the model's: its images are scored by the map "
                       "alone; Top-1/Top-5 Cls and Top-1/Top-5 Loc (they need the model to name the GT class) "
                       "and the CAM baseline (the CAM of the GT class among the model's) are left out")


@dataclasses.dataclass(frozen=True)
class ScoredClasses:
    """The labels an evaluation scores.

    ``records``: the split's records, labels indexing ``label_names``; ``label_names``: the
    classes the metrics are per (the model's, or the dataset's when class-agnostic);
    ``model_names``: the classes of the model's logits; ``label_map``: dataset label ->
    model class where the orders differ (None when they agree or when class-agnostic).
    """

    records: list[Record]
    label_names: list[str]
    model_names: list[str]
    label_map: list[int] | None
    class_agnostic: bool


def scored_classes(dataset: Dataset, records: Sequence[Record], model_names: Sequence[str], *,
                   class_agnostic: bool, dataset_where: str, model_where: str) -> ScoredClasses:
    """The :class:`ScoredClasses` of ``records`` (of ``dataset``) for a model of
    ``model_names`` (empty: the dataset's classes are taken as the model's).

    Raises ConfigError (via :func:`match_classes`) for other classes without
    ``class_agnostic``, the message naming the option; InputError for a class-agnostic
    evaluation of a split without boxes or masks (nothing it could score).
    """
    model_names = [str(n) for n in model_names] or list(dataset.class_names)
    if class_agnostic:
        if records and not any(len(r.boxes) or r.mask_paths or r.mask_path for r in records):
            raise InputError(dataset.spec, f"split {dataset.split!r} has neither boxes nor masks: a class-agnostic "
                                           "evaluation scores the maps against them only")
        log.info("evaluate: class-agnostic: %s; %d dataset classes, the model has %d", CLASS_AGNOSTIC_NOTE,
                 len(dataset.class_names), len(model_names))
        return ScoredClasses(list(records), list(dataset.class_names), model_names, None, True)
    label_map = match_classes(dataset.class_names, model_names, found_where=dataset_where, wanted_where=model_where,
                              hint="evaluate on a dataset of the classes the model was trained on, or pass "
                                   "--class-agnostic to score its maps alone (MaxBoxAcc, GT-known Loc, PxAP)")
    return ScoredClasses(remap_records(records, label_map), model_names, model_names, label_map, False)
