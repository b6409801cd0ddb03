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

from tedloc.data.demo import DEMO_CLASSES, demo_root, split_stamps
from tedloc.data.open import open_dataset

ROOT = demo_root()
META = ROOT / "metadata"
NAMES = ["bird", "mammal", "fish", "insect", "fruit", "vegetable", "flower", "tool"]
FOLDERS = ["animals/birds", "animals/mammals", "animals/fish", "animals/insects",
           "food/fruit", "food/vegetables", "plants/flowers", "household/tools"]
# Stamps per class in tuxpaint-stamps-default 2022.06.04 (PNG, recursive, without
# /cartoon/ and /toys/).
STAMP_COUNTS = [35, 64, 11, 9, 26, 18, 25, 13]


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
        assert {r for r, (s, _) in stamps.items() if s == "train"} == set(ordered[n_test:]), name
        assert split_stamps(list(stamps)) == (ordered[:n_test], ordered[n_test:])
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


@pytest.mark.parametrize("split", ["train", "test"])
def test_images_use_only_their_splits_used_stamps(split):
    table = _stamp_table()
    labels = {i: int(v) for i, v in _rows(META / split / "class_labels.txt")}
    sources = _rows(META / split / "sources.txt")
    assert [s[0] for s in sources] == (META / split / "image_ids.txt").read_text().split()
    for image_id, rel, background in sources:
        name = NAMES[labels[image_id]]
        assert table[name][rel] == (split, "used"), (image_id, rel)
        assert image_id.startswith(f"{split}/{name}/")
        assert ":" in background


def test_train_and_test_stamps_are_disjoint():
    used = {s: {row[1] for row in _rows(META / s / "sources.txt")} for s in ("train", "test")}
    assert used["train"] and used["test"]
    assert not used["train"] & used["test"]


@pytest.mark.parametrize("split,per_class", [("train", 70), ("test", 25)])
def test_open_dataset_counts_and_boxes(split, per_class):
    ds = open_dataset("demo", split)
    assert ds.class_names == NAMES
    assert Counter(r.label for r in ds.records) == {c: per_class for c in range(len(NAMES))}
    for r in ds.records:
        assert r.path is not None and r.path.is_file(), r.image_id
        assert r.boxes.shape == (1, 4) and r.boxes.dtype == np.float32
        w, h = r.size
        x0, y0, x1, y1 = r.boxes[0]
        # Inclusive pixel corners inside the image; objects are at least a few pixels big.
        assert 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1, (r.image_id, r.boxes, r.size)
        assert x1 - x0 >= 8 and y1 - y0 >= 8
        if split == "test":
            assert r.mask_path is not None and r.mask_path.is_file(), r.image_id
        else:
            assert r.mask_path is None


def test_image_sizes_match_files():
    ds = open_dataset("demo", "test")
    for r in ds.records[::7]:
        with Image.open(r.path) as im:
            assert im.size == r.size and im.format == "JPEG"
            assert 224 <= max(im.size) <= 320


def test_masks_match_boxes():
    ds = open_dataset("demo", "test")
    touching = 0
    for r in ds.records:
        mask = np.asarray(Image.open(r.mask_path))
        assert mask.dtype == np.uint8 and mask.shape == (r.size[1], r.size[0]), r.image_id
        assert set(np.unique(mask)) <= {0, 255}
        ys, xs = np.nonzero(mask)
        # The box is the tight box of the mask (inclusive corners).
        assert np.array_equal([xs.min(), ys.min(), xs.max(), ys.max()], r.boxes[0]), r.image_id
        x0, y0, x1, y1 = r.boxes[0]
        touching += x0 == 0 or y0 == 0 or x1 == r.size[0] - 1 or y1 == r.size[1] - 1
    # Some objects touch or cross a border, most do not.
    assert 0.05 * len(ds) <= touching <= 0.5 * len(ds)


def test_total_size_within_budget():
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert total <= 15e6, total
    assert (ROOT / "NOTICE.md").is_file()


def test_package_data_glob_covers_demo_files():
    # setuptools ships tedloc/demo_data/** through this glob; keep it in pyproject.toml.
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["tedloc"]
    pkg = ROOT.parent
    shipped = {p for g in globs for p in pkg.glob(g) if p.is_file()}
    assert shipped >= {p for p in ROOT.rglob("*") if p.is_file()}
