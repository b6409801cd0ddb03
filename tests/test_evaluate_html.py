"""evaluate/<name>/index.html: self-contained, the report's numbers, every image with its map
and boxes, sortable by IoU.  Checked by parsing the HTML, and in a headless Chromium where
one is installed (Debian's chromium-headless-shell)."""

from __future__ import annotations

import base64
import html.parser
import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from tedloc.configs.evaluate import Config
from tedloc.stages import evaluate
from tedloc.stages.evaluate_html import pick_images, thumbnail
from tests.helpers_data import make_wsol_tree
from tests.helpers_model import make_model_workdir


class _Page(html.parser.HTMLParser):
    """The parts of the page the tests read: tables (cells with their data-v), images,
    SVG polylines, every URL-valued attribute, scripts."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, dict]]]] = {}
        self.headers: list[list[str]] = []
        self.images: list[str] = []
        self.polylines: list[dict] = []
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._table = self._row = self._cell = None
        self._in_script = self._in_th = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [v for k, v in attrs.items() if k in ("src", "href") and v]
        if tag == "table":
            self._table = attrs.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
            self.headers.append([])
        elif tag == "tr" and self._table:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ["", attrs]
        elif tag == "th":
            self._in_th = True
            self.headers[-1].append("")
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "polyline":
            self.polylines.append(attrs)
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")
            if attrs.get("src"):
                self.urls.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "th":
            self._in_th = False
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data
        if self._in_th:
            self.headers[-1][-1] += data
        if self._in_script:
            self.scripts[-1] += data


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    root = make_wsol_tree(tmp, splits={"train": 6, "test": 9}, num_classes=3, masks=True, boxes_too=True,
                          size=(64, 48))
    workdir = make_model_workdir(tmp / "w", root)
    config = Config(batch_size=4, num_workers=0, num_overlays=0, device="cpu", html_image_size=120)
    evaluate.run(config, workdir=workdir)
    stage = workdir / "evaluate" / "data-test"
    page = _Page()
    page.feed((stage / "index.html").read_text(encoding="utf-8"))
    return stage, page, root, config


def _results(stage):
    predictions = [json.loads(x) for x in (stage / "predictions.jsonl").read_text().splitlines()]
    return json.loads((stage / "results.json").read_text()), predictions


def test_page_is_self_contained(evaluation):
    stage, page, _, _ = evaluation
    text = (stage / "index.html").read_text(encoding="utf-8")
    assert all(url.startswith(("data:image/jpeg;base64,", "#")) for url in page.urls), page.urls
    for needle in ("<link", "@import", "url(", "http:", "https:", "//cdn"):
        assert needle not in text, needle
    assert len(page.scripts) == 1 and "function sortBy" in page.scripts[0]
    manifest = json.loads((stage / "manifest.json").read_text())
    assert "index.html" in manifest["checksums"] and "index.html" in manifest["outputs"]


def test_tables_hold_the_reports_numbers(evaluation):
    stage, page, _, _ = evaluation
    results, _ = _results(stage)
    overall_table = page.tables["table0"]
    header = page.headers[0]
    assert header[:2] == ["Method", "map uses GT label"]
    labels = [row[0][0] for row in overall_table]
    assert labels == ["TeD-Loc (class-agnostic map)", "CAM baseline (GT-known map)", "Centre prior (no learning)"]
    column = header.index("MaxBoxAccV2")
    for key, row in zip(("tedloc", "cam_baseline", "centre_prior"), overall_table, strict=True):
        assert row[column][0] == f"{results['methods'][key]['overall']['max_box_acc_v2']:.1f}", key
    pxap = header.index("PxAP")
    assert overall_table[0][pxap][0] == f"{results['methods']['tedloc']['overall']['pxap']:.1f}"
    assert "Top-1 Cls" in header and overall_table[2][header.index("Top-1 Cls")][0] == "–"  # centre prior
    # by-group tables follow, one row per method × group
    assert any(h[:2] == ["Method", "group"] for h in page.headers)


def test_curves_are_the_reports(evaluation):
    stage, page, _, _ = evaluation
    results, _ = _results(stage)
    labels = [p["data-label"] for p in page.polylines]
    assert labels == ["TeD-Loc V1", "TeD-Loc V2 IoU30", "TeD-Loc V2 IoU50", "TeD-Loc V2 IoU70", "CAM V1",
                      "Centre prior V1"]
    v1 = results["methods"]["tedloc"]["curves"]["v1"]
    points = [tuple(map(float, p.split(","))) for p in page.polylines[0]["points"].split()]
    assert len(points) == len(v1) == 100
    # y = top + (1 - v/100) * height: each point's height is its BoxAcc
    ys = np.array([y for _, y in points])
    heights = (ys.max() - ys) if np.ptp(v1) else np.zeros_like(ys)
    np.testing.assert_allclose(heights, (np.array(v1) - min(v1)) / 100 * 310, atol=0.11)


def test_every_image_with_its_map_class_and_iou(evaluation):
    stage, page, root, config = evaluation
    results, predictions = _results(stage)
    rows = page.tables["images"]
    assert len(rows) == len(predictions) == results["num_images"] == 9
    for row, line in zip(rows, predictions, strict=True):
        _, picture, image_id, gt, predicted, score, iou = row
        assert image_id[0] == line["image_id"] and gt[0] == line["label_name"]
        assert predicted[0] == line["class_name"] and float(score[1]["data-v"]) == line["score"]
        assert iou[1]["data-v"] == ("" if line["iou"] is None else str(line["iou"]))
    for src in page.images:
        data = base64.b64decode(src.split(",", 1)[1])
        picture = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape[:2] == (90, 120)  # 64×48 images at 120 px on the long side
    # The first picture is the overlay of the first image, its map and boxes, byte for byte.
    from tedloc.artifacts.store import ShardedReader
    from tedloc.data.wsol import read_wsol

    record = read_wsol(root, "test").by_id()[predictions[0]["image_id"]]
    with ShardedReader(stage, "tedloc.evaluate") as reader:
        scoremap = reader.read("map", record.image_id).astype(np.float32)
    box = [predictions[0]["box"]] if predictions[0]["box"] else []
    expected = thumbnail(cv2.cvtColor(cv2.imread(str(record.path)), cv2.COLOR_BGR2RGB), scoremap,
                         np.asarray(box), record.boxes, 120)
    assert base64.b64decode(page.images[0].split(",", 1)[1]) == expected


def test_thumbnail_draws_the_gt_box():
    image = np.full((100, 100, 3), 128, np.uint8)
    jpeg = thumbnail(image, np.zeros((224, 224), np.float32), np.zeros((0, 4)), np.array([[20, 20, 79, 79]]), 200)
    picture = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert picture.shape == (200, 200, 3)
    edge = picture[40, 60:140].astype(int)  # the box's top edge at twice the size
    inside = picture[100, 60:140].astype(int)
    # red over the bluish overlay (JPEG halves the colour resolution of a 1-pixel line)
    assert (edge[:, 0] - edge[:, 2]).mean() > 30 and (inside[:, 0] - inside[:, 2]).mean() < -30


def test_large_splits_show_a_sample_spread_over_the_iou_ranking():
    lines = [{"image_id": str(i), "iou": (None if i % 10 == 0 else (i * 37 % 100) / 100)} for i in range(100)]
    shown = pick_images(lines, 11)
    ious = sorted(x["iou"] for x in lines if x["iou"] is not None)
    picked = [x["iou"] for x in shown]
    assert len(shown) == 11 and ious[0] in picked  # the worst is always shown
    assert [int(x["image_id"]) for x in shown] == sorted(int(x["image_id"]) for x in shown)  # split order
    assert pick_images(lines, 200) == lines and pick_images(lines, 0) == []


def test_a_finished_evaluation_rewrites_the_page_when_asked_otherwise(evaluation, monkeypatch):
    stage, _, _, config = evaluation
    from tedloc.pipeline.localizer import Localizer

    def fail(*args, **kwargs):
        raise AssertionError("maps recomputed")

    monkeypatch.setattr(Localizer, "predict_features", fail)
    evaluate.run(config.replace(html_max_images=4), workdir=stage.parent.parent)
    page = _Page()
    page.feed((stage / "index.html").read_text(encoding="utf-8"))
    assert len(page.tables["images"]) == 4
    evaluate.run(config, workdir=stage.parent.parent)  # and back, for the other tests


def _browser() -> str | None:
    return next((p for p in map(shutil.which, ("chromium-headless-shell", "chromium", "chromium-browser",
                                               "google-chrome")) if p), None)


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium installed")
def test_headless_browser_sorts_the_worst_first(evaluation, tmp_path):
    """The page's own script, run by a real browser: opened as index.html#sort=iou, the rows
    come in increasing IoU."""
    stage, _, _, _ = evaluation
    _, predictions = _results(stage)
    command = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
               "--virtual-time-budget=2000", "--dump-dom", (stage / "index.html").as_uri() + "#sort=iou"]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    page = _Page()
    page.feed(dom)
    shown = [row[6][1]["data-v"] for row in page.tables["images"]]
    wanted = sorted(predictions, key=lambda x: (x["iou"] is None, x["iou"] or 0.0))
    assert [float(v) for v in shown if v] == [x["iou"] for x in wanted if x["iou"] is not None]
    assert [row[2][0] for row in page.tables["images"]][0] == wanted[0]["image_id"] or \
        wanted[0]["iou"] == wanted[1]["iou"]
