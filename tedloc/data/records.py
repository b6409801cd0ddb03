"""The one record type every dataset reader yields, and the dataset container."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tedloc.config import hash_json


@dataclasses.dataclass(frozen=True)
class Record:
    """One image of a dataset split.

    Attributes:
        image_id: unique id within the split (wsolevaluation: the relative image path).
        path: absolute path of the image file (None for images held in memory, e.g. HF).
        label: class index in ``[0, num_classes)``.
        boxes: float32 array (K, 4), ``x0y0x1y1`` in pixels of the original image,
            inclusive pixel convention as in wsolevaluation; K may be 0.
        mask_path: path of a foreground mask (nonzero = object), or None.
        ignore_path: path of an ignore mask (nonzero = not scored), or None.
        size: (width, height) of the original image when the index states it, else None.
    """

    image_id: str
    path: Path | None
    label: int
    boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.float32))
    mask_path: Path | None = None
    ignore_path: Path | None = None
    size: tuple[int, int] | None = None


@dataclasses.dataclass
class Dataset:
    """A split: its records and class names (index = label).

    ``spec`` is the string the dataset was opened from; ``load_image(record)`` returns the
    record's pixels (uint8 RGB (H, W, 3)) whichever storage the reader uses.
    """

    spec: str
    split: str
    class_names: list[str]
    records: list[Record]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_ids(self) -> list[str]:
        return [r.image_id for r in self.records]

    def by_id(self) -> dict[str, Record]:
        return {r.image_id: r for r in self.records}

    def fingerprint(self) -> str:
        """Hash of the ids, labels and class names (not the pixels): changes when the
        split's content as indexed changes, so cached results are not reused wrongly."""
        return hash_json({
            "classes": self.class_names,
            "items": [[r.image_id, r.label] for r in self.records],
        })

    def load_image(self, record: Record) -> np.ndarray:
        """uint8 RGB array (H, W, 3) of ``record``."""
        from tedloc.data.images import load_rgb

        if record.path is None:
            raise NotImplementedError("this dataset holds images in memory; its reader overrides load_image")
        return load_rgb(record.path)

    def subset(self, image_ids: Sequence[str]) -> Dataset:
        index = self.by_id()
        return dataclasses.replace(self, records=[index[i] for i in image_ids])


def boxes_array(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """float32 (K, 4) from a list of ``x0y0x1y1`` boxes."""
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
