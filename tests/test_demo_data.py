"""The bundled demo data: the fixed stamp split, boxes, masks, and opening it."""

from __future__ import annotations

import hashlib
import math
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tedloc.data.check import check_dataset
from tedloc.data.demo import (
    DEMO_CLASSES,
    demo_root,
    split_backgrounds,
    split_stamps,
    split_val_stamps,
)
from tedloc.data.open import open_dataset

ROOT = demo_root()
META = ROOT / "metadata"
NAMES = ["bird", "mammal", "fish", "insect", "fruit", "vegetable", "flower", "tool"]
FOLDERS = ["animals/birds", "animals/mammals", "animals/fish", "animals/insects",
           "food/fruit", "food/vegetables", "plants/flowers", "household/tools"]
# Stamps per class in tuxpaint-stamps-default 2022.06.04 (PNG, recursive, without
# /cartoon/ and /toys/).
STAMP_COUNTS = [35, 64, 11, 9, 26, 18, 25, 13]
SPLITS = ("train", "val", "test")
PER_CLASS = {"train": 70, "val": 30, "test": 25}
# Licences a background may have so that an image with a GPL-2.0-or-later stamp on it can
# be distributed under GPL-2.0-or-later.
FREE_FOR_GPL2 = {"Public Domain", "CC0-1.0", "GPLv2+", "GPL-2+", "MIT"}


def _rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines() if line.strip()]


def _stamp_table() -> dict[str, dict[str, tuple[str, str]]]:
    """class -> stamp relpath -> (split, status), from metadata/stamps.txt."""
    table: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    for name, rel, split, status in _rows(META / "stamps.txt"):
        assert rel not in table[name], f"stamp listed twice: {rel}"
        table[name][rel] = (split, status)
    return table


def test_classes_are_the_fixed_demo_classes():
    assert [n for n, _ in DEMO_CLASSES] == NAMES
    assert [f for _, f in DEMO_CLASSES] == FOLDERS
    assert (META / "class_names.txt").read_text().split() == NAMES


def test_stamp_split_follows_the_sha1_rule():
    table = _stamp_table()
    assert list(table) == NAMES
    for name, folder, count in zip(NAMES, FOLDERS, STAMP_COUNTS, strict=True):
        stamps = table[name]
        assert len(stamps) == count, name
        for rel in stamps:
            assert rel.startswith(folder + "/") and rel.endswith(".png"), rel
            assert "/cartoon/" not in rel and "/toys/" not in rel, rel
        # The rule, recomputed here independently of tedloc.data.demo.
        ordered = sorted(stamps, key=lambda p: hashlib.sha1(p.encode()).hexdigest())
        n_test = math.ceil(0.3 * len(ordered))
        assert {r for r, (s, _) in stamps.items() if s == "test"} == set(ordered[:n_test]), name
        assert {r for r, (s, _) in stamps.items() if s in ("train", "val")} == set(ordered[n_test:]), name
        assert split_stamps(list(stamps)) == (ordered[:n_test], ordered[n_test:])
        # val: the first max(1, round(0.2 m)) of the m train stamps, in the same order.
        rest = ordered[n_test:]
        n_val = max(1, math.floor(0.2 * len(rest) + 0.5))
        assert {r for r, (s, _) in stamps.items() if s == "val"} == set(rest[:n_val]), name
        assert split_val_stamps(rest) == (rest[:n_val], rest[n_val:])
        assert any(stamps[r] == ("val", "used") for r in rest[:n_val]), name
        assert {status for _, status in stamps.values()} <= {"used", "skipped_drawing", "skipped_opaque"}


def test_stamp_list_matches_installed_stamps():
    stamps_root = Path("/usr/share/tuxpaint/stamps")
    if not stamps_root.is_dir():
        pytest.skip("tuxpaint-stamps-default is not installed")
    # Another package version may list other stamps; the data records the one it was built from.
    try:
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "tuxpaint-stamps-default"],
                                 capture_output=True, text=True).stdout.strip()
    except OSError:
        version = ""
    if not version or f"`tuxpaint-stamps-default` {version}," not in (ROOT / "NOTICE.md").read_text():
        pytest.skip(f"installed tuxpaint-stamps-default {version!r} is not the version the data was built from")
    table = _stamp_table()
    for name, folder in DEMO_CLASSES:
        installed = {p.relative_to(stamps_root).as_posix() for p in (stamps_root / folder).rglob("*.png")}
        installed = {p for p in installed if "/cartoon/" not in p and "/toys/" not in p}
        assert set(table[name]) == installed, name


def _backgrounds() -> dict[str, tuple[str, str]]:
    """background name -> (split, licence), from metadata/backgrounds.txt."""
    table = {}
    for name, split, licence in _rows(META / "backgrounds.txt"):
        assert name not in table, f"background listed twice: {name}"
        table[name] = (split, licence)
    return table


def _sources(split: str) -> list[tuple[str, str, str, list[str]]]:
    """(image id, background, distractor stamp or "", object stamps) per image."""
    return [(row[0], row[1], row[2], row[3:]) for row in _rows(META / split / "sources.txt")]


@pytest.mark.parametrize("split", SPLITS)
def test_images_use_only_their_splits_stamps_and_backgrounds(split):
    table = _stamp_table()
    backgrounds = _backgrounds()
    labels = {i: int(v) for i, v in _rows(META / split / "class_labels.txt")}
    sources = _sources(split)
    assert [s[0] for s in sources] == (META / split / "image_ids.txt").read_text().split()
    for image_id, background, distractor, stamps in sources:
        name = NAMES[labels[image_id]]
        assert image_id.startswith(f"{split}/{name}/")
        assert 1 <= len(stamps) <= 2, image_id
        for rel in stamps:
            assert table[name][rel] == (split, "used"), (image_id, rel)
        if distractor:
            other = [n for n in NAMES if distractor in table[n]]
            assert other and other != [name], (image_id, distractor)
            assert table[other[0]][distractor] == (split, "used"), (image_id, distractor)
        assert backgrounds[background][0] == split, (image_id, background)


def test_splits_share_no_stamp_and_no_background():
    stamps = {s: {rel for _, _, d, rels in _sources(s) for rel in [*rels, d] if rel} for s in SPLITS}
    backgrounds = {s: {b for _, b, _, _ in _sources(s)} for s in SPLITS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert stamps[a] and stamps[b] and not stamps[a] & stamps[b], (a, b)
        assert backgrounds[a] and backgrounds[b] and not backgrounds[a] & backgrounds[b], (a, b)


def test_backgrounds_follow_the_sha1_rule_and_are_free():
    backgrounds = _backgrounds()
    assert len(backgrounds) >= 100
    # The rule, recomputed: sorted by SHA-1 of the name, ceil(0.2 n) test, ceil(0.2 n) val.
    ordered = sorted(backgrounds, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    n = math.ceil(0.2 * len(ordered))
    expected = {name: "test" if i < n else "val" if i < 2 * n else "train" for i, name in enumerate(ordered)}
    assert {name: split for name, (split, _) in backgrounds.items()} == expected
    assert split_backgrounds(backgrounds) == expected
    notice = (ROOT / "NOTICE.md").read_text()
    for name, (split, licence) in backgrounds.items():
        assert licence in FREE_FOR_GPL2, (name, licence)
        package, file = name.split(":", 1)
        assert f"`{file}` ({split}): {licence}" in notice, name
        assert f"### {package} " in notice, name


def _boxes_and_sizes(split: str) -> tuple[dict[str, list[list[int]]], dict[str, tuple[int, int]], dict[str, int]]:
    """Straight from the shipped text files: id -> boxes, id -> (width, height), id -> masks."""
    boxes: dict[str, list[list[int]]] = defaultdict(list)
    masks: Counter[str] = Counter()
    for row in _rows(META / split / "localization.txt"):
        if len(row) == 5:
            boxes[row[0]].append([int(v) for v in row[1:]])
        else:
            assert len(row) == 3 and row[1].startswith(f"masks/{split}/") and row[2] == "", row
            masks[row[0]] += 1
    sizes = {i: (int(w), int(h)) for i, w, h in _rows(META / split / "image_sizes.txt")}
    return boxes, sizes, masks


@pytest.mark.parametrize("split", SPLITS)
def test_object_sizes_spread_over_the_bins_and_two_object_share(split):
    boxes, sizes, _ = _boxes_and_sizes(split)
    assert set(boxes) == set(sizes)
    # Fraction of the image covered by its largest box (inclusive pixel corners).
    fractions = np.array([max((x1 - x0 + 1) * (y1 - y0 + 1) for x0, y0, x1, y1 in boxes[i]) / (w * h)
                          for i, (w, h) in sizes.items()])
    assert fractions.min() >= 0.01 and fractions.max() <= 0.7, (fractions.min(), fractions.max())
    bins = np.digitize(fractions, [0.05, 0.15, 0.30])
    shares = np.bincount(bins, minlength=4) / len(fractions)
    assert (shares >= 0.15).all(), shares
    two = np.mean([len(b) == 2 for b in boxes.values()])
    assert all(1 <= len(b) <= 2 for b in boxes.values())
    assert 0.15 <= two <= 0.25, two
    distractors = np.mean([bool(d) for _, _, d, _ in _sources(split)])
    assert 0.05 <= distractors <= 0.15, distractors


@pytest.mark.parametrize("split", ["val", "test"])
def test_every_object_of_val_and_test_has_a_box_and_a_mask(split):
    boxes, sizes, masks = _boxes_and_sizes(split)
    assert len(sizes) >= (240 if split == "val" else 200)
    for image_id in sizes:
        assert len(boxes[image_id]) >= 1 and masks[image_id] == len(boxes[image_id]), image_id


def test_train_has_boxes_but_no_masks():
    boxes, sizes, masks = _boxes_and_sizes("train")
    assert len(sizes) == 560 and set(boxes) == set(sizes) and not masks


@pytest.mark.parametrize("split", SPLITS)
def test_open_dataset_counts_and_boxes(split):
    ds = open_dataset("demo", split)
    assert ds.class_names == NAMES
    assert Counter(r.label for r in ds.records) == {c: PER_CLASS[split] for c in range(len(NAMES))}
    for r in ds.records:
        assert r.path is not None and r.path.is_file(), r.image_id
        assert r.boxes.shape in ((1, 4), (2, 4)) and r.boxes.dtype == np.float32
        w, h = r.size
        for x0, y0, x1, y1 in r.boxes:
            # Inclusive pixel corners inside the image; objects are at least a few pixels big.
            assert 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1, (r.image_id, r.boxes, r.size)
            assert x1 - x0 >= 8 and y1 - y0 >= 8
        if split == "train":
            assert r.mask_path is None and not r.mask_paths
        else:
            assert len(r.mask_paths) == len(r.boxes), r.image_id
            assert all(p.is_file() for p in r.mask_paths), r.image_id


@pytest.mark.parametrize("split", SPLITS)
def test_data_check_finds_no_problem(split):
    report = check_dataset("demo", split, decode=False)
    assert not report.problems, report.render()


def test_image_sizes_match_files():
    ds = open_dataset("demo", "test")
    for r in ds.records[::7]:
        with Image.open(r.path) as im:
            assert im.size == r.size and im.format == "JPEG"
            assert 224 <= max(im.size) <= 320


@pytest.mark.parametrize("split", ["val", "test"])
def test_masks_match_boxes(split):
    ds = open_dataset("demo", split)
    touching = 0
    for r in ds.records:
        union = np.zeros((r.size[1], r.size[0]), bool)
        for mask_path, box in zip(r.mask_paths, r.boxes, strict=True):
            mask = np.asarray(Image.open(mask_path))
            assert mask.dtype == np.uint8 and mask.shape == (r.size[1], r.size[0]), r.image_id
            assert set(np.unique(mask)) <= {0, 255}
            ys, xs = np.nonzero(mask)
            # Each object's box is the tight box of its own mask (inclusive corners).
            assert np.array_equal([xs.min(), ys.min(), xs.max(), ys.max()], box), r.image_id
            # Objects do not share pixels: a pixel belongs to the object in front.
            assert not (union & (mask > 0)).any(), r.image_id
            union |= mask > 0
        x0, y0, x1, y1 = r.boxes[0]
        touching += x0 == 0 or y0 == 0 or x1 == r.size[0] - 1 or y1 == r.size[1] - 1
    # Some objects touch or cross a border, most do not.
    assert 0.05 * len(ds) <= touching <= 0.5 * len(ds)


def test_total_size_within_budget():
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert total <= 25e6, total
    assert (ROOT / "NOTICE.md").is_file()


def test_package_data_glob_covers_demo_files():
    # setuptools ships tedloc/demo_data/** through this glob; keep it in pyproject.toml.
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["tedloc"]
    pkg = ROOT.parent
    shipped = {p for g in globs for p in pkg.glob(g) if p.is_file()}
    assert shipped >= {p for p in ROOT.rglob("*") if p.is_file()}
