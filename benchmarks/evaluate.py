"""Benchmark of the evaluation metrics: time per image of the streaming accumulators.

Usage::

    python benchmarks/evaluate.py [--images 200] [--size 224] [--interval 0.01] [--grid 14]

Synthetic maps (random grids upsampled bicubically, like a model's 14×14 map) with one or
two GT boxes each; one method = MaxBoxAccV1 + V2 (100 thresholds each), Loc at the stored
threshold, classification, and PxAP on a box-shaped mask.  Prints ms per image and the
projected time of the report phase for split sizes of the common benchmarks.  The numbers
say nothing about localization quality (the maps are random).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tedloc.pipeline.metrics import LocalizationAccumulator, evaluation_map, threshold_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--grid", type=int, default=14, help="side of the model's map before upsampling")
    parser.add_argument("--classes", type=int, default=200)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    maps, boxes, masks = [], [], []
    for _ in range(args.images):
        grid = rng.random((args.grid, args.grid)).astype(np.float32)
        maps.append(evaluation_map(grid, args.size))
        k = int(rng.integers(1, 3))
        x0 = rng.integers(0, args.size // 2, size=k)
        y0 = rng.integers(0, args.size // 2, size=k)
        w = rng.integers(20, args.size // 2, size=k)
        h = rng.integers(20, args.size // 2, size=k)
        b = np.stack([x0, y0, np.minimum(x0 + w, args.size - 1), np.minimum(y0 + h, args.size - 1)], 1)
        boxes.append(b)
        mask = np.zeros((args.size, args.size), bool)
        mask[b[0, 1]:b[0, 3] + 1, b[0, 0]:b[0, 2] + 1] = True
        masks.append(mask)
    labels = rng.integers(0, args.classes, size=args.images)
    logits = rng.normal(size=(args.images, args.classes))

    thresholds = threshold_grid(args.interval)
    acc = LocalizationAccumulator(args.classes, thresholds, stored_threshold=0.5)
    start = time.perf_counter()
    for i in range(args.images):
        acc.add(maps[i], logits[i], int(labels[i]), boxes[i], image_id=str(i), foreground=masks[i])
    elapsed = time.perf_counter() - start
    result = acc.compute()
    per_image = 1000 * elapsed / args.images
    print(f"{args.images} images, {args.size}x{args.size}, {len(thresholds)} thresholds, {args.grid}x{args.grid} maps")
    print(f"metrics of one method: {per_image:.1f} ms/image ({elapsed:.2f} s total)")
    print(f"sanity: MaxBoxAccV1 {result['overall']['max_box_acc_v1']:.1f}, "
          f"PxAP {result['overall']['pxap']:.1f} (random maps)")
    for name, n in (("CUB test", 5794), ("ILSVRC val", 50000)):
        print(f"projected report phase, 2 methods, one process, {name} ({n} images): "
              f"{2 * per_image * n / 1000 / 60:.1f} min (the stage splits it over --num-workers processes)")


if __name__ == "__main__":
    main()
