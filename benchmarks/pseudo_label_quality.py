"""Quality of the pseudo-labels against the ground truth the demo's splits happen to have.

    python benchmarks/pseudo_label_quality.py --workdir RUN [--workdir RUN2 ...] [--write benchmarks/RESULTS.md]

A diagnostic only: the ground truth read here is never used to make pseudo-labels or to train.
Each ``RUN`` is a workdir with a finished ``pseudo_labels`` stage (and, optionally, an
evaluation on a split with masks, e.g. the demo's ``val``: ``RUN/evaluate/<name>/``, the one
named by ``--evaluation``, else the first with the CAM baseline).  For each it reports:

* **train split, pseudo boxes**: each training image's pseudo box (the box of its
  pseudo-label map at the stage's ``box_threshold``) against the image's GT boxes: mean
  best IoU and the share with IoU ≥ 0.5, overall and by object size (the largest GT box's
  share of the image, evaluate's bins).  The demo's training images keep their boxes for
  this; they have no masks.
* **held-out split, the same maps** (when an evaluation has the CAM baseline): the
  pseudo-label method applied to the held-out images with their labels is the CAM baseline
  the evaluate stage stores (same classifier, same encoder, the GT class's map), so its
  maps give the box IoU and the **mask IoU** (the map's region above ``box_threshold``
  against the union of the object masks) at the pseudo-label level, at 224×224.

``--write`` puts the tables into the report under the section this script owns (replaced
when present); ``--json`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

SECTION_TITLE = "## Pseudo-label quality against ground truth (diagnostic)"
OTHER_MARKER = "<!-- other benchmarks -->"
BINS = (0.05, 0.15, 0.30)
EVAL_SIZE = 224


def train_quality(workdir: Path) -> dict[str, Any]:
    """Pseudo boxes of the training split against its GT boxes (see the module docstring)."""
    from tedloc.artifacts.train_data import read_pseudo_label_index
    from tedloc.pipeline.groups import image_groups
    from tedloc.pipeline.metrics import gt_boxes_at_eval_size
    from tedloc.pipeline.pseudo_quality import best_box_iou, summarize

    index = read_pseudo_label_index(workdir)
    manifest = json.loads((index.directory / "manifest.json").read_text())
    records = index.open_dataset().by_id()
    ious, groups = [], []
    for k, image_id in enumerate(index.ids):
        record = records[image_id]
        if not len(record.boxes):
            continue
        size = tuple(int(v) for v in index.image_sizes[k])
        gt = gt_boxes_at_eval_size(record.boxes, size, index.input_size)  # the pseudo boxes' square
        ious.append(best_box_iou(index.pseudo_boxes[k].astype(np.int64), gt))
        groups.append(image_groups(record.boxes, size, BINS))
    return {"split": index.split, "box_threshold": manifest.get("box_threshold"),
            "method": manifest.get("method"), "config": manifest.get("config", {}),
            "diagnostic_maxboxacc_v2": (manifest.get("diagnostic") or {}).get("maxboxacc_v2"),
            "boxes": summarize(ious, groups)}


def find_evaluation(workdir: Path, name: str | None) -> Path | None:
    """``workdir/evaluate/<name>`` (``name`` None: the first finished one with the CAM
    baseline, by name), or None."""
    root = workdir / "evaluate"
    if name:
        return root / name if (root / name / "manifest.json").is_file() else None
    # evaluate/<name>/ (named evaluations), or evaluate/ itself (workdirs made before them)
    for stage in sorted(p.parent for p in [*root.glob("manifest.json"), *root.glob("*/manifest.json")]):
        results = stage / "results.json"
        if results.is_file() and "cam_baseline" in json.loads(results.read_text()).get("methods", {}):
            return stage
    return None


def held_out_quality(stage: Path | None, level: float) -> dict[str, Any] | None:
    """The CAM baseline maps of the evaluation in ``stage`` at ``level``: box and mask IoU."""
    import cv2

    from tedloc.artifacts import evaluate as files
    from tedloc.artifacts.store import ShardedReader
    from tedloc.data.open import open_dataset
    from tedloc.pipeline.boxes import boxes_from_map
    from tedloc.pipeline.groups import image_groups
    from tedloc.pipeline.metrics import gt_boxes_at_eval_size
    from tedloc.pipeline.pseudo_quality import best_box_iou, mask_iou, summarize

    if stage is None:
        return None
    results = json.loads((stage / "results.json").read_text())
    dataset = open_dataset(results["dataset"], results["split"])
    box_ious, mask_ious, groups, mask_groups = [], [], [], []
    with ShardedReader(stage, files.FORMAT) as reader:
        if not reader.has("cam_map"):
            return None
        for record in dataset.records:
            if record.image_id not in reader or not len(record.boxes):
                continue
            size = tuple(int(v) for v in reader.read("image_size", record.image_id))
            scoremap = reader.read("cam_map", record.image_id).astype(np.float32)
            group = image_groups(record.boxes, size, BINS)
            gt = gt_boxes_at_eval_size(record.boxes, size, EVAL_SIZE)
            box_ious.append(best_box_iou(boxes_from_map(scoremap, level)[0], gt))
            groups.append(group)
            foreground, _ = dataset.load_mask(record)
            if foreground is not None:
                mask = cv2.resize(foreground.astype(np.uint8), (EVAL_SIZE, EVAL_SIZE),
                                  interpolation=cv2.INTER_NEAREST) > 0
                mask_ious.append(mask_iou(scoremap, level, mask))
                mask_groups.append(group)
    return {"split": results["split"], "level": level, "boxes": summarize(box_ious, groups),
            "masks": summarize(mask_ious, mask_groups) if mask_ious else None}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _row(label: str, summary: dict[str, Any] | None, key: str) -> str:
    if summary is None:
        return f"| {label} | " + " | ".join(["–"] * 5) + " |"
    cells = [_pct(summary.get(key))]
    for group in ("<0.05", "0.05-0.15", "0.15-0.30", ">=0.30"):
        cells.append(_pct(summary.get("groups", {}).get("by_box_fraction", {}).get(group, {}).get(key)))
    return f"| {label} | " + " | ".join(cells) + " |"


def render(runs: list[dict[str, Any]], command: str) -> str:
    lines = [SECTION_TITLE, "", f"Command: `{command}`.", "",
             "A diagnostic: the ground truth read here is never used to make pseudo-labels or to train. "
             "Train split: each training image's pseudo box against its GT boxes (the demo's training "
             "images keep boxes for this, no masks). Held-out split: the pseudo-label method applied to "
             "the split's images with their labels (the evaluate stage's CAM baseline maps: same "
             "classifier and encoder), its box and its region against the object masks, at the "
             "pseudo-label box threshold, 224×224. Values in %; by object size = the largest GT box's "
             "share of the image.", ""]
    header = "| what | all | < 0.05 | 0.05–0.15 | 0.15–0.30 | ≥ 0.30 |"
    for run in runs:
        train, held = run["train"], run.get("held_out")
        lines += [f"### {run['name']}", "",
                  f"Pseudo-labels: method {train['method']}, box threshold {train['box_threshold']}"
                  + (f"; the stage's own diagnostic MaxBoxAccV2 {train['diagnostic_maxboxacc_v2']}"
                     if train.get("diagnostic_maxboxacc_v2") is not None else "") + ".", "",
                  header, "|---|---|---|---|---|---|",
                  _row(f"{train['split']}: pseudo box mean IoU", train["boxes"], "mean_iou"),
                  _row(f"{train['split']}: pseudo box IoU ≥ 0.5", train["boxes"], "iou50")]
        if held is not None:
            lines += [_row(f"{held['split']}: box mean IoU", held["boxes"], "mean_iou"),
                      _row(f"{held['split']}: box IoU ≥ 0.5", held["boxes"], "iou50"),
                      _row(f"{held['split']}: mask IoU (mean)", held["masks"], "mean_iou")]
        lines.append("")
    return "\n".join(lines)


def write_section(report: Path, section: str) -> None:
    """Replace this script's section of ``report`` (or add it after the other benchmarks' marker)."""
    text = report.read_text() if report.exists() else ""
    if SECTION_TITLE in text:
        start = text.index(SECTION_TITLE)
        nxt = text.find("\n## ", start + len(SECTION_TITLE))
        text = text[:start] + section.rstrip("\n") + "\n" + (text[nxt:] if nxt >= 0 else "")
    elif OTHER_MARKER in text:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        text = text.rstrip("\n") + f"\n\n{OTHER_MARKER}\n" + section
    report.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, action="append", required=True,
                        help="a workdir with pseudo_labels (and optionally evaluate); repeat to compare")
    parser.add_argument("--name", action="append", help="a table title per --workdir (default: its path)")
    parser.add_argument("--evaluation", help="the evaluation's name (RUN/evaluate/NAME); default: the first "
                                             "with the CAM baseline")
    parser.add_argument("--write", type=Path, help="report file whose section to (re)write")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    names = args.name or [str(w) for w in args.workdir]
    if len(names) != len(args.workdir):
        parser.error("give one --name per --workdir")
    runs = []
    for name, workdir in zip(names, args.workdir, strict=True):
        train = train_quality(workdir)
        level = float(train["box_threshold"] if train["box_threshold"] is not None else 0.5)
        runs.append({"name": name, "workdir": str(workdir), "train": train,
                     "held_out": held_out_quality(find_evaluation(workdir, args.evaluation), level)})
    command = "python benchmarks/pseudo_label_quality.py " + " ".join(
        f"--workdir {w} --name '{n}'" for w, n in zip(args.workdir, names, strict=True))
    section = render(runs, command)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1, default=str))
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
