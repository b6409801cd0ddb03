"""``evaluate/<name>/index.html``: one self-contained page to browse an evaluation.

Everything is inside the file (no server, no network, no CDN): the results tables of
``results.json``, the BoxAcc-vs-threshold curves as inline SVG, and a table of the images,
each with its TeD-Loc map over the image (GT boxes red, the predicted box at the stored
threshold green) as an embedded JPEG, its GT and predicted class, score and IoU.  Clicking
a column title sorts by it (a few lines of inline JavaScript); sorted by IoU, the worst
localizations come first, as they do on opening ``index.html#sort=iou``.  The page is written after results.json, from the shards and
predictions.jsonl, so it shows exactly the numbers of the report.

Size: about 10-15 kB per image at the default 240 px.  A split of more than
``html_max_images`` images shows that many, spread evenly over the IoU ranking (the worst
and the best always in), and says so.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tedloc.artifacts import evaluate as files
from tedloc.artifacts.atomic import atomic_path
from tedloc.artifacts.store import ShardedReader
from tedloc.data.records import Dataset, Record
from tedloc.errors import InputError
from tedloc.pipeline import render

log = logging.getLogger(__name__)

INDEX_HTML = "index.html"
#: JPEG quality of the embedded pictures: small files, boxes still crisp.
JPEG_QUALITY = 80
#: Curve colours (SVG), one per curve in legend order.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
#images th{cursor:pointer}#images th:hover{background:#e0e8ff}#images td{vertical-align:middle}
#images img{display:block}#images td{text-align:left}.wide{overflow-x:auto}.note{color:#555;max-width:60em}"""

# Sorts the image table by the clicked column (numbers as numbers; empty cells last).
_SCRIPT = """function sortBy(col){const t=document.getElementById('images'),b=t.tBodies[0];
const h=t.tHead.rows[0].cells[col],asc=h.dataset.order!=='asc';
for(const c of t.tHead.rows[0].cells)delete c.dataset.order;h.dataset.order=asc?'asc':'desc';
const key=r=>{const v=r.cells[col].dataset.v;return v===undefined?r.cells[col].textContent:v;};
const rows=Array.from(b.rows);rows.sort((x,y)=>{const a=key(x),c=key(y);
if(a===''||c==='')return (a==='')-(c==='');const na=Number(a),nc=Number(c);
const d=(isNaN(na)||isNaN(nc))?a.localeCompare(c):na-nc;return asc?d:-d;});
for(const r of rows)b.appendChild(r);}
const m=location.hash.match(/sort=([a-z]+)/);if(m){const h=Array.from(document.getElementById('images')
.tHead.rows[0].cells).findIndex(c=>c.dataset.key===m[1]);if(h>=0)sortBy(h);}"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else _e(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, table_id: str = "") -> str:
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def results_tables(results: Mapping[str, Any]) -> str:
    """The overall table (methods × the metrics computed), the by-group tables and the
    per-class tables, as in results.md."""
    methods = files.ordered_methods(results)
    columns = [k for k in files.METRIC_COLUMNS
               if any(m["overall"].get(k) is not None for _, m in methods)]
    rows = [[_e(m["label"]), "yes" if m.get("uses_label") else "no", _cell(m["overall"].get("stored_threshold"), 2),
             _cell(m["overall"].get("oracle_threshold"), 2)] + [_cell(m["overall"].get(k)) for k in columns]
            for _, m in methods]
    parts = ["<h2>Results (%)</h2>",
             '<div class="wide">' + _table(["Method", "map uses GT label", "stored τ", "oracle τ"]
                                           + [files.METRIC_COLUMNS[k] for k in columns], rows) + "</div>"]
    keys = results.get("conventions", {}).get("groups", {})
    for family, title in files.GROUP_TITLES.items():
        group_rows = [[_e(m["label"]), _e(key)] + [_cell(m.get(family, {}).get(key, {}).get(c))
                                                   for c in files.GROUP_COLUMNS]
                      for _, m in methods if m.get(family) for key in keys.get(family, m[family])]
        if group_rows:
            parts += [f"<h3>{_e(title)}</h3>",
                      _table(["Method", "group"] + list(files.GROUP_COLUMNS.values()), group_rows)]
    for _, m in methods:
        per_class = m.get("per_class") or {}
        cols = [k for k in files.PER_CLASS_COLUMNS if any(v.get(k) is not None for v in per_class.values())]
        if per_class:
            parts.append(f"<details><summary>Per class: {_e(m['label'])}</summary>"
                         + _table(["Class"] + [files.PER_CLASS_COLUMNS[k] for k in cols],
                                  [[_e(name)] + [_cell(v.get(k)) for k in cols] for name, v in per_class.items()])
                         + "</details>")
    return "\n".join(parts)


def curves_svg(results: Mapping[str, Any], *, width: int = 640, height: int = 360) -> str:
    """BoxAcc (%) against the threshold τ, one polyline per curve (TeD-Loc's V1 and V2 cuts,
    the other methods' V1), the stored τ dashed; '' without curves."""
    curves: list[tuple[str, list[float]]] = []
    thresholds: list[float] = []
    stored = None
    for key, method in files.ordered_methods(results):
        short = files.METHOD_SHORT_NAMES.get(key, key)
        for name, values in (method.get("curves") or {}).items():
            if key == "tedloc" or name == "v1":
                curves.append((f"{short} {'V1' if name == 'v1' else name.replace('v2_iou', 'V2 IoU')}", values))
                thresholds = method.get("thresholds") or thresholds
        if key == "tedloc":
            stored = method["overall"].get("stored_threshold")
    if not curves or not thresholds:
        return ""
    left, top, plot_w, plot_h = 45, 15, width - 215, height - 50

    def x(t: float) -> float:
        return left + t * plot_w

    def y(v: float) -> float:
        return top + (1 - v / 100) * plot_h

    out = [f'<svg width="{width}" height="{height}" '
           f'role="img" aria-label="BoxAcc against the threshold">',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#000"/>']
    for i in range(11):
        out.append(f'<line x1="{x(i / 10):.1f}" y1="{top}" x2="{x(i / 10):.1f}" y2="{top + plot_h}" stroke="#e4e4e4"/>'
                   f'<text x="{x(i / 10):.1f}" y="{top + plot_h + 15}" font-size="10" text-anchor="middle">'
                   f'{i / 10:.1f}</text>'
                   f'<line x1="{left}" y1="{y(i * 10):.1f}" x2="{left + plot_w}" y2="{y(i * 10):.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{left - 5}" y="{y(i * 10) + 3:.1f}" font-size="10" text-anchor="end">{i * 10}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="11" text-anchor="middle">'
               'threshold τ</text>')
    for k, (label, values) in enumerate(curves):
        color = COLORS[k % len(COLORS)]
        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(thresholds, values, strict=False))
        out.append(f'<polyline class="curve" data-label="{_e(label)}" fill="none" stroke="{color}" '
                   f'stroke-width="1.5" points="{points}"/>'
                   f'<line x1="{left + plot_w + 12}" y1="{top + 10 + 16 * k}" x2="{left + plot_w + 32}" '
                   f'y2="{top + 10 + 16 * k}" stroke="{color}" stroke-width="2"/>'
                   f'<text x="{left + plot_w + 36}" y="{top + 14 + 16 * k}" font-size="11">{_e(label)}</text>')
    if stored is not None:
        out.append(f'<line class="stored" x1="{x(stored):.1f}" y1="{top}" x2="{x(stored):.1f}" '
                   f'y2="{top + plot_h}" stroke="#555" stroke-dasharray="4 3"/>'
                   f'<text x="{x(stored) + 3:.1f}" y="{top + 10}" font-size="10">stored τ</text>')
    out.append("</svg>")
    return "".join(out)


def pick_images(predictions: Sequence[Mapping[str, Any]], limit: int) -> list[Mapping[str, Any]]:
    """The predictions shown: all of them, or ``limit`` spread evenly over the IoU ranking
    (worst first, images without a box IoU last), back in split order."""
    if len(predictions) <= limit:
        return list(predictions)
    if limit <= 0:
        return []
    ranked = sorted(range(len(predictions)), key=lambda i: (predictions[i].get("iou") is None,
                                                           predictions[i].get("iou") or 0.0, i))
    chosen = {ranked[int(round(j))] for j in np.linspace(0, len(ranked) - 1, limit)}
    return [predictions[i] for i in sorted(chosen)]


def thumbnail(image: np.ndarray, scoremap: np.ndarray, pred_boxes: np.ndarray, gt_boxes: np.ndarray,
              side: int) -> bytes:
    """JPEG of ``image`` (uint8 RGB (H, W, 3)) resized to ``side`` pixels on its long side,
    the map over it, ``x0y0x1y1`` boxes in original pixels drawn at the picture's scale."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    picture = render.overlay(small, scoremap, pred_boxes=np.asarray(pred_boxes, np.float64).reshape(-1, 4) * scale,
                             gt_boxes=np.asarray(gt_boxes, np.float64).reshape(-1, 4) * scale)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("cannot encode JPEG")
    return data.tobytes()


def image_rows(stage_dir: Path, dataset: Dataset, records: Mapping[str, Record],
               predictions: Sequence[Mapping[str, Any]], *, side: int, multi_contour: bool) -> list[list[str]]:
    """One table row per prediction: rank, picture, id, GT class, predicted class, score, IoU."""
    rows = []
    with ShardedReader(stage_dir, files.FORMAT, allow_partial=True) as reader:  # before the manifest
        for rank, line in enumerate(predictions):
            record = records[line["image_id"]]
            try:
                image = dataset.load_image(record)
            except InputError as exc:  # readable when the maps were made; say so rather than stop
                log.warning("index.html: %s left out of the picture: %s", record.image_id, exc)
                image = np.zeros((line["image_size"][1], line["image_size"][0], 3), np.uint8)
            boxes = line["boxes"] if multi_contour else [line["box"]] if line.get("box") else []
            jpeg = thumbnail(image, reader.read("map", record.image_id).astype(np.float32), np.asarray(boxes),
                             record.boxes, side)
            src = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
            iou = line.get("iou")
            rows.append([f'<td data-v="{rank}">{rank}</td>', f'<td><img alt="{_e(record.image_id)}" src="{src}"></td>',
                         f"<td>{_e(record.image_id)}</td>", f"<td>{_e(line['label_name'])}</td>",
                         f"<td>{_e(line['class_name'])}</td>", f'<td data-v="{line["score"]}">{line["score"]:.3f}</td>',
                         f'<td data-v="{"" if iou is None else iou}">{"–" if iou is None else f"{iou:.3f}"}</td>'])
    return rows


def write_index_html(stage_dir: Path, results: Mapping[str, Any], dataset: Dataset, records: Sequence[Record], *,
                     name: str, max_images: int, side: int) -> Path:
    """Write ``<stage_dir>/index.html`` (see the module docstring); return its path."""
    predictions = [json.loads(line) for line in
                   (stage_dir / files.PREDICTIONS).read_text(encoding="utf-8").splitlines() if line.strip()]
    shown = pick_images(predictions, max_images)
    conv = results.get("conventions", {})
    rows = image_rows(stage_dir, dataset, {r.image_id: r for r in records}, shown, side=side,
                      multi_contour=bool(conv.get("loc_multi_contour")))
    header = {"rank": "#", "map": "map over the image", "image": "image", "gt": "GT class",
              "predicted": "predicted class", "score": "score", "iou": "IoU"}
    head = "".join(f'<th data-key="{key}" onclick="sortBy({k})" title="sort">{_e(h)}</th>'
                   for k, (key, h) in enumerate(header.items()))
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    notes = []
    if results.get("class_agnostic"):
        notes.append(f"Class-agnostic: {_e(results.get('left_out', ''))}.")
    if len(shown) < len(predictions):
        notes.append(f"{len(shown)} of {len(predictions)} images shown (html_max_images), spread evenly over "
                     "the IoU ranking: the worst and the best are in.")
    title = f"Evaluation {name}: {results.get('dataset')} / {results.get('split')}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_STYLE}</style></head>
<body><h1>{_e(title)}</h1>
<p class="note">{results.get('num_images')} images{f", {len(results.get('skipped') or {})} skipped" if results.get('skipped') else ''}.
Maps and boxes compared at {conv.get('eval_size')}×{conv.get('eval_size')}; thresholds every
{conv.get('cam_curve_interval')}; MaxBoxAccV2 over IoU {_e(conv.get('iou_thresholds'))}; Loc at IoU
{conv.get('loc_iou')}. Loc without a mark is at each method's stored threshold (chosen without ground truth);
"oracle τ" maximizes GT-known Loc on this split. – marks a value not computed. {' '.join(notes)}</p>
{results_tables(results)}
<h2>BoxAcc against the threshold</h2>
{curves_svg(results)}
<h2>Images</h2>
<p class="note">TeD-Loc's map over each image; red: ground-truth boxes, green: the predicted box at the
stored threshold; IoU is the best IoU of that box with the ground truth (– without boxes). Click a column
title to sort by it (IoU: worst first); <a href="#sort=iou" onclick="sortBy(6)">worst first</a>
opens sorted.</p>
<table id="images"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<script>{_SCRIPT}</script>
</body></html>
"""
    path = stage_dir / INDEX_HTML
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
