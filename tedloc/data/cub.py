"""Reader for CUB-200-2011 as distributed (Wah et al., 2011).

Layout of ``CUB_200_2011/``::

    images.txt              <image number> <relative path under images/>
    classes.txt             <class number> <folder name, e.g. 001.Black_footed_Albatross>
    image_class_labels.txt  <image number> <class number>      (1-based)
    train_test_split.txt    <image number> <1 = train, 0 = test>
    bounding_boxes.txt      <image number> <x> <y> <width> <height>   (optional)
    images/<class folder>/<file>.jpg

Splits: ``train`` and ``test``.  Image ids are the relative paths of images.txt (as in
wsolevaluation's CUB metadata); labels become 0-based; class names are those of a
``class_names.txt`` where there is one (:mod:`tedloc.data.class_names`), else the folder
names of classes.txt without the number and with spaces (``001.Black_footed_Albatross`` ->
``Black footed Albatross``).  Boxes become ``x0y0x1y1`` = ``(x, y, x + w, y + h)``, the conversion
behind wsolevaluation's CUB ``localization.txt``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tedloc.data.class_names import resolve_class_names
from tedloc.data.records import Dataset, Problems, Record, Where, strict_if_none
from tedloc.data.textfiles import read_lines

SPLITS = {"train": 1, "test": 0}


def is_cub(root: Path) -> bool:
    return (root / "images.txt").is_file() and (root / "classes.txt").is_file()


def _numbered(path: Path, problems: Problems, fields: int, what: str,
              optional: bool = False) -> dict[int, tuple[list[str], int]]:
    """number -> (the other fields, line) of a ``<number> <field> ...`` file."""
    out: dict[int, tuple[list[str], int]] = {}
    for line_no, text in read_lines(path, problems, optional=optional):
        parts = text.split(maxsplit=fields)
        if len(parts) != fields + 1:
            problems.report(path, f"expected '{what}', got {text!r}", line_no)
            continue
        try:
            number = int(parts[0])
        except ValueError:
            problems.report(path, f"image/class number {parts[0]!r} is not an integer", line_no)
            continue
        if number in out:
            problems.report(path, f"duplicate id {number} (first on line {out[number][1]})", line_no)
            continue
        out[number] = (parts[1:], line_no)
    return out


def read_cub(root: str | Path, split: str, *, class_names: str | Path | None = None,
             problems: Problems | None = None) -> Dataset:
    """Open ``split`` (``train``/``test``) of the CUB-200-2011 tree at ``root`` (``class_names``:
    a names file that comes first)."""
    problems = strict_if_none(problems)
    root = Path(root).resolve()
    if split not in SPLITS:
        problems.report(root / "train_test_split.txt",
                        f"CUB has splits 'train' and 'test', not {split!r}")
        return Dataset(spec=str(root), split=split, class_names=[], records=[])

    classes_file = root / "classes.txt"
    classes = _numbered(classes_file, problems, 1, "<class number> <name>")
    numbers = sorted(classes)
    if numbers != list(range(1, len(numbers) + 1)):
        problems.report(classes_file, f"class numbers must be 1..{len(numbers)} without gaps")
    named = resolve_class_names(len(numbers), explicit=class_names, root=root, problems=problems,
                                folders=[classes[n][0][0] for n in numbers], folder_source=f"{classes_file}")

    images_file = root / "images.txt"
    labels_file = root / "image_class_labels.txt"
    split_file = root / "train_test_split.txt"
    boxes_file = root / "bounding_boxes.txt"
    images = _numbered(images_file, problems, 1, "<image number> <path>")
    labels = _numbered(labels_file, problems, 1, "<image number> <class number>")
    flags = _numbered(split_file, problems, 1, "<image number> <1 train | 0 test>")
    boxes = _numbered(boxes_file, problems, 4, "<image number> <x> <y> <width> <height>", optional=True)

    # Ids present in one index file and not in images.txt.
    for path, table in ((labels_file, labels), (split_file, flags), (boxes_file, boxes)):
        for number, (_, line_no) in table.items():
            if number not in images:
                problems.report(path, f"image number {number} is not in images.txt", line_no)

    seen_paths: dict[str, int] = {}
    records: list[Record] = []
    image_where: dict[str, Where] = {}
    box_where: dict[str, list[Where]] = {}
    for number, ((rel,), line_no) in sorted(images.items()):
        if rel in seen_paths:
            problems.report(images_file, f"duplicate image path {rel!r} (first on line {seen_paths[rel]})", line_no)
            continue
        seen_paths[rel] = line_no
        if number not in flags:
            problems.report(split_file, f"image number {number} ({rel}) has no train/test flag")
            continue
        (flag,), flag_line = flags[number]
        if flag not in ("0", "1"):
            problems.report(split_file, f"flag must be 1 (train) or 0 (test), got {flag!r}", flag_line)
            continue
        if int(flag) != SPLITS[split]:
            continue
        if number not in labels:
            problems.report(labels_file, f"image number {number} ({rel}) has no class label")
            continue
        (label_text,), label_line = labels[number]
        try:
            label = numbers.index(int(label_text))
        except ValueError:
            problems.report(labels_file, f"class {label_text!r} of image {number} is not a class number "
                                         f"of classes.txt (1..{len(numbers)})", label_line)
            continue
        box = np.zeros((0, 4), np.float32)
        if number in boxes:
            values, box_line = boxes[number]
            try:
                x, y, w, h = (float(v) for v in values)
            except ValueError:
                problems.report(boxes_file, f"box values must be numbers: {' '.join(values)!r}", box_line)
                continue
            if not (w >= 0 and h >= 0):
                problems.report(boxes_file, f"box of image {number} has negative width or height", box_line)
                continue
            box = np.array([[x, y, x + w, y + h]], np.float32)
            box_where[rel] = [Where(str(boxes_file), box_line)]
        image_where[rel] = Where(str(images_file), line_no)
        records.append(Record(image_id=rel, path=root / "images" / rel, label=label, boxes=box))
    return Dataset(spec=str(root), split=split, class_names=named.names, records=records,
                   image_where=image_where, box_where=box_where, class_names_source=named.source)
