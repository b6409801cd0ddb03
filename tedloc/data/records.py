"""The one record type every dataset reader yields, and the dataset container."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tedloc.config import hash_json
from tedloc.errors import InputError


class Where(NamedTuple):
    """A place in an index file: the file and the 1-based line (None: the whole file)."""

    file: str
    line: int | None = None


@dataclasses.dataclass(frozen=True)
class Record:
    """One image of a dataset split.

    Attributes:
        image_id: unique id within the split (wsolevaluation: the relative image path).
        path: absolute path of the image file, or None for images held in memory (Hugging
            Face datasets); those are fetched with ``Dataset.load_image`` via ``row``.
        label: class index in ``[0, num_classes)``.
        boxes: float32 array (K, 4), ``x0y0x1y1`` in pixels of the original image,
            inclusive pixel convention as in wsolevaluation; K may be 0.
        mask_path: path of a foreground mask (nonzero = object), or None; the first of
            ``mask_paths``.
        ignore_path: path of an ignore mask (nonzero = not scored), or None.
        size: (width, height) of the original image when the index states it, else None.
        mask_paths: every foreground mask of the image (wsolevaluation allows several
            lines per image; the object region is their union, see ``Dataset.load_mask``).
        row: index of the image in the reader's in-memory store (None for files).
    """

    image_id: str
    path: Path | None
    label: int
    boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.float32))
    mask_path: Path | None = None
    ignore_path: Path | None = None
    size: tuple[int, int] | None = None
    mask_paths: tuple[Path, ...] = ()
    row: int | None = None


@dataclasses.dataclass
class Dataset:
    """A split: its records and class names (index = label).

    ``spec`` is the string the dataset was opened from; ``load_image(record)`` returns the
    record's pixels (uint8 RGB (H, W, 3)) whichever storage the reader uses: a file
    (``record.path``) or, for readers that hold images in memory, ``image_source(record)``.
    """

    spec: str
    split: str
    class_names: list[str]
    records: list[Record]
    #: Decodes a record without a file (``record.path is None``); set by in-memory readers.
    #: Must be picklable (data-loader workers receive the dataset).
    image_source: Callable[[Record], np.ndarray] | None = None
    #: Where each image was listed (image id -> file, line), for messages about it.
    image_where: dict[str, Where] = dataclasses.field(default_factory=dict, repr=False)
    #: Where each of an image's boxes was read (image id -> one Where per row of boxes).
    box_where: dict[str, list[Where]] = dataclasses.field(default_factory=dict, repr=False)
    #: Where ``class_names`` came from (:mod:`tedloc.data.class_names`), for logs and artifacts.
    class_names_source: str = ""

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
            if self.image_source is None:
                raise InputError(self.spec, f"image {record.image_id!r} has neither a file nor an in-memory source")
            return self.image_source(record)
        return load_rgb(record.path)

    def load_resized(self, record: Record, size: int) -> tuple[np.ndarray, tuple[int, int]]:
        """(uint8 RGB (size, size, 3), original (width, height)) of ``record``: the whole
        image resized as :func:`tedloc.data.images.resize_whole` does, the same pixels as
        resizing :meth:`load_image`'s array."""
        from tedloc.data.images import load_rgb_resized, resize_whole

        if record.path is None:
            image = self.load_image(record)
            return resize_whole(image, size), (image.shape[1], image.shape[0])
        return load_rgb_resized(record.path, size)

    def load_mask(self, record: Record) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(foreground, ignore) bool masks (H, W) of ``record``, each None when absent.

        The foreground is the union of all ``record.mask_paths`` (nonzero pixels); the
        ignore mask marks pixels left out of scoring (wsolevaluation's OpenImages protocol).
        """
        from tedloc.data.images import load_gray

        paths = record.mask_paths or ((record.mask_path,) if record.mask_path else ())
        foreground = None
        for path in paths:
            mask = load_gray(path) > 0
            if foreground is not None and mask.shape != foreground.shape:
                raise InputError(path, f"mask size {mask.shape[::-1]} differs from the image's other "
                                       f"masks {foreground.shape[::-1]}")
            foreground = mask if foreground is None else foreground | mask
        ignore = load_gray(record.ignore_path) > 0 if record.ignore_path else None
        return foreground, ignore

    def subset(self, image_ids: Sequence[str]) -> Dataset:
        index = self.by_id()
        return dataclasses.replace(self, records=[index[i] for i in image_ids])

    def head(self, n: int) -> list[Record]:
        """The first ``n`` records, balanced over classes (all records if ``n`` is 0).

        Takes records round-robin over the classes, each class in file order, then
        returns them in file order; so a small slice of a class-sorted index still
        covers every class (smoke runs with ``--limit``) and is deterministic.
        """
        if n <= 0 or n >= len(self.records):
            return list(self.records)
        per_class: dict[int, list[int]] = {}
        for position, record in enumerate(self.records):
            per_class.setdefault(record.label, []).append(position)
        queues = [iter(per_class[label]) for label in sorted(per_class)]
        chosen: list[int] = []
        while len(chosen) < n:
            for queue in queues:
                position = next(queue, None)
                if position is not None and len(chosen) < n:
                    chosen.append(position)
        return [self.records[i] for i in sorted(chosen)]


def boxes_array(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """float32 (K, 4) from a list of ``x0y0x1y1`` boxes."""
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


class Problem(NamedTuple):
    """One problem found in a dataset: the file, the 1-based line (None if not on a line)
    and what is wrong."""

    file: str
    line: int | None
    problem: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.problem}"


class Problems:
    """Where readers report bad input.

    Strict (the default, ``collect=False``): the first problem raises :class:`InputError`
    (one line naming file and line).  Collecting (``collect=True``, used by ``tedloc data
    check``): every problem is recorded in ``items`` and the reader skips the bad entry and
    goes on, so that one run lists all of them.
    """

    def __init__(self, collect: bool = False):
        self.collect = collect
        self.items: list[Problem] = []

    def report(self, path: str | Path, problem: str, line: int | None = None) -> None:
        if not self.collect:
            raise InputError(path, problem, line)
        self.items.append(Problem(str(path), line, problem))


def strict_if_none(problems: Problems | None) -> Problems:
    return problems if problems is not None else Problems(collect=False)
