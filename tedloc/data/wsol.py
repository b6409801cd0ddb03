"""Reader for the wsolevaluation metadata layout (Choe et al., CVPR 2020).

Layout::

    <root>/metadata/<split>/image_ids.txt      one id per line (a path relative to <root>)
    <root>/metadata/<split>/class_labels.txt   id,label
    <root>/metadata/<split>/image_sizes.txt    id,width,height           (optional)
    <root>/metadata/<split>/localization.txt   id,x0,y0,x1,y1  (one line per box)
                                               or id,mask_path,ignore_path (one line per mask)
    <root>/metadata/class_names.txt            one name per line, label order (optional)

The metadata folder may live apart from the images, as in the wsolevaluation repository
(``metadata/CUB/test/*.txt`` with ids relative to ``dataset/CUB/``): ``metadata`` names it
and ``root`` is then the image folder.  Image ids are paths relative to ``<root>`` (or to
``image_root`` when given); mask paths too.  Class names: :mod:`tedloc.data.class_names`
(``class_names.txt``, else the folder of each class's images in the ids, ...).  Boxes are
``x0y0x1y1`` pixels, inclusive corners, as wsolevaluation stores them.  An image may have
several box lines, or several mask lines (their union is the object); the ignore path,
where given, is the same on each of an image's mask lines.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from tedloc.data.class_names import label_folders, resolve_class_names
from tedloc.data.records import Dataset, Problems, Record, Where, strict_if_none
from tedloc.data.textfiles import read_lines, split_fields


def read_wsol(root: str | Path, split: str, *, metadata: str | Path | None = None,
              image_root: str | Path | None = None, class_names: str | Path | None = None,
              problems: Problems | None = None) -> Dataset:
    """Open ``split`` of a wsolevaluation-style dataset rooted at ``root`` (its metadata in
    ``metadata``, by default ``<root>/metadata``; ``class_names``: a names file that comes
    first, see :func:`~tedloc.data.class_names.resolve_class_names`).

    With a collecting ``problems`` every bad line is recorded and skipped; by default the
    first one raises :class:`~tedloc.errors.InputError`.
    """
    problems = strict_if_none(problems)
    root = Path(root).resolve()
    meta = Path(metadata).resolve() if metadata else root / "metadata"
    image_root = Path(image_root).resolve() if image_root else root
    split_dir = meta / split
    if not split_dir.is_dir():
        problems.report(split_dir, _missing_split(meta, split))
        return Dataset(spec=str(root), split=split, class_names=[], records=[])

    ids_file = split_dir / "image_ids.txt"
    ids: list[str] = []
    seen: dict[str, int] = {}
    for line_no, text in read_lines(ids_file, problems):
        if text in seen:
            problems.report(ids_file, f"duplicate image id {text!r} (first on line {seen[text]})", line_no)
            continue
        seen[text] = line_no
        ids.append(text)

    labels_file = split_dir / "class_labels.txt"
    labels: dict[str, tuple[int, int]] = {}  # id -> (label, line)
    for line_no, text in read_lines(labels_file, problems):
        parts = split_fields(text)
        if len(parts) != 2:
            problems.report(labels_file, f"expected 'id,label', got {text!r}", line_no)
            continue
        if parts[0] in labels:
            problems.report(labels_file, f"duplicate label line for {parts[0]!r} "
                                         f"(first on line {labels[parts[0]][1]})", line_no)
            continue
        try:
            labels[parts[0]] = (int(parts[1]), line_no)
        except ValueError:
            problems.report(labels_file, f"label {parts[1]!r} is not an integer", line_no)
    for image_id, (_, line_no) in labels.items():
        if image_id not in seen:
            problems.report(labels_file, f"image id {image_id!r} is not in {ids_file.name}", line_no)

    sizes: dict[str, tuple[int, int]] = {}
    sizes_file = split_dir / "image_sizes.txt"
    for line_no, text in read_lines(sizes_file, problems, optional=True):
        parts = split_fields(text)
        try:
            if len(parts) != 3:
                raise ValueError
            size = (int(parts[1]), int(parts[2]))
            if min(size) <= 0:
                raise ValueError
        except ValueError:
            problems.report(sizes_file, f"expected 'id,width,height' with positive integers, got {text!r}",
                            line_no)
            continue
        if parts[0] not in seen:
            problems.report(sizes_file, f"image id {parts[0]!r} is not in {ids_file.name}", line_no)
        sizes[parts[0]] = size

    boxes: dict[str, list[list[float]]] = defaultdict(list)
    box_lines: dict[str, list[int]] = defaultdict(list)
    masks: dict[str, list[Path]] = defaultdict(list)
    ignores: dict[str, Path | None] = {}
    loc_file = split_dir / "localization.txt"
    for line_no, text in read_lines(loc_file, problems, optional=True):
        parts = split_fields(text)
        if parts[0] not in seen:
            problems.report(loc_file, f"image id {parts[0]!r} is not in {ids_file.name}", line_no)
            continue
        if len(parts) == 5:
            try:
                box = [float(v) for v in parts[1:]]
            except ValueError:
                problems.report(loc_file, f"box values must be numbers: {text!r}", line_no)
                continue
            if not np.all(np.isfinite(box)):
                problems.report(loc_file, f"box values must be finite: {text!r}", line_no)
                continue
            if box[2] < box[0] or box[3] < box[1]:
                problems.report(loc_file, f"inverted box {box} (need x0 <= x1 and y0 <= y1)", line_no)
                continue
            boxes[parts[0]].append(box)
            box_lines[parts[0]].append(line_no)
        elif len(parts) in (2, 3) and parts[1]:
            masks[parts[0]].append(image_root / parts[1])
            ignore = image_root / parts[2] if len(parts) == 3 and parts[2] else None
            ignores[parts[0]] = ignores.get(parts[0]) or ignore
        else:
            problems.report(loc_file, f"expected 'id,x0,y0,x1,y1' or 'id,mask,ignore', got {text!r}", line_no)

    num = max((label for label, _ in labels.values()), default=-1) + 1
    named = resolve_class_names(
        num, explicit=class_names, metadata_dir=meta, root=image_root, exact=False, problems=problems,
        folders=label_folders([(i, label) for i, (label, _) in labels.items() if label >= 0], num),
        folder_source=f"class folders of {ids_file}")
    class_names = named.names

    records = []
    for image_id in ids:
        if image_id not in labels:
            problems.report(ids_file, f"image id {image_id!r} has no line in {labels_file.name}",
                            seen[image_id])
            continue
        label, label_line = labels[image_id]
        if not 0 <= label < len(class_names):
            problems.report(labels_file, f"label {label} of {image_id!r} is outside 0..{len(class_names) - 1}",
                            label_line)
            continue
        if image_id in sizes and _boxes_outside(image_id, boxes.get(image_id, []), box_lines.get(image_id, []),
                                                sizes[image_id], loc_file, problems):
            continue
        mask_paths = tuple(masks.get(image_id, ()))
        records.append(Record(
            image_id=image_id,
            path=image_root / image_id,
            label=label,
            boxes=np.asarray(boxes.get(image_id, []), dtype=np.float32).reshape(-1, 4),
            mask_path=mask_paths[0] if mask_paths else None,
            ignore_path=ignores.get(image_id),
            size=sizes.get(image_id),
            mask_paths=mask_paths,
        ))
    return Dataset(
        spec=str(root), split=split, class_names=class_names, records=records, class_names_source=named.source,
        image_where={i: Where(str(ids_file), line) for i, line in seen.items()},
        box_where={i: [Where(str(loc_file), line) for line in lines] for i, lines in box_lines.items()},
    )


def _missing_split(meta: Path, split: str) -> str:
    """What to say when ``meta/<split>/`` is missing: the splits there, or the folders below
    that hold it (``--metadata metadata`` given for ``metadata/CUB``)."""
    folders = sorted(p for p in meta.iterdir() if p.is_dir()) if meta.is_dir() else []
    deeper = [p for p in folders if (p / split).is_dir()]
    if deeper and not any((p / "image_ids.txt").is_file() for p in folders):
        return (f"split {split!r} not found ({meta} holds the metadata of {', '.join(p.name for p in deeper)}: "
                f"give that folder, e.g. {deeper[0]})")
    return (f"split {split!r} not found (expected {meta.name}/{split}/image_ids.txt; "
            f"splits here: {', '.join(p.name for p in folders) or 'none'})")


def _boxes_outside(image_id: str, boxes: list[list[float]], lines: list[int], size: tuple[int, int],
                   loc_file: Path, problems: Problems) -> bool:
    """Report the boxes of ``image_id`` that leave its ``size`` = (width, height) image.

    Inclusive corners may reach ``width - 1``; ``width`` itself is tolerated, as in
    ``tedloc data check`` (x + w of CUB-style boxes).  Returns whether any box was bad.
    """
    width, height = size
    bad = False
    for box, line_no in zip(boxes, lines, strict=True):
        x0, y0, x1, y1 = box
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            problems.report(loc_file, f"box {box} of {image_id!r} is outside the {width}x{height} image "
                                      "(size from image_sizes.txt)", line_no)
            bad = True
    return bad
