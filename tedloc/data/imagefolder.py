"""Reader for an image folder: one subfolder per class (torchvision's ``ImageFolder``).

Layout::

    <root>/<split>/<class>/**/<image>      when <root>/<split>/ exists
    <root>/<class>/**/<image>              otherwise (the same images for every split)
    <split root>/boxes.csv                 optional: relative_path,x0,y0,x1,y1 per line

Labels are the positions of the sorted subfolder names; class names come from
:mod:`tedloc.data.class_names` (a ``class_names.txt`` at the root, else the folder names with
a number prefix and underscores removed: ``001.Black_footed_Albatross`` -> ``Black footed
Albatross``; synset folders such as ``n01440764`` named by a synset file).  Image ids are paths
relative to the split root with ``/`` separators.  ``boxes.csv`` (optional header line
``relative_path,x0,y0,x1,y1``) gives ``x0y0x1y1`` pixel boxes, one line per box; images
without a line have no boxes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from tedloc.data.class_names import resolve_class_names
from tedloc.data.records import Dataset, Problems, Record, Where, strict_if_none
from tedloc.data.textfiles import read_lines, split_fields

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".gif"})
BOXES_FILE = "boxes.csv"
#: Folder names that mark ``<root>`` as holding splits rather than classes.
SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


def split_root(root: Path, split: str, problems: Problems) -> Path | None:
    if (root / split).is_dir():
        return root / split
    present = [name for name in SPLIT_NAMES if (root / name).is_dir()]
    if present:
        problems.report(root, f"split {split!r} not found (split folders here: {', '.join(present)})")
        return None
    return root


def read_imagefolder(root: str | Path, split: str, *, class_names: str | Path | None = None,
                     problems: Problems | None = None) -> Dataset:
    """Open ``split`` of the class-per-subfolder tree at ``root`` (``class_names``: a names
    file that comes first, see :func:`~tedloc.data.class_names.resolve_class_names`)."""
    problems = strict_if_none(problems)
    root = Path(root).resolve()
    base = split_root(root, split, problems)
    if base is None:
        return Dataset(spec=str(root), split=split, class_names=[], records=[])
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        problems.report(base, "no class subfolders found (expected <class>/<image> inside)")
    named = resolve_class_names(len(class_dirs), explicit=class_names, root=root, problems=problems,
                                folders=[p.name for p in class_dirs], folder_source=f"class folders of {base}")

    records: list[Record] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith("."))
        if not files:
            problems.report(class_dir, "class folder holds no image files")
        for path in files:
            records.append(Record(image_id=path.relative_to(base).as_posix(), path=path, label=label))

    boxes, box_where = _read_boxes(base / BOXES_FILE, {r.image_id for r in records}, problems)
    if boxes:
        records = [Record(image_id=r.image_id, path=r.path, label=r.label,
                          boxes=np.asarray(boxes.get(r.image_id, []), np.float32).reshape(-1, 4))
                   for r in records]
    return Dataset(spec=str(root), split=split, class_names=named.names, records=records,
                   box_where=box_where, class_names_source=named.source)


def _read_boxes(path: Path, ids: set[str], problems: Problems
                ) -> tuple[dict[str, list[list[float]]], dict[str, list[Where]]]:
    boxes: dict[str, list[list[float]]] = defaultdict(list)
    where: dict[str, list[Where]] = defaultdict(list)
    for line_no, text in read_lines(path, problems, optional=True):
        parts = split_fields(text)
        if line_no == 1 and parts[0].lower() in ("relative_path", "path", "image", "image_id"):
            continue  # header
        if len(parts) != 5:
            problems.report(path, f"expected 'relative_path,x0,y0,x1,y1', got {text!r}", line_no)
            continue
        image_id = parts[0].replace("\\", "/")
        if image_id not in ids:
            problems.report(path, f"image {image_id!r} is not in the folder tree", line_no)
            continue
        try:
            box = [float(v) for v in parts[1:]]
        except ValueError:
            problems.report(path, f"box values must be numbers: {text!r}", line_no)
            continue
        if not np.all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]:
            problems.report(path, f"invalid or inverted box {box} (need x0 <= x1 and y0 <= y1)", line_no)
            continue
        boxes[image_id].append(box)
        where[image_id].append(Where(str(path), line_no))
    return dict(boxes), dict(where)
