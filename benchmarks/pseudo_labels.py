"""Throughput and memory of the pseudo-labels stage against the bare encoder forward.

    python benchmarks/pseudo_labels.py [--dataset DIR] [--images 64 192] [--encoder efficientnet-lite0]

Without --dataset, writes a wsolevaluation tree of synthetic 500×375 JPEGs (2 classes) to a
temporary folder.  Each image count runs in its own process (so that peak memory is that of
one run), which measures, in that one run:

* the **stage** (decode in workers, one encoder pass, classifier fit, CAMs, boxes, shards with
  the cached features, manifest, and the GT-box diagnostic unless --no-diagnostic) in images/s, and the peak RSS (main process plus
  its DataLoader workers, sampled every 100 ms: a sample costs 0.3 ms of CPU) while it runs;
* the **bare encoder forward** over the same work on already-decoded, resized images: with
  flipped features cached (the default) the stage forwards N images + N flipped images, as
  forwards of [k images; k flipped] (k = the forward batch), so the bare run forwards
  exactly those 2N inputs in the same forwards, and drops the outputs (the stage's copy of
  the grids into its float16 buffers counts against the stage).  Reported as images/s
  (N / time) and encoder forwards/s (2N / time); bare passes alternate with --repeats stage
  runs (bare, stage, bare, ..., stage, bare), each stage run is compared with the mean of
  the bare passes on either side of it ('drift' = after / before shows how steady the
  machine was) and the median run is reported, all after one
  warm-up forward;
* their ratio (the goal is ≥ 0.85: decoding, CAM and HDF5 writing hide behind the encoder).
* the share of the machine's CPU time the host took (``steal`` in /proc/stat) during each
  stage run: on a virtual machine that shares its host, a run with a large share is slowed
  by the host, not by the stage.

Peak RSS at two image counts shows whether memory grows with N (it must not: the stage
streams to shards; a final shard is buffered whole, so memory is bounded by --shard-size
images).  RSS is summed over processes, so pages the forked workers share count twice.
Fixed costs (building the encoder, the classifier fit) weigh more at small N.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import rss_tree_kb, steal_seconds  # noqa: E402


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


class _PeakRSS:
    """Samples the RSS of this process and its children in a thread; ``peak_mb`` after."""

    def __init__(self, every_s: float = 0.1):
        self.every_s = every_s
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, rss_tree_kb(os.getpid()))
            self._stop.wait(self.every_s)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


def one_run(args) -> dict:
    """Bare forward, stage, bare forward again, on the first ``args.one`` images, in this process."""
    import torch

    from tedloc.artifacts.cpu_memory import keep_freed_memory
    from tedloc.configs.pseudo_labels import Config
    from tedloc.data.open import open_dataset
    from tedloc.pipeline.forwards import encode_batch, resolve_forward_batch
    from tedloc.pipeline.image_encoders import build_image_encoder, resize_batch, resolve_device
    from tedloc.stages import pseudo_labels

    n = args.one
    device = resolve_device(args.device)
    encoder = build_image_encoder(args.encoder, device=device)
    dataset = open_dataset(args.dataset, args.split)
    records = dataset.records[:n]
    flip = not args.no_flip

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    config = Config(dataset=args.dataset, split=args.split, encoder=args.encoder, limit=n,
                    batch_size=args.batch_size, num_workers=args.num_workers, device=str(device),
                    cache_flip_features=flip, cache_features="on", shard_size=args.shard_size,
                    feature_compression=args.feature_compression,
                    forward_batch_size=args.forward_batch_size, diagnostic=not args.no_diagnostic,
                    cpu_keep_freed_memory=not args.no_keep_freed_memory)
    forward_batch = resolve_forward_batch(config.forward_batch_size, encoder.device)
    if device.type == "cpu" and config.cpu_keep_freed_memory:
        keep_freed_memory()  # the stage's malloc setting, for the bare passes too (process-wide)

    def decoded(i: int) -> np.ndarray:
        """uint8 (B, S, S, 3): the batch of ``batch_size`` images from record ``i``."""
        return resize_batch([dataset.load_image(r) for r in records[i:i + args.batch_size]], encoder.input_size)

    def bare_pass() -> float:
        """Seconds of the encoder's forwards alone, as the stage runs them: batches of
        ``batch_size``, each as forwards of [k images; k flipped]; the outputs are dropped (no
        copy, no rounding: the floor the stage is measured against).  Each batch is decoded
        before its forwards, untimed, so that no more than one batch of images is held (with
        cpu_keep_freed_memory the process keeps what it once held, and the stage's peak
        memory is measured in this process)."""
        seconds = 0.0
        for i in range(0, n, args.batch_size):
            pixels = torch.from_numpy(decoded(i)).to(device)
            sync()
            start = time.perf_counter()
            with torch.inference_mode():
                step = forward_batch or len(pixels)
                for j in range(0, len(pixels), step):
                    x = encoder.normalize(pixels[j:j + step])
                    encoder(torch.cat([x, x.flip(-1)]) if flip else x)
            sync()
            seconds += time.perf_counter() - start
        return seconds

    # Warm-up (kernel selection) on the batch shape both runs use, before either is timed.
    encode_batch(encoder, torch.from_numpy(decoded(0)), with_flip=flip, forward_batch=forward_batch)
    sync()
    # Bare passes and stage runs alternate (bare, stage, bare, stage, ..., bare); each stage
    # run is compared with the mean of the bare passes on either side of it, so that the
    # machine's speed drifting during the run favours neither side.  The median (for an even
    # number of runs the lower of the two middle ones) is reported.
    cpus = os.cpu_count() or 1
    steal: list[float | None] = []  # share of the machine the host took during each stage run

    def stolen_share(since: float | None, seconds: float) -> float | None:
        now = steal_seconds()
        return None if since is None or now is None else (now - since) / (seconds * cpus)

    bare = [bare_pass()]
    stage_s: list[float] = []
    peak_mb = 0.0
    for _ in range(args.repeats):
        workdir = Path(tempfile.mkdtemp(prefix="tedloc-bench-work-"))
        with _PeakRSS() as rss:
            stolen_before = steal_seconds()
            start = time.perf_counter()
            pseudo_labels.run(config, workdir=workdir)
            sync()
            stage_s.append(time.perf_counter() - start)
            steal.append(stolen_share(stolen_before, stage_s[-1]))
        peak_mb = max(peak_mb, rss.peak_mb)
        shutil.rmtree(workdir, ignore_errors=True)
        bare.append(bare_pass())
    ratios = [(bare[k] + bare[k + 1]) / 2 / stage_s[k] for k in range(args.repeats)]
    median = int(np.argsort(ratios)[(len(ratios) - 1) // 2])  # the lower middle for an even count
    bare_s = (bare[median] + bare[median + 1]) / 2
    forwards = 2 * n if flip else n
    return {"images": n, "device": str(device), "threads": torch.get_num_threads(),
            "forward_batch": forward_batch or args.batch_size,
            "bare_images_per_s": n / bare_s, "bare_forwards_per_s": forwards / bare_s,
            "bare_drift": bare[median + 1] / bare[median],
            "stage_images_per_s": n / stage_s[median], "stage_forwards_per_s": forwards / stage_s[median],
            "ratio": ratios[median], "ratios": ratios, "steal": steal, "peak_rss_mb": peak_mb,
            "forwards": forwards}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, nargs="+", default=[64, 192])
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=64, help="The stage's batch_size (its default: 64).")
    parser.add_argument("--forward-batch-size", type=int, default=0,
                        help="The stage's forward_batch_size (its default 0: 2 on a CPU, the batch on a GPU).")
    parser.add_argument("--num-workers", type=int, default=-1,
                        help="The stage's num_workers (its default -1: on a CPU, decoding threads in the "
                             "stage's process; on a GPU, 8 worker processes).")
    parser.add_argument("--device", default="auto")
    # Peak memory is bounded by shard_size images (a staging file's small arrays, one final
    # shard's maps), not by N.
    parser.add_argument("--shard-size", type=int, default=256, help="The stage's shard_size (its default: 256).")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Stage runs per image count, alternating with bare passes; the median ratio is reported.")
    parser.add_argument("--no-flip", action="store_true", help="Do not cache flipped-image features.")
    parser.add_argument("--no-diagnostic", action="store_true",
                        help="The stage without its GT-box diagnostic (diagnostic=false; on by default).")
    parser.add_argument("--no-keep-freed-memory", action="store_true",
                        help="Leave malloc's settings alone (the stage's cpu_keep_freed_memory=false).")
    parser.add_argument("--feature-compression", default="none", choices=["none", "lzf"],
                        help="The stage's feature_compression (its default: none).")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    if args.one:
        print(json.dumps(one_run(args)))
        return 0
    if args.dataset is None:
        args.dataset = str(synthetic_tree(Path(tempfile.mkdtemp(prefix="tedloc-bench-")) / "data",
                                          max(args.images)))
    print(f"encoder {args.encoder}, batch {args.batch_size}, forward batch "
          f"{args.forward_batch_size or 'auto'}, decoding workers {'auto' if args.num_workers < 0 else args.num_workers}, "
          f"shard size {args.shard_size}, feature compression {args.feature_compression}, "
          f"flipped features {'off' if args.no_flip else 'on'}, diagnostic {'off' if args.no_diagnostic else 'on'}, "
          f"malloc keeps freed memory {'no' if args.no_keep_freed_memory else 'yes (CPU)'} "
          f"(the stage forwards N images{'' if args.no_flip else ' + N flipped images'}; "
          "'bare' forwards the same inputs in the same forwards, before and after each stage run: "
          f"'drift' is after/before, bare img/s their mean; the median of {args.repeats} runs)")
    print(f"{'N':>5} {'bare img/s':>11} {'bare fwd/s':>11} {'drift':>6} {'stage img/s':>12} {'stage fwd/s':>12} "
          f"{'ratio':>6} {'peak RSS MB':>12}")
    for n in args.images:
        command = [sys.executable, __file__, "--one", str(n), "--dataset", args.dataset, "--split", args.split,
                   "--encoder", args.encoder, "--batch-size", str(args.batch_size),
                   "--num-workers", str(args.num_workers), "--device", args.device,
                   "--shard-size", str(args.shard_size), "--feature-compression", args.feature_compression,
                   "--forward-batch-size", str(args.forward_batch_size), "--repeats", str(args.repeats)]
        if args.no_flip:
            command.append("--no-flip")
        if args.no_diagnostic:
            command.append("--no-diagnostic")
        if args.no_keep_freed_memory:
            command.append("--no-keep-freed-memory")
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['images']:>5} {r['bare_images_per_s']:>11.2f} {r['bare_forwards_per_s']:>11.2f} "
              f"{r['bare_drift']:>6.2f} "
              f"{r['stage_images_per_s']:>12.2f} {r['stage_forwards_per_s']:>12.2f} {r['ratio']:>6.3f} "
              f"{r['peak_rss_mb']:>12.0f}   ({r['device']}, {r['threads']} threads, "
              f"forward batch {r['forward_batch']}; ratios of the {len(r['ratios'])} runs: "
              f"{', '.join(f'{x:.3f}' for x in r['ratios'])}; host steal during them: "
              f"{', '.join('n/a' if x is None else f'{100 * x:.1f}%' for x in r['steal'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
