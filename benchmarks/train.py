"""Seconds per epoch of the train stage on a stand-in of the demo's size.

Builds stand-in upstream artifacts in a scratch workdir (random anchors; synthetic
pseudo-labels whose object patches carry a class signal), then trains and reports the
per-epoch time from ``train_log.csv`` and the total time (threshold choice included).

* ``--source cache``: cached float16 grids (default 560 images, 14×14×1392 = the
  EfficientNet-Lite0 grid at 224 px, d = 384 = MiniLM), read from memory.
* ``--source encoder``: no cached grids; the demo's training images are decoded in
  DataLoader workers and run through the frozen encoder on the fly (maps are boxes of the
  demo's annotations, for timing only: nothing here measures localization quality).

Usage::

    python benchmarks/train.py --source cache --epochs 3
    python benchmarks/train.py --source encoder --epochs 1 --num-workers 2
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tedloc.artifacts.store import ArtifactHeader, ShardedWriter, write_manifest
from tedloc.artifacts.text_embed import write_text_embed
from tedloc.config import hash_json
from tedloc.configs.train import Config
from tedloc.stages import train


def _text_embed(workdir: Path, names: list[str], dim: int) -> None:
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, len(names))))
    stage = workdir / "text_embed"
    stage.mkdir(parents=True, exist_ok=True)
    header = ArtifactHeader("tedloc.text_embed", 1, {"benchmark": True}, hash_json(["bench", names, dim]))
    write_text_embed(stage / "text_embed.h5", header, class_names=names, prompt_names=names, templates=["{}"],
                     raw=q.T, anchors=q.T, attrs={"text_encoder": "stand-in", "orthogonalization": "none"})
    write_manifest(stage, header, files=["text_embed.h5"])


def _pseudo_labels(workdir: Path, ids, labels, cams, boxes, *, encoder: str, input_size: int, feats=None,
                   dataset: str = "", shard: int = 64) -> None:
    header = ArtifactHeader("tedloc.pseudo_labels", 1, {"benchmark": True},
                            hash_json(["bench", len(ids), encoder, feats is not None]))
    n, h, w = cams.shape
    with ShardedWriter(workdir / "pseudo_labels", header) as writer:
        writer.open()
        for s in range(0, n, shard):
            rows = slice(s, s + shard)
            arrays = {"label": labels[rows], "image_size": np.full((len(ids[rows]), 2), input_size, np.int32),
                      "cam": cams[rows], "pseudo_box": boxes[rows]}
            if feats is not None:
                arrays["features"] = feats[rows]
                arrays["features_flip"] = np.ascontiguousarray(feats[rows][:, :, ::-1])
            writer.write_shard(ids[rows], arrays)
        writer.finish(ids, extra={"encoder": encoder, "input_size": input_size, "grid": [h, w],
                                  "feature_dim": int(feats.shape[-1]) if feats is not None else 0,
                                  "dataset": dataset, "split": "train", "has_features": feats is not None,
                                  "has_flip_features": feats is not None, "num_classes": int(labels.max()) + 1})


def _cams_from_boxes(boxes_cells: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    h, w = grid
    cams = np.zeros((len(boxes_cells), h, w), np.float16)
    for n, (x0, y0, x1, y1) in enumerate(boxes_cells.astype(int)):
        cams[n, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] = 1
    return cams


def build_cache(workdir: Path, *, images: int, classes: int, grid: tuple[int, int], channels: int, dim: int,
                input_size: int) -> None:
    rng = np.random.default_rng(0)
    h, w = grid
    labels = (np.arange(images) % classes).astype(np.int64)
    feats = rng.standard_normal((images, h, w, channels), dtype=np.float32).astype(np.float16)
    protos = rng.standard_normal((classes, channels)).astype(np.float16)
    cells = np.zeros((images, 4))
    for n in range(images):
        bh, bw = rng.integers(h // 3, 2 * h // 3 + 1, size=2)
        y0, x0 = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        feats[n, y0:y0 + bh, x0:x0 + bw] += protos[labels[n]]
        cells[n] = [x0, y0, x0 + bw, y0 + bh]
    boxes = (cells * input_size / w).astype(np.float32)
    _text_embed(workdir, [f"class{k}" for k in range(classes)], dim)
    _pseudo_labels(workdir, [f"img{n:05d}" for n in range(images)], labels, _cams_from_boxes(cells, grid), boxes,
                   encoder="efficientnet-lite0", input_size=input_size, feats=feats)


def build_demo(workdir: Path, *, encoder: str, dim: int) -> None:
    from tedloc.data.open import open_dataset
    from tedloc.pipeline.image_encoders import build_image_encoder

    dataset = open_dataset("demo", "train")
    enc = build_image_encoder(encoder)
    h, w = enc.grid
    s = enc.input_size
    ids = [r.image_id for r in dataset.records]
    labels = np.array([r.label for r in dataset.records], np.int64)
    boxes = np.array([r.boxes[0] * np.array([s / r.size[0], s / r.size[1]] * 2) for r in dataset.records], np.float32)
    cells = boxes * w / s
    _text_embed(workdir, list(dataset.class_names), dim)
    _pseudo_labels(workdir, ids, labels, _cams_from_boxes(cells, (h, w)), boxes, encoder=encoder, input_size=s,
                   dataset="demo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("cache", "encoder"), default="cache")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=560)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--grid", type=int, default=14)
    parser.add_argument("--channels", type=int, default=1392)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", default="", help="scratch workdir (default: a temporary folder)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tedloc-bench-"))
    started = time.perf_counter()
    if not (workdir / "pseudo_labels" / "manifest.json").exists():
        if args.source == "cache":
            build_cache(workdir, images=args.images, classes=args.classes, grid=(args.grid, args.grid),
                        channels=args.channels, dim=args.dim, input_size=224)
        else:
            build_demo(workdir, encoder=args.encoder, dim=args.dim)
    built = time.perf_counter()
    config = Config(epochs=args.epochs, num_workers=args.num_workers, device=args.device, progress=False,
                    features=args.source)
    train.run(config, workdir=workdir, overwrite=True)
    done = time.perf_counter()
    with open(workdir / "train" / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    seconds = [float(r["seconds"]) for r in rows]
    print(json.dumps({
        "source": args.source, "images_per_epoch": int(rows[0]["images"]),
        "epochs": len(rows), "seconds_per_epoch": [round(x, 2) for x in seconds],
        "train_total_s": round(done - built, 2), "setup_s": round(built - started, 2),
        "torch_threads": torch.get_num_threads(), "device": str(config.device), "workdir": str(workdir),
    }))


if __name__ == "__main__":
    main()
