"""Reader for Hugging Face ``datasets``: images decoded in memory, lazily, one per request.

Spec syntax::

    hf:<source>[?key=value&key=value...]

``<source>`` is one of

* a folder written by ``DatasetDict.save_to_disk`` (the split is picked from it);
* parquet files: a ``.parquet`` path that may contain ``{split}`` (``hf:/d/{split}.parquet``),
  or a folder holding ``<split>.parquet`` / ``<split>-*.parquet`` (also under ``data/``);
* a hub name (``hf:user/name``), loaded with ``datasets.load_dataset(name, split=split)``;
  that needs the dataset in the local cache or a network connection.

Keys (all optional):

==============  ==========  ====================================================================
key             default     meaning
==============  ==========  ====================================================================
``image``       ``image``   column with the image (an ``Image`` feature, bytes, or a file path)
``label``       ``label``   column with the class (``ClassLabel``, integer or string)
``boxes``       (none)      column with the boxes; dots go into nested columns, e.g.
                            ``objects.bbox`` for the usual detection layout; one box (4 numbers)
                            or a list of boxes per row
``box_format``  ``xyxy``    ``xyxy`` (x0,y0,x1,y1) or ``xywh`` (x,y,width,height), pixels
``id``          (none)      column with a unique image id; default: the row number (``0000042``)
``split``       the split   name of the split in the source, e.g. ``split=validation`` to use the
                            source's validation split as the ``test`` split
==============  ==========  ====================================================================

Class names come from the label's ``ClassLabel`` feature; string labels are numbered in
sorted order over every split of the source; plain integers get names ``class_<i>``.
Records have ``path=None`` and ``row`` = the row index; ``Dataset.load_image`` decodes the
row's image on demand (nothing is decoded when the dataset is opened).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from tedloc.data.images import decode_rgb, load_rgb
from tedloc.data.records import Dataset, Problems, Record, strict_if_none
from tedloc.errors import InputError

log = logging.getLogger(__name__)

PREFIX = "hf:"
KEYS = {"image": "image", "label": "label", "boxes": "", "box_format": "xyxy", "id": "", "split": ""}


@dataclasses.dataclass(frozen=True)
class HFSpec:
    source: str
    image: str = "image"
    label: str = "label"
    boxes: str = ""
    box_format: str = "xyxy"
    id: str = ""
    split: str = ""


def parse_spec(spec: str) -> HFSpec:
    """Split ``hf:<source>?k=v&...`` into its parts; unknown keys are errors."""
    if not spec.startswith(PREFIX):
        raise InputError(spec, f"a Hugging Face dataset spec starts with {PREFIX!r}")
    body = spec[len(PREFIX):]
    source, _, query = body.partition("?")
    if not source:
        raise InputError(spec, "no dataset name or path after 'hf:'")
    values: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in KEYS:
            raise InputError(spec, f"unknown key {key!r} (known: {', '.join(KEYS)})")
        values[key] = value
    parsed = HFSpec(source=source, **values)
    if parsed.box_format not in ("xyxy", "xywh"):
        raise InputError(spec, f"box_format must be 'xyxy' or 'xywh', not {parsed.box_format!r}")
    return parsed


def _parquet_files(source: str, split: str) -> list[str] | None:
    """The parquet files of ``split`` named by ``source``, or None if it names no parquet."""
    if source.endswith(".parquet"):
        pattern = source.replace("{split}", split)
        path = Path(pattern)
        if any(ch in pattern for ch in "*?["):
            return sorted(str(p) for p in path.parent.glob(path.name))
        return [pattern] if path.is_file() else []
    folder = Path(source)
    if not folder.is_dir() or (folder / "dataset_dict.json").exists():
        return None
    for base in (folder, folder / "data"):
        files = sorted({*base.glob(f"{split}.parquet"), *base.glob(f"{split}-*.parquet")})
        if files:
            return [str(p) for p in files]
    if any(folder.rglob("*.parquet")):
        return []
    return None


def _all_parquet_files(source: str) -> list[str]:
    """The parquet files of every split of ``source`` (a folder or a ``{split}`` pattern)."""
    if source.endswith(".parquet"):
        path = Path(source.replace("{split}", "*"))
        return sorted(str(p) for p in path.parent.glob(path.name))
    return sorted(str(p) for p in Path(source).rglob("*.parquet"))


def _load(parsed: HFSpec, split: str, spec: str) -> tuple[Any, list[Any]]:
    """(the split as a ``datasets.Dataset``, every split of the source for class naming)."""
    import datasets

    source_split = parsed.split or split
    folder = Path(parsed.source)
    try:
        if (folder / "dataset_dict.json").is_file():
            everything = datasets.load_from_disk(str(folder))
            if source_split not in everything:
                raise InputError(folder, f"split {source_split!r} not found (splits: {', '.join(everything)})")
            return everything[source_split], list(everything.values())
        if (folder / "state.json").is_file():
            raise InputError(folder, "holds a single saved Dataset; save a DatasetDict with one entry per "
                                     "split ({'train': ..., 'test': ...}) so that splits cannot be confused")
        files = _parquet_files(parsed.source, source_split)
        if files is not None:
            if not files:
                raise InputError(parsed.source, f"no parquet files for split {source_split!r}")
            # Every split's labels (that column only), so that string labels are numbered
            # the same way in train and test.
            everything = _all_parquet_files(parsed.source)
            top = parsed.label.split(".")[0]
            labels_only = [datasets.Dataset.from_parquet(everything, columns=[top])] if everything else []
            return datasets.Dataset.from_parquet(files), labels_only
        if folder.exists():
            raise InputError(folder, "not a saved DatasetDict (dataset_dict.json) nor parquet files")
        return datasets.load_dataset(parsed.source, split=source_split), []
    except InputError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError)
        raise InputError(spec, f"cannot load the dataset ({type(exc).__name__}: {exc})") from None


def _nested(value: Any, keys: list[str]) -> Any:
    for key in keys:
        if isinstance(value, list):  # a list of dicts: take the key from each
            value = [v[key] for v in value]
        else:
            value = value[key]
    return value


def _column(ds: Any, dotted: str, where: str) -> list[Any]:
    top, *rest = dotted.split(".")
    if top not in ds.column_names:
        raise InputError(where, f"no column {top!r} (columns: {', '.join(ds.column_names)})")
    values = list(ds.select_columns([top])[top])
    try:
        return [_nested(v, rest) for v in values]
    except (KeyError, TypeError, IndexError):
        raise InputError(where, f"column {dotted!r}: no such nested field") from None


class HFImageSource:
    """Decodes the image of a record's row on demand (picklable: holds only the column)."""

    def __init__(self, ds: Any, column: str, spec: str):
        import datasets

        feature = ds.features[column]
        if isinstance(feature, datasets.Image):
            # Raw bytes: decoded by tedloc.data.images like every other image (same conversions).
            ds = ds.cast_column(column, datasets.Image(decode=False))
        self.ds = ds.select_columns([column])
        self.column = column
        self.spec = spec

    def __call__(self, record: Record) -> np.ndarray:
        where = f"{self.spec} row {record.row} ({record.image_id})"
        value = self.ds[int(record.row)][self.column]
        if isinstance(value, dict):
            if value.get("bytes"):
                return decode_rgb(value["bytes"], where)
            if value.get("path"):
                return load_rgb(value["path"])
            raise InputError(where, "image cell holds neither bytes nor a path")
        if isinstance(value, (bytes, bytearray)):
            return decode_rgb(value, where)
        if isinstance(value, str):
            return load_rgb(value)
        if value is None:
            raise InputError(where, "image cell is empty")
        raise InputError(where, f"cannot read an image from a {type(value).__name__}")


def _class_names(ds: Any, label_col: str, labels: list[Any], all_splits: list[Any]) -> tuple[list[str], list[Any]]:
    """(class names, labels as ints or the bad value)."""
    import datasets

    feature = ds.features.get(label_col.split(".")[0])
    if isinstance(feature, datasets.ClassLabel) and "." not in label_col:
        return list(feature.names), labels
    if labels and all(isinstance(v, str) for v in labels):
        values = set(labels)
        for other in all_splits:
            values.update(_column(other, label_col, label_col))
        names = sorted(values)
        index = {name: i for i, name in enumerate(names)}
        return names, [index[v] for v in labels]
    maximum = max((v for v in labels if isinstance(v, int)), default=-1)
    for other in all_splits:
        maximum = max(maximum, max((v for v in _column(other, label_col, label_col) if isinstance(v, int)),
                                   default=-1))
    return [f"class_{i}" for i in range(maximum + 1)], labels


def _boxes(value: Any, box_format: str) -> np.ndarray:
    array = np.asarray(value if value is not None else [], dtype=np.float32)
    if array.size == 0:
        return np.zeros((0, 4), np.float32)
    array = array.reshape(-1, 4)
    if box_format == "xywh":
        array = np.concatenate([array[:, :2], array[:, :2] + array[:, 2:]], axis=1)
    return array


def read_hf(spec: str, split: str, *, problems: Problems | None = None) -> Dataset:
    """Open ``split`` of the Hugging Face dataset named by ``spec`` (see the module doc)."""
    problems = strict_if_none(problems)
    parsed = parse_spec(spec)
    ds, all_splits = _load(parsed, split, spec)
    if parsed.image.split(".")[0] not in ds.column_names:
        raise InputError(spec, f"no image column {parsed.image!r} (columns: {', '.join(ds.column_names)}); "
                               "name it with ?image=COLUMN")
    if "." in parsed.image:
        raise InputError(spec, "the image column must be a top-level column")
    labels = _column(ds, parsed.label, spec)
    class_names, labels = _class_names(ds, parsed.label, labels, all_splits)
    boxes = _column(ds, parsed.boxes, spec) if parsed.boxes else [None] * len(labels)
    ids = [str(v) for v in _column(ds, parsed.id, spec)] if parsed.id else [f"{i:07d}" for i in range(len(labels))]

    where = f"{spec} [{split}]"
    records: list[Record] = []
    seen: dict[str, int] = {}
    for row, (image_id, label, box) in enumerate(zip(ids, labels, boxes, strict=True)):
        if image_id in seen:
            problems.report(where, f"row {row}: duplicate image id {image_id!r} (first in row {seen[image_id]})")
            continue
        seen[image_id] = row
        if not isinstance(label, (int, np.integer)) or not 0 <= label < len(class_names):
            problems.report(where, f"row {row} ({image_id}): label {label!r} is outside 0..{len(class_names) - 1}")
            continue
        try:
            box_array = _boxes(box, parsed.box_format)
        except (ValueError, TypeError):
            problems.report(where, f"row {row} ({image_id}): boxes {box!r} are not groups of 4 numbers")
            continue
        if np.any(box_array[:, 2] < box_array[:, 0]) or np.any(box_array[:, 3] < box_array[:, 1]):
            problems.report(where, f"row {row} ({image_id}): inverted box in {box_array.tolist()}")
            continue
        records.append(Record(image_id=image_id, path=None, label=int(label), boxes=box_array, row=row))
    log.info("%s: %d images, %d classes", where, len(records), len(class_names))
    return Dataset(spec=spec, split=split, class_names=class_names, records=records,
                   image_source=HFImageSource(ds, parsed.image, spec))
