"""Reader for the wsolevaluation metadata layout (Choe et al., CVPR 2020).

Layout::

    <root>/metadata/<split>/image_ids.txt      one id per line (a path relative to <root>)
    <root>/metadata/<split>/class_labels.txt   id,label
    <root>/metadata/<split>/image_sizes.txt    id,width,height           (optional)
    <root>/metadata/<split>/localization.txt   id,x0,y0,x1,y1  (one line per box)
                                               or id,mask_path,ignore_path (masks)
    <root>/metadata/class_names.txt            one name per line, label order (optional)

Image ids are paths relative to ``<root>`` (or to ``image_root`` when given).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from tedloc.data.records import Dataset, Record
from tedloc.errors import InputError


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of non-blank lines; CRLF tolerated."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason})") from None
    return [(n, s.strip()) for n, s in enumerate(text.splitlines(), 1) if s.strip()]


def read_wsol(root: str | Path, split: str, *, metadata: str | Path | None = None,
              image_root: str | Path | None = None) -> Dataset:
    """Open ``split`` of a wsolevaluation-style dataset rooted at ``root``."""
    root = Path(root).resolve()
    meta = Path(metadata) if metadata else root / "metadata"
    image_root = Path(image_root).resolve() if image_root else root
    split_dir = meta / split
    if not split_dir.is_dir():
        raise InputError(split_dir, f"split {split!r} not found (expected metadata/{split}/image_ids.txt)")

    ids_file = split_dir / "image_ids.txt"
    ids: list[str] = []
    seen: dict[str, int] = {}
    for line_no, text in _lines(ids_file):
        if text in seen:
            raise InputError(ids_file, f"duplicate image id {text!r} (first on line {seen[text]})", line_no)
        seen[text] = line_no
        ids.append(text)

    labels_file = split_dir / "class_labels.txt"
    labels: dict[str, int] = {}
    for line_no, text in _lines(labels_file):
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 2:
            raise InputError(labels_file, f"expected 'id,label', got {text!r}", line_no)
        try:
            labels[parts[0]] = int(parts[1])
        except ValueError:
            raise InputError(labels_file, f"label {parts[1]!r} is not an integer", line_no) from None

    sizes: dict[str, tuple[int, int]] = {}
    sizes_file = split_dir / "image_sizes.txt"
    if sizes_file.exists():
        for line_no, text in _lines(sizes_file):
            parts = [p.strip() for p in text.split(",")]
            try:
                sizes[parts[0]] = (int(parts[1]), int(parts[2]))
            except (IndexError, ValueError):
                raise InputError(sizes_file, f"expected 'id,width,height', got {text!r}", line_no) from None

    boxes: dict[str, list[list[float]]] = defaultdict(list)
    masks: dict[str, tuple[Path, Path | None]] = {}
    loc_file = split_dir / "localization.txt"
    if loc_file.exists():
        for line_no, text in _lines(loc_file):
            parts = [p.strip() for p in text.split(",")]
            if len(parts) == 5:
                try:
                    boxes[parts[0]].append([float(v) for v in parts[1:]])
                except ValueError:
                    raise InputError(loc_file, f"box values must be numbers: {text!r}", line_no) from None
            elif len(parts) in (2, 3):
                ignore = image_root / parts[2] if len(parts) == 3 and parts[2] else None
                masks[parts[0]] = (image_root / parts[1], ignore)
            else:
                raise InputError(loc_file, f"expected 'id,x0,y0,x1,y1' or 'id,mask,ignore', got {text!r}", line_no)

    names_file = meta / "class_names.txt"
    if names_file.exists():
        class_names = [text for _, text in _lines(names_file)]
    else:
        num = max(labels.values(), default=-1) + 1
        class_names = [f"class_{i}" for i in range(num)]

    records = []
    for image_id in ids:
        if image_id not in labels:
            raise InputError(labels_file, f"no label for image id {image_id!r}")
        label = labels[image_id]
        if not 0 <= label < len(class_names):
            raise InputError(labels_file, f"label {label} of {image_id!r} is outside 0..{len(class_names) - 1}",
                             seen.get(image_id))
        mask_path, ignore_path = masks.get(image_id, (None, None))
        records.append(Record(
            image_id=image_id,
            path=image_root / image_id,
            label=label,
            boxes=np.asarray(boxes.get(image_id, []), dtype=np.float32).reshape(-1, 4),
            mask_path=mask_path,
            ignore_path=ignore_path,
            size=sizes.get(image_id),
        ))
    return Dataset(spec=str(root), split=split, class_names=class_names, records=records)
