"""What each speed trick of the pseudo-labels stage buys: the stage with the trick and without
it, run after run, interleaved (with, without, with, without, ...), on the same images.

    python benchmarks/tricks.py --tricks link_grid_files keep_freed_memory --pairs 3
    python benchmarks/tricks.py --trees /tmp/main-tree . --pairs 3     # two versions of the code

Every run is a fresh process (``--child``), so a process-wide setting (malloc's) never
carries over, and its time is the wall time of the stage's ``run`` (model loading, decoding,
forwards, the classifier, maps, shards, diagnostic, manifest; not the interpreter's start).
On a loaded machine the speed drifts; interleaving spreads the drift over both sides, and
every run is printed, so that an effect can be told from the noise, or not.

Tricks (off = what the stage does without it; outputs are the same either way):

* ``link_grid_files``: the switch of :class:`tedloc.artifacts.io_strategy.IOStrategy`;
* ``keep_freed_memory``: the config's ``cpu_keep_freed_memory=false`` (malloc's defaults);
* ``small_forwards``: forwards of the whole decoded batch (``forward_batch_size`` = the batch)
  instead of 2 images (+ 2 flips) on a CPU;
* ``one_thread_maps``: the maps step on torch's usual threads instead of one;
* ``decode_threads``: decoding in 2 DataLoader worker processes instead of threads of the
  stage's process between forwards (``num_workers``).

Four more (direct I/O of staged grids, dropping their pages from the page cache, writer
threads, a chunked CAM path beside the one-image one) bought under 5 % and were removed;
``--trees`` compares code from before and after (``benchmarks/RESULTS.md``).

Prints one line per run and, per trick, the saving of each pair (1 - with / without).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRICKS = ("link_grid_files", "keep_freed_memory", "small_forwards", "one_thread_maps", "decode_threads")
IO_SWITCHES = ("link_grid_files",)


def child(args) -> dict:
    """One stage run in this process, with ``args.off`` switched off; its timing."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from tedloc.configs.pseudo_labels import Config
    from tedloc.stages import pseudo_labels

    values = dict(dataset=args.dataset, split=args.split, limit=args.limit, encoder=args.encoder, device="cpu")
    off = args.off
    if off in IO_SWITCHES:
        import dataclasses

        from tedloc.artifacts import io_strategy

        io_strategy.DEFAULT = dataclasses.replace(io_strategy.DEFAULT, **{off: False})
    elif off == "keep_freed_memory":
        values["cpu_keep_freed_memory"] = False
    elif off == "small_forwards":
        values["forward_batch_size"] = Config().batch_size
    elif off == "one_thread_maps":
        from tedloc.stages import pseudo_labels_maps

        pseudo_labels_maps.torch_threads = lambda count: contextlib.nullcontext()
    elif off == "decode_threads":
        values["num_workers"] = 2
    workdir = Path(tempfile.mkdtemp(prefix="tedloc-bench-tricks-"))
    try:
        cpu = _cpu_seconds()
        start = time.perf_counter()
        pseudo_labels.run(Config(**values), workdir=workdir)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"seconds": seconds, "cpu_seconds": cpu}


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process's threads and of its ended children (the
    diagnostic's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def one_run(tree: Path, off: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--off", off, "--dataset", args.dataset,
               "--split", args.split, "--limit", str(args.limit), "--encoder", args.encoder]
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({tree}, off={off}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(label: str, sides: list[tuple[str, Path, str]], args, *, measured: int = 0) -> None:
    """Interleaved runs of two sides (name, tree, switch off), in the order given: A, B, A,
    B, ...; per pair the saving of side ``measured`` against the other (1 - its time / the
    other's)."""
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in sides}
    for pair in range(args.pairs):
        for name, tree, off in sides:
            run = one_run(tree, off, args)
            runs[name].append(run)
            print(f"{label}: pair {pair + 1} {name}: {run['seconds']:.2f} s wall, {run['cpu_seconds']:.2f} s CPU, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    a, b = sides[measured][0], sides[1 - measured][0]
    for key, unit in (("seconds", "s wall"), ("cpu_seconds", "s CPU")):
        savings = [1 - ra[key] / rb[key] for ra, rb in zip(runs[a], runs[b], strict=True)]
        print(f"{label}: {a} " + ", ".join(f"{r[key]:.1f}" for r in runs[a]) + f" {unit}; {b} "
              + ", ".join(f"{r[key]:.1f}" for r in runs[b]) + f" {unit}; saving of {a} per pair "
              + ", ".join(f"{100 * s:+.1f}%" for s in savings)
              + f" (median {100 * statistics.median(savings):+.1f}%)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tricks", nargs="*", default=[], choices=TRICKS)
    parser.add_argument("--trees", nargs=2, type=Path, default=None, metavar=("OLD", "NEW"),
                        help="compare the stage of two trees of the code instead (old first in each pair)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=0, help="images of the split (0 = all: 560 for the demo)")
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--off", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    print(f"pseudo-labels on {args.dataset} ({args.split}, {args.limit or 'all'} images), {args.encoder}, "
          f"{args.pairs} interleaved pairs per comparison; load average {os.getloadavg()[0]:.1f} at the start")
    if args.trees:
        old, new = (tree.resolve() for tree in args.trees)
        compare("code", [(f"old ({old})", old, "none"), (f"new ({new})", new, "none")], args, measured=1)
    for trick in args.tricks:
        compare(trick, [("with", ROOT, "none"), ("without", ROOT, trick)], args)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
