"""Throughput of the pseudo-labels stage against the bare encoder forward, on the same images.

    python benchmarks/pseudo_labels.py [--dataset DIR] [--images 128] [--encoder efficientnet-lite0]

Without --dataset, writes a wsolevaluation tree of synthetic 500×375 JPEGs (2 classes) to a
temporary folder.  Reports images/s of (a) the bare encoder forward at --batch-size on
already-decoded, resized images, (b) the whole stage (decode in workers, classifier pass,
maps, boxes, cached features, shards, manifest), their ratio, the ratio per encoder forward
(the stage runs one forward per image for the classifier's pooled features, one for the
maps and one more for the flipped-image features when they are cached), and the peak RSS.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def synthetic_tree(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    meta = root / "metadata" / "train"
    (root / "images").mkdir(parents=True)
    meta.mkdir(parents=True)
    ids, labels, locs = [], [], []
    for i in range(n):
        image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        image = cv2.GaussianBlur(image, (0, 0), 3)
        x0, y0 = int(rng.integers(0, 300)), int(rng.integers(0, 200))
        image[y0:y0 + 150, x0:x0 + 180] = (230, 40, 40) if i % 2 else (40, 200, 60)
        image_id = f"images/{i:05d}.jpg"
        cv2.imwrite(str(root / image_id), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        ids.append(image_id)
        labels.append(f"{image_id},{i % 2}")
        locs.append(f"{image_id},{x0},{y0},{x0 + 179},{y0 + 149}")
    (meta / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (meta / "class_labels.txt").write_text("\n".join(labels) + "\n")
    (meta / "localization.txt").write_text("\n".join(locs) + "\n")
    (root / "metadata" / "class_names.txt").write_text("red\ngreen\n")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from tedloc.configs.pseudo_labels import Config
    from tedloc.data.open import open_dataset
    from tedloc.pipeline.image_encoders import build_image_encoder, resize_batch, resolve_device
    from tedloc.stages import pseudo_labels

    tmp = Path(tempfile.mkdtemp(prefix="tedloc-bench-"))
    dataset_dir = Path(args.dataset) if args.dataset else synthetic_tree(tmp / "data", args.images)
    device = resolve_device(args.device)
    dataset = open_dataset(str(dataset_dir), args.split)
    records = dataset.records[:args.images]
    n = len(records)

    encoder = build_image_encoder(args.encoder, device=device)
    resized = resize_batch([dataset.load_image(r) for r in records], encoder.input_size)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():  # warm-up
        encoder(encoder.normalize(resized[:args.batch_size]))
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, n, args.batch_size):
            encoder(encoder.normalize(resized[i:i + args.batch_size]))
    sync()
    bare = n / (time.perf_counter() - start)

    config = Config(dataset=str(dataset_dir), split=args.split, encoder=args.encoder, limit=n,
                    batch_size=args.batch_size, num_workers=args.num_workers, device=str(device))
    start = time.perf_counter()
    manifest = pseudo_labels.run(config, workdir=tmp / "work")
    sync()
    staged = n / (time.perf_counter() - start)
    forwards = 2 + (1 if config.cache_flip_features else 0)  # classifier pass, maps, flipped grid
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"device {device}, encoder {args.encoder}, {n} images, batch {args.batch_size}, "
          f"workers {args.num_workers}, torch threads {torch.get_num_threads()}")
    print(f"bare encoder forward: {bare:.1f} images/s")
    print(f"pseudo-labels stage : {staged:.1f} images/s ({forwards} encoder forwards per image)")
    print(f"ratio stage / bare  : {staged / bare:.3f}")
    print(f"ratio per forward   : {staged * forwards / bare:.3f}")
    print(f"peak RSS            : {peak_rss_mb:.0f} MB")
    print(f"artifact            : {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
