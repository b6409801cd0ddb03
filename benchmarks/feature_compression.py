"""Disk size and CPU cost of the cached feature grids, stored raw or lzf-compressed.

    python benchmarks/feature_compression.py [--dataset DIR] [--images 64] [--encoder efficientnet-lite0]

Runs the pseudo-labels stage (features and flipped features cached) on N images (without
--dataset: synthetic 500×375 JPEGs, as benchmarks/pseudo_labels.py), reads the grids back,
and writes them again as an HDF5 file per filter, one image per chunk (as the stage's shards
store them).  Prints, per filter, the write and read time per image (features + flipped
features; best of 3 writes) and the bytes on disk per image.  Real grids matter: they are
post-activation and compress far better (and faster) than random numbers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pseudo_labels import synthetic_tree  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="", help="A wsolevaluation folder (default: synthetic).")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--encoder", default="efficientnet-lite0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from tedloc.artifacts.pseudo_labels import open_pseudo_labels
    from tedloc.configs.pseudo_labels import Config
    from tedloc.stages import pseudo_labels

    scratch = Path(tempfile.mkdtemp(prefix="tedloc-bench-compression-"))
    dataset = args.dataset or str(synthetic_tree(scratch / "data", args.images))
    config = Config(dataset=dataset, split=args.split, encoder=args.encoder, limit=args.images,
                    device="cpu", cache_features="on", cache_flip_features=True, num_workers=0)
    pseudo_labels.run(config, workdir=scratch / "work")
    with open_pseudo_labels(scratch / "work") as art:
        grids = {name: art.read_all(name) for name in ("features", "features_flip")}
    n = len(grids["features"])
    print(f"encoder {args.encoder}, {n} images, grid {grids['features'].shape[1:]} float16, "
          "features + flipped features per image")
    for filter_name in (None, "lzf"):
        path = scratch / f"{filter_name or 'raw'}.h5"
        writes = []
        for _ in range(3):
            start = time.perf_counter()
            with h5py.File(path, "w") as handle:
                for name, array in grids.items():
                    handle.create_dataset(name, data=array, chunks=(1, *array.shape[1:]),
                                          compression=filter_name)
            writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        with h5py.File(path, "r") as handle:
            back = {name: handle[name][:] for name in grids}
        read = time.perf_counter() - start
        assert all(np.array_equal(back[name], grids[name]) for name in grids)
        print(f"{filter_name or 'none':>5}: write {min(writes) / n * 1e3:6.2f} ms/image, "
              f"read {read / n * 1e3:6.2f} ms/image, {path.stat().st_size / n / 1e6:5.3f} MB/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
