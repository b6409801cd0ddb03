"""What the checksums of the artifact files cost (tedloc/artifacts/integrity.py).

    python benchmarks/checksums.py [--mb 500] [--repeats 3] [--folder DIR]

Writes a staging file of feature grids (the pseudo-labels stage's largest files: Lite0's
14×14×1392 float16 rows, features and flipped features, one row per chunk) of about ``--mb`` MB through the stage's own writer, then
times, each ``--repeats`` times (median, and the range):

* sealing it: reading it back once and writing its checksum block, as every file HDF5 writes
  to disk is sealed before it is renamed into place (built-in-memory files are sealed from
  memory: the CRC-32 of their bytes, the next line);
* the CRC-32 of as many bytes in memory (the cost of sealing a file built in memory), and
  blake2b for comparison;
* checking it as a stage does before reusing it (``file_problem``), with its pages dropped
  from the page cache first (as after the stage wrote it) and with them cached;
* checking a checkpoint (the CRC-32 of each zip record) of the train stage's size.

Default folder: the system's temporary folder.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np


def drop_cache(path: Path) -> None:
    """Evict the file's (clean) pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(function, repeats: int, before=None) -> list[float]:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def line(what: str, seconds: list[float], size: int) -> str:
    median = statistics.median(seconds)
    return (f"| {what} | {median * 1e3:.0f} ms ({min(seconds) * 1e3:.0f}-{max(seconds) * 1e3:.0f}) "
            f"| {size / median / 1e9:.2f} GB/s |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=500, help="Size of the staging file, MB.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default="", help="Where to write it (default: a temporary folder).")
    args = parser.parse_args()

    import torch

    from tedloc.artifacts.atomic import BackgroundCommitter
    from tedloc.artifacts.checkpoint import save_checkpoint
    from tedloc.artifacts.integrity import USERBLOCK, file_problem, seal_file
    from tedloc.artifacts.staging_writer import EncodedFileWriter
    from tedloc.artifacts.store import ArtifactHeader

    folder = Path(args.folder or tempfile.mkdtemp(prefix="tedloc-bench-checksums-"))
    folder.mkdir(parents=True, exist_ok=True)
    row = (14, 14, 1392)
    row_bytes = int(np.prod(row)) * 2
    images = max(1, args.mb * 10**6 // (2 * row_bytes))
    rng = np.random.default_rng(0)
    grids = rng.standard_normal((32, *row)).astype(np.float16)
    header = ArtifactHeader("tedloc.pseudo_labels", 1, {}, "bench")
    path = folder / "part000of001-00000.h5"
    start = time.perf_counter()
    with BackgroundCommitter() as committer:
        writer = EncodedFileWriter(path, header, part=0, num_parts=1, seq=0, committer=committer,
                                   expected_grid_bytes=images * 2 * row_bytes)
        for first in range(0, images, 32):
            n = min(32, images - first)
            writer.append([f"img{first + k}" for k in range(n)],
                          {"features": grids[:n], "features_flip": grids[:n],
                           "label": np.zeros(n, np.int64), "image_size": np.zeros((n, 2), np.int32),
                           "pooled": np.zeros((n, 1392), np.float32)})
        writer.close()
    written = time.perf_counter() - start
    size = path.stat().st_size
    print(f"staging file: {images} images (features + flipped features), {size / 1e6:.0f} MB, "
          f"written and sealed in {written:.2f} s, in {folder}")

    data = path.read_bytes()[USERBLOCK:]
    print("| what | time (median, range) | rate |")
    print("|---|---|---|")
    print(line("seal a file HDF5 wrote (read back past the page cache, CRC-32)",
               timed(lambda: seal_file(path), args.repeats, before=lambda: drop_cache(path)), size))
    print(line("CRC-32 of as many bytes in memory (zlib)", timed(lambda: zlib.crc32(data), args.repeats),
               len(data)))
    print(line("blake2b of as many bytes in memory", timed(lambda: hashlib.blake2b(data).digest(),
                                                           args.repeats), len(data)))
    data = b""  # frees the copy
    assert file_problem(path) is None
    print(line("check it, pages not cached (file_problem)",
               timed(lambda: file_problem(path), args.repeats, before=lambda: drop_cache(path)), size))
    with open(path, "rb") as handle:  # into the page cache
        while handle.read(8 << 20):
            pass
    print(line("check it, pages cached (file_problem)", timed(lambda: file_problem(path), args.repeats), size))

    state = {"head_state": {f"w{k}": torch.randn(256, 256) for k in range(16)}}  # ~4 MB, a head's size
    checkpoint = save_checkpoint(folder / "last.pt", state)
    print(line(f"check a checkpoint of {checkpoint.stat().st_size / 1e6:.1f} MB (zip CRC-32 per record)",
               timed(lambda: file_problem(checkpoint), args.repeats), checkpoint.stat().st_size))
    path.unlink()
    checkpoint.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
