"""Kill test: SIGKILL each stage at random moments, rerun it, compare with an uninterrupted run.

For every stage (text-embed, pseudo-labels, train, evaluate) this script

1. runs the whole pipeline once, uninterrupted, into ``<root>/reference`` (the reference);
2. for each trial: copies the reference's *upstream* stage directories into a fresh workdir,
   starts the stage as a subprocess (``tedloc stage ...``), sends it SIGKILL after a random
   delay drawn (seeded) from [0, 1.05 × the stage's reference wall time], then reruns it to
   completion and compares its artifact with the reference;
3. prints a table per stage: trials, killed mid-run, killed with partial results on disk
   (shards, staged batches or checkpoints of the stage already written), resumed correctly
   (the rerun exits 0 and the stage's manifest says finished), artifacts equal.

"Equal" means: every per-image array equal (sharded stages, compared per image id, so a
different shard layout after a resume does not matter), every dataset of the stage's other
HDF5 files equal, the trained weights equal (train resumes from ``last.pt`` and must end
with the weights of the uninterrupted run with the same seed), and for evaluate the metrics
in ``results.json`` equal.

Usage::

    python tools/kill_test.py --trials 10 --seed 0 --root /tmp/tedloc-kill
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

STAGES = ("text-embed", "pseudo-labels", "train", "evaluate")
STAGE_DIRS = {"text-embed": "text_embed", "pseudo-labels": "pseudo_labels", "train": "train",
              "evaluate": "evaluate"}

# A small, fast problem: a slice of the bundled demo data and few epochs.
STAGE_ARGS = {
    "text-embed": ["--dataset", "demo"],
    "pseudo-labels": ["--dataset", "demo", "--limit", "64", "--batch-size", "16", "--shard-size", "16"],
    "train": ["--epochs", "8"],
    "evaluate": ["--limit", "32", "--batch-size", "8", "--shard-size", "8", "--num-overlays", "2"],
}


def tedloc_command(workdir: Path, stage: str) -> list[str]:
    return [sys.executable, "-m", "tedloc.cli", "--log-level", "WARNING", "-w", str(workdir),
            "stage", stage, *STAGE_ARGS[stage]]


def run_stage(workdir: Path, stage: str, *, kill_after: float | None = None) -> tuple[int, float, bool]:
    """Run a stage; with ``kill_after`` SIGKILL it then. Returns (exit code, seconds, was killed)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(tedloc_command(workdir, stage), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    killed = False
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        # Kill the whole process group: DataLoader workers must die too, as on a real kill.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = True
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode not in (0, -signal.SIGKILL):
        sys.stderr.write(f"[{stage}] exit {proc.returncode}: {stderr.strip()[-2000:]}\n")
    return proc.returncode, time.perf_counter() - start, killed


def finished(stage_dir: Path) -> bool:
    manifest = stage_dir / "manifest.json"
    return manifest.is_file() and bool(json.loads(manifest.read_text()).get("format"))


def partial_results(stage_dir: Path) -> bool:
    """Whether an unfinished stage directory already holds some of its results."""
    if not stage_dir.is_dir() or (stage_dir / "manifest.json").exists():
        return False
    return any(p.is_file() and not p.name.startswith(".lock") and not p.name.endswith(".tmp")
               for p in stage_dir.rglob("*"))


def _h5_datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                          if isinstance(obj, h5py.Dataset) else None)
        for name in handle:  # external links (a shard's grids in its grid file): not visited above
            if isinstance(handle.get(name, getlink=True), h5py.ExternalLink):
                out[name] = handle[name][()]
    return out


def _sharded_rows(stage_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """{dataset: {image id: row}} over all shards listed in the manifest."""
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    rows: dict[str, dict[str, np.ndarray]] = {}
    for rel in manifest["files"]:
        for name, array in _h5_datasets(stage_dir / rel).items():
            if name == "image_ids":
                continue
            ids = [i.decode() if isinstance(i, bytes) else i for i in _h5_datasets(stage_dir / rel)["image_ids"]]
            rows.setdefault(name, {}).update(zip(ids, array, strict=True))
    return rows


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    return a.shape == b.shape and bool(np.all(a == b))


def artifacts_equal(stage: str, got: Path, ref: Path) -> tuple[bool, str]:
    """Compare a rerun stage directory with the reference one."""
    if (ref / "shards").is_dir():
        rows_got, rows_ref = _sharded_rows(got), _sharded_rows(ref)
        if rows_got.keys() != rows_ref.keys():
            return False, f"datasets differ: {sorted(rows_got)} vs {sorted(rows_ref)}"
        for name in rows_ref:
            if rows_got[name].keys() != rows_ref[name].keys():
                return False, f"{name}: image ids differ"
            for image_id, row in rows_ref[name].items():
                if not _equal(rows_got[name][image_id], row):
                    return False, f"{name}[{image_id}] differs"
    for path in sorted(ref.glob("*.h5")):
        a, b = _h5_datasets(got / path.name), _h5_datasets(path)
        if a.keys() != b.keys() or not all(_equal(a[k], b[k]) for k in b):
            return False, f"{path.name} differs"
    if stage == "train":
        import torch

        from tedloc.artifacts.checkpoint import load_checkpoint

        a = load_checkpoint(got / "model.pt")
        b = load_checkpoint(ref / "model.pt")
        for key, value in b["head_state"].items():
            if not torch.equal(a["head_state"][key], value):
                return False, f"model.pt weight {key} differs"
        if a.get("threshold") != b.get("threshold"):
            return False, "stored threshold differs"
    if stage == "evaluate":
        a = json.loads((got / "results.json").read_text())
        b = json.loads((ref / "results.json").read_text())
        if a.get("methods") != b.get("methods"):
            return False, "results.json metrics differ"
    return True, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=Path("/tmp/tedloc-kill-test"))
    parser.add_argument("--stages", nargs="*", default=list(STAGES))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    if args.root.exists():
        shutil.rmtree(args.root)
    reference = args.root / "reference"
    durations: dict[str, float] = {}
    for stage in STAGES:
        code, seconds, _ = run_stage(reference, stage)
        if code != 0:
            print(f"reference run of {stage} failed (exit {code})")
            return 1
        durations[stage] = seconds
        print(f"reference {stage}: {seconds:.1f} s")

    table = []
    for stage in args.stages:
        killed_n = partial_n = resumed_n = equal_n = 0
        for trial in range(args.trials):
            workdir = args.root / f"{STAGE_DIRS[stage]}-{trial:02d}"
            for upstream in STAGES[: STAGES.index(stage)]:
                shutil.copytree(reference / STAGE_DIRS[upstream], workdir / STAGE_DIRS[upstream])
            # Mostly inside the run (imports included); a few trials land after its end.
            delay = rng.uniform(0.0, 1.05 * durations[stage])
            _, _, killed = run_stage(workdir, stage, kill_after=delay)
            killed_n += killed
            partial = killed and partial_results(workdir / STAGE_DIRS[stage])
            partial_n += partial
            code, _, _ = run_stage(workdir, stage)
            ok = code == 0 and finished(workdir / STAGE_DIRS[stage])
            resumed_n += ok
            same, why = artifacts_equal(stage, workdir / STAGE_DIRS[stage], reference / STAGE_DIRS[stage]) if ok else (False, "not finished")
            equal_n += same
            print(f"{stage} trial {trial}: kill after {delay:.2f} s (killed: {killed}, partial: {partial}), "
                  f"resumed: {ok}, equal: {same} {why}")
            shutil.rmtree(workdir)
        table.append((stage, args.trials, killed_n, partial_n, resumed_n, equal_n))

    print("\n| stage | trials | killed mid-run | killed with partial results | resumed correctly | artifacts equal |")
    print("|---|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(map(str, row)) + " |")
    return 0 if all(r[4] == r[1] and r[5] == r[1] for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
