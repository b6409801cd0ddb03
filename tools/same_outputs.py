"""Same outputs as another revision: run the stages with this tree's code and with the code of
a git revision (default ``main``) on the same slice of the demo data, and compare the
artifacts value by value (``tools/artifact_compare.py``, strict).

Runs, each through the CLI in a fresh process, for both trees:

* ``default``: text-embed, pseudo-labels (64 training images, the stage's defaults: one
  encoder pass, grids staged and kept as grid files, flips), train (8 epochs), evaluate
  (32 test images): the maps, pooled features, grids and classifier of pseudo-labels, the
  weights, thresholds and history (but wall times) of every checkpoint of train, the whole
  ``results.json`` and ``predictions.jsonl`` of evaluate;
* ``lzf``: pseudo-labels with ``--feature-compression lzf`` (the grids through h5py);
* ``two-pass``: pseudo-labels with ``--cache-features off`` and a budget too small to stage
  the grids (the maps step encodes the images again);
* ``two-parts``: pseudo-labels as two processes (``--num-shards 2``), part 0 then part 1.

Prints one line per run and stage and exits 1 if anything differs.  Meant for changes that
must not change results (a restructuring); the base tree is taken with ``git archive``, so
the checkout is not touched.

Usage::

    python tools/same_outputs.py --base main --root /tmp/tedloc-same
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from artifact_compare import artifacts_equal

ROOT = Path(__file__).resolve().parent.parent
STAGE_DIRS = {"text-embed": "text_embed", "pseudo-labels": "pseudo_labels", "train": "train",
              "evaluate": "evaluate/demo-test"}
PSEUDO = ["--dataset", "demo", "--limit", "64", "--batch-size", "16", "--shard-size", "16"]
#: run name -> [(stage, its options)], in order; the stages a run compares are those it runs.
RUNS: dict[str, list[tuple[str, list[str]]]] = {
    "default": [("text-embed", ["--dataset", "demo"]), ("pseudo-labels", PSEUDO), ("train", ["--epochs", "8"]),
                ("evaluate", ["--limit", "32", "--batch-size", "8", "--shard-size", "8", "--num-overlays", "2"])],
    "lzf": [("pseudo-labels", [*PSEUDO, "--feature-compression", "lzf"])],
    "two-pass": [("pseudo-labels", [*PSEUDO, "--cache-features", "off", "--cache-budget-gb", "1e-9"])],
    "two-parts": [("pseudo-labels", [*PSEUDO, "--num-shards", "2", "--shard-index", "0"]),
                  ("pseudo-labels", [*PSEUDO, "--num-shards", "2", "--shard-index", "1"])],
}


def run_stage(tree: Path, workdir: Path, stage: str, options: list[str]) -> float:
    """Run one stage with the code of ``tree``; its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree), "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "tedloc.cli", "--log-level", "WARNING", "-w", str(workdir),
               "stage", stage, *options]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {stage} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def export_tree(revision: str, target: Path) -> Path:
    """The files of ``revision`` in ``target`` (``git archive``; the checkout is not touched)."""
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="git revision to compare with")
    parser.add_argument("--root", type=Path, default=Path("/tmp/tedloc-same-outputs"))
    parser.add_argument("--tree", type=Path, default=ROOT, help="the code compared (default: this checkout)")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    if args.root.exists():
        shutil.rmtree(args.root)
    trees = {"base": export_tree(args.base, args.root / "base-tree"), "this": args.tree.resolve()}
    different = 0
    for run in args.runs:
        for label, tree in trees.items():
            for stage, options in RUNS[run]:
                seconds = run_stage(tree, args.root / label / run, stage, options)
                print(f"{run}: {label} {stage} {seconds:.1f} s", flush=True)
        for stage in dict.fromkeys(stage for stage, _ in RUNS[run]):
            got, ref = (args.root / label / run / STAGE_DIRS[stage] for label in ("this", "base"))
            same, why = artifacts_equal(stage, got, ref, strict=True,
                                        roots=tuple((args.root / label / run, trees[label]) for label in ("this", "base")))
            different += not same
            print(f"{run}: {stage} {'equal' if same else 'DIFFERENT: ' + why}", flush=True)
    print("all equal" if not different else f"{different} stage(s) differ")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
