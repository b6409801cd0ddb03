"""Pseudo-labels: the diagnostic, MaxBoxAccV2 of the maps against the split's GT boxes (never
used to make the pseudo-labels), for the manifest."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tedloc.artifacts.store import ShardedReader
from tedloc.configs.pseudo_labels import Config
from tedloc.data.records import Record
from tedloc.pipeline.box_diagnostic import BoxDiagnostic, diagnostic_sample

log = logging.getLogger(__name__)


class DiagnosticScoring:
    """The diagnostic (MaxBoxAccV2 of the maps against the split's GT boxes; never used to
    make the pseudo-labels) over an evenly spaced sample of at most ``diagnostic_images``
    of the split's images with boxes, in split order.

    With ``while_mapping`` the maps are scored as they are made (:meth:`add`, in worker
    processes beside the stage's own work); :meth:`value` scores the sample's images not
    scored yet (made by an earlier run, or another process) from the shards.  The value is
    the same either way: the counts of hits add up over images.
    """

    def __init__(self, config: Config, records: Sequence[Record], *, while_mapping: bool):
        from tedloc.pipeline.metrics import threshold_grid

        self.by_id = {r.image_id: r for r in records}
        with_boxes = [r.image_id for r in records if len(r.boxes)] if config.diagnostic else []
        self.sample = diagnostic_sample(with_boxes, config.diagnostic_images)
        self._sampled = set(self.sample)
        self.while_mapping = while_mapping
        self.scorer = BoxDiagnostic(threshold_grid(0.01),
                                    workers=config.diagnostic_workers or os.cpu_count() or 1)

    def add(self, ids: Sequence[str], arrays: dict[str, np.ndarray]) -> None:
        """Score the sampled images among N fresh map rows (``cam``, ``image_size``)."""
        if not self.while_mapping:
            return
        rows = [k for k, image_id in enumerate(ids) if image_id in self._sampled]
        if rows:
            self.scorer.add([ids[k] for k in rows], arrays["cam"][rows],
                            [self.by_id[ids[k]].boxes for k in rows], arrays["image_size"][rows])

    def value(self, reader: ShardedReader) -> dict[str, Any] | None:
        """The manifest's ``diagnostic`` entry once every image is in ``reader``; None
        when the split has no GT boxes (or the diagnostic is off)."""
        if not self.sample:
            return None
        present = set(reader.ids)
        ids = [i for i in self.sample if i in present]  # unreadable images have no map
        rest = [i for i in ids if i not in self.scorer.scored]
        if rest:
            self.scorer.add(rest, reader.read_many("cam", rest), [self.by_id[i].boxes for i in rest],
                            reader.read_many("image_size", rest))
        value = self.scorer.value()
        if value is None:
            return None
        with_boxes = sum(1 for i in reader.ids if i in self.by_id and len(self.by_id[i].boxes))
        log.info("diagnostic (GT boxes, not used for training): pseudo-label MaxBoxAccV2 = %.2f "
                 "on %d of %d images with boxes", value, len(ids), with_boxes)
        return {"maxboxacc_v2": round(value, 2), "num_images": len(ids), "num_images_with_boxes": with_boxes,
                "note": "diagnostic only: the pseudo-label maps against the split's GT boxes; "
                        "GT is never used to make or train on pseudo-labels"}

    def __enter__(self) -> DiagnosticScoring:
        return self

    def __exit__(self, *exc) -> None:
        self.scorer.close()
