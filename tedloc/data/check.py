"""``tedloc data check``: find every problem of a dataset in one pass, not just the first.

Finds: index lines that cannot be parsed, duplicate ids, ids present in one index file and
missing from another, labels out of range, inverted boxes, boxes outside the image,
missing image and mask files, and (with ``decode``) images or masks that cannot be decoded
and masks whose size differs from their image's.  Readers run in collecting mode (see
:class:`~tedloc.data.records.Problems`), so the strict readers used by the stages keep
failing fast with a one-line error.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np

from tedloc.data.images import load_gray, read_size
from tedloc.data.open import open_dataset
from tedloc.data.records import Dataset, Problem, Problems, Record, Where
from tedloc.errors import InputError
from tedloc.pipeline.progress import progress

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SplitSummary:
    split: str
    class_names: list[str]
    counts: Counter
    num_boxes: int
    num_masks: int
    class_names_source: str = ""


@dataclasses.dataclass
class CheckReport:
    """Result of :func:`check_dataset`: per-split counts and every problem found."""

    spec: str
    decode: bool
    splits: list[SplitSummary] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        """Counts per class for each split, then every problem as ``file:line: problem``."""
        lines = [f"dataset {self.spec}" + ("" if self.decode else " (images not decoded; use --decode)")]
        for summary in self.splits:
            total = sum(summary.counts.values())
            lines.append(f"split {summary.split}: {total} images, {len(summary.class_names)} classes, "
                         f"{summary.num_boxes} boxes, {summary.num_masks} images with masks"
                         + (f"; class names from {summary.class_names_source}" if summary.class_names_source else ""))
            width = max((len(n) for n in summary.class_names), default=0)
            for label, name in enumerate(summary.class_names):
                lines.append(f"  {label:>4} {name:<{width}}  {summary.counts.get(label, 0)}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"  {problem}" for problem in self.problems)
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def check_dataset(spec: str, splits: str | Sequence[str] = ("train", "test"), *,
                  decode: bool = False, metadata: str | None = None,
                  class_names: str | None = None) -> CheckReport:
    """Check ``splits`` of the dataset ``spec``; never raises for problems of the data.

    Args:
        spec: a dataset spec as for :func:`~tedloc.data.open.open_dataset`.
        splits: one split name or several.
        decode: also decode every image and mask (finds corrupt files; slower).
        metadata, class_names: a wsolevaluation metadata folder kept apart from the images,
            a class-names file (as the stages' ``--metadata`` and ``--class-names``).
    """
    if isinstance(splits, str):
        splits = [splits]
    report = CheckReport(spec=spec, decode=decode)
    for split in splits:
        problems = Problems(collect=True)
        try:
            dataset = open_dataset(spec, split, metadata=metadata, class_names=class_names, problems=problems)
        except InputError as exc:  # the dataset itself cannot be opened: nothing more to check
            found = [*problems.items, Problem(str(exc.path), exc.line, exc.problem)]
            # The same for every split (a missing folder): said once.
            report.problems.extend(p for p in found if p not in report.problems)
            continue
        _check_records(dataset, problems, decode=decode)
        report.problems.extend(problems.items)
        report.splits.append(SplitSummary(
            split=split, class_names=list(dataset.class_names), class_names_source=dataset.class_names_source,
            counts=Counter(r.label for r in dataset.records),
            num_boxes=sum(len(r.boxes) for r in dataset.records),
            num_masks=sum(1 for r in dataset.records if r.mask_paths or r.mask_path)))
    return report


def _where(dataset: Dataset, record: Record) -> Where:
    return dataset.image_where.get(record.image_id) or Where(str(record.path or dataset.spec), None)


def _check_records(dataset: Dataset, problems: Problems, *, decode: bool) -> None:
    for record in progress(dataset.records, desc=f"check {dataset.split}", unit="img"):
        where = _where(dataset, record)
        size = _image_size(dataset, record, where, problems, decode=decode)
        if size is not None:
            _check_boxes(dataset, record, size, problems)
        for mask_path in record.mask_paths or ((record.mask_path,) if record.mask_path else ()):
            _check_mask(mask_path, size, where, problems, decode=decode, what="mask")
        if record.ignore_path is not None:
            _check_mask(record.ignore_path, size, where, problems, decode=decode, what="ignore mask")


def _image_size(dataset: Dataset, record: Record, where: Where, problems: Problems, *,
                decode: bool) -> tuple[int, int] | None:
    """(width, height) of the record's image, reporting missing/unreadable files."""
    if record.path is not None and not record.path.is_file():
        problems.report(where.file, f"image file not found: {record.path}", where.line)
        return None
    try:
        if decode:
            image = dataset.load_image(record)
            size = (image.shape[1], image.shape[0])
            if record.size is not None and tuple(record.size) != size:
                problems.report(where.file, f"{record.image_id}: index says size {record.size[0]}x"
                                            f"{record.size[1]}, the image is {size[0]}x{size[1]}", where.line)
            return size
        if record.size is not None:
            return record.size
        if record.path is not None and (len(record.boxes) or record.mask_paths):
            return read_size(record.path)  # header only
    except InputError as exc:
        problems.report(where.file, f"unreadable image {exc.path}: {exc.problem}", where.line)
    return None


def _check_boxes(dataset: Dataset, record: Record, size: tuple[int, int], problems: Problems) -> None:
    width, height = size
    wheres = dataset.box_where.get(record.image_id, [])
    for i, box in enumerate(np.asarray(record.boxes, dtype=np.float64)):
        x0, y0, x1, y1 = box
        # x+w of CUB-style boxes can reach the width itself, hence <= width (not width - 1).
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            where = wheres[i] if i < len(wheres) else _where(dataset, record)
            problems.report(where.file, f"box {box.tolist()} of {record.image_id} is outside the "
                                        f"{width}x{height} image", where.line)


def _check_mask(path, size: tuple[int, int] | None, where: Where, problems: Problems, *,
                decode: bool, what: str) -> None:
    if not path.is_file():
        problems.report(where.file, f"{what} file not found: {path}", where.line)
        return
    if not decode:
        return
    try:
        mask = load_gray(path)
    except InputError as exc:
        problems.report(where.file, f"unreadable {what} {exc.path}: {exc.problem}", where.line)
        return
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        problems.report(where.file, f"{what} {path} is {mask.shape[1]}x{mask.shape[0]}, "
                                    f"its image {size[0]}x{size[1]}", where.line)
