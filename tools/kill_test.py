"""Kill test: SIGKILL each stage at random moments, rerun it, compare with an uninterrupted run.

For every stage (text-embed, pseudo-labels, train, evaluate) this script

1. runs the whole pipeline once, uninterrupted, into ``<root>/reference`` (the reference),
   noting when each stage had worker processes (children, read from /proc);
2. for each trial: copies the reference's *upstream* stage directories into a fresh workdir,
   starts the stage as a subprocess (``tedloc stage ...``) and sends SIGKILL to it alone (not
   to its workers: they must end by themselves, as on a real kill) after a random delay
   drawn (seeded) from [0, 1.05 × the stage's reference wall time].  Every other trial of
   pseudo-labels is killed during its diagnostic instead: once its worker processes exist,
   after a random part of the time they lived in the reference run.  Then it checks that no
   process of the killed run is left (every process of its session, found in /proc, gone
   within :data:`GONE_WITHIN` s), reruns the stage to completion and compares its artifact
   with the reference;
3. prints a table per stage: trials, killed mid-run, killed while worker processes ran,
   killed with partial results on disk (shards, staged batches or checkpoints of the stage
   already written), trials that left a process running, resumed correctly (the rerun exits
   0 and the stage's manifest says finished), artifacts equal.

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
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from artifact_compare import artifacts_equal

STAGES = ("text-embed", "pseudo-labels", "train", "evaluate")
# Evaluate writes one folder per evaluation name; the demo data's test split is demo-test.
STAGE_DIRS = {"text-embed": "text_embed", "pseudo-labels": "pseudo_labels", "train": "train",
              "evaluate": "evaluate/demo-test"}

# A small, fast problem: a slice of the bundled demo data and few epochs.
STAGE_ARGS = {
    "text-embed": ["--dataset", "demo"],
    "pseudo-labels": ["--dataset", "demo", "--limit", "64", "--batch-size", "16", "--shard-size", "16"],
    "train": ["--epochs", "8"],
    "evaluate": ["--limit", "32", "--batch-size", "8", "--shard-size", "8", "--num-overlays", "2"],
}


ROOT = Path(__file__).resolve().parent.parent
#: Seconds the processes of a killed run get to end (they need a fraction of one).
GONE_WITHIN = 30.0
#: How often a running stage's processes are listed (seconds).
POLL = 0.02


def tedloc_command(workdir: Path, stage: str) -> list[str]:
    return [sys.executable, "-m", "tedloc.cli", "--log-level", "WARNING", "-w", str(workdir),
            "stage", stage, *STAGE_ARGS[stage]]


def _stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the state on (state, ppid, pgrp, session, ...); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces


def descendants(pid: int) -> set[int]:
    """Children, grandchildren, ... of ``pid`` (from /proc/<pid>/task/*/children)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            continue
        for task in tasks:
            try:
                children = {int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()}
            except (FileNotFoundError, ProcessLookupError):
                continue
            todo.extend(children - found)
            found |= children
    return found


def session_processes(session: int) -> set[int]:
    """Running processes of a session (a killed leader's orphans keep its id); zombies have ended."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(entry.name)) is not None:
            if int(fields[3]) == session and fields[0] not in "ZX":
                found.add(int(entry.name))
    return found


@dataclasses.dataclass
class Outcome:
    code: int
    seconds: float
    killed: bool = False
    #: Worker processes (descendants) running just before the kill.
    workers_at_kill: int = 0
    #: Processes of the run still running GONE_WITHIN s after it was killed (or ended).
    left: int = 0
    #: Seconds from the start at which worker processes were first and last seen running.
    workers_seen: tuple[float, float] | None = None


def run_stage(workdir: Path, stage: str, *, kill_after: float | None = None,
              kill_after_workers: float | None = None) -> Outcome:
    """Run a stage; SIGKILL it ``kill_after`` s after its start, or ``kill_after_workers`` s
    after its worker processes first appear (if it is still running then)."""
    # The tedloc of this checkout, whatever is installed.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        # A session of its own: every process of the run is found by session id after the kill.
        proc = subprocess.Popen(tedloc_command(workdir, stage), env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
        outcome = Outcome(code=0, seconds=0.0)
        first = last = None
        while proc.poll() is None:
            now = time.perf_counter() - start
            workers = descendants(proc.pid)
            if workers:
                first = now if first is None else first
                last = now
            due = (kill_after is not None and now >= kill_after) or (
                kill_after_workers is not None and first is not None and now >= first + kill_after_workers)
            if due:
                outcome.workers_at_kill = len(workers)
                proc.kill()  # the stage alone: its workers must end by themselves
                outcome.killed = True
                break
            time.sleep(POLL)
        proc.wait()
        outcome.code, outcome.seconds = proc.returncode, time.perf_counter() - start
        outcome.workers_seen = (first, last) if first is not None else None
        outcome.left = len(_wait_session_gone(proc.pid))
        stderr.seek(0)
        text = stderr.read().decode(errors="replace")
    if outcome.code not in (0, -signal.SIGKILL):
        sys.stderr.write(f"[{stage}] exit {outcome.code}: {text.strip()[-2000:]}\n")
    return outcome


def _wait_session_gone(session: int) -> set[int]:
    """Processes of ``session`` still running after GONE_WITHIN s (then killed, so that the
    next trial starts clean)."""
    deadline = time.monotonic() + GONE_WITHIN
    while (left := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        sys.stderr.write(f"processes of the killed run still running: {sorted(left)}\n")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(session, signal.SIGKILL)
    return left


def finished(stage_dir: Path) -> bool:
    manifest = stage_dir / "manifest.json"
    return manifest.is_file() and bool(json.loads(manifest.read_text()).get("format"))


def partial_results(stage_dir: Path) -> bool:
    """Whether an unfinished stage directory already holds some of its results."""
    if not stage_dir.is_dir() or (stage_dir / "manifest.json").exists():
        return False
    return any(p.is_file() and not p.name.startswith(".lock") and not p.name.endswith(".tmp")
               for p in stage_dir.rglob("*"))


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
    windows: dict[str, tuple[float, float] | None] = {}
    for stage in STAGES:
        outcome = run_stage(reference, stage)
        if outcome.code != 0:
            print(f"reference run of {stage} failed (exit {outcome.code})")
            return 1
        durations[stage], windows[stage] = outcome.seconds, outcome.workers_seen
        seen = f"workers from {outcome.workers_seen[0]:.1f} to {outcome.workers_seen[1]:.1f} s" \
            if outcome.workers_seen else "no workers"
        print(f"reference {stage}: {outcome.seconds:.1f} s ({seen})")

    table = []
    for stage in args.stages:
        counts = dict.fromkeys(("killed", "workers", "partial", "left", "resumed", "equal"), 0)
        for trial in range(args.trials):
            workdir = args.root / f"{stage.replace('-', '_')}-{trial:02d}"
            for upstream in STAGES[: STAGES.index(stage)]:
                shutil.copytree(reference / STAGE_DIRS[upstream], workdir / STAGE_DIRS[upstream])
            window = windows[stage]
            if stage == "pseudo-labels" and trial % 2 == 1 and window is not None:
                # During the diagnostic: while its worker processes run.
                # The first half of the reference's window: other runs' windows are shorter.
                delay = rng.uniform(0.0, 0.5 * (window[1] - window[0]))
                killed = run_stage(workdir, stage, kill_after_workers=delay)
                when = f"{delay:.2f} s after its workers started"
            else:
                # Mostly inside the run (imports included); a few trials land after its end.
                delay = rng.uniform(0.0, 1.05 * durations[stage])
                killed = run_stage(workdir, stage, kill_after=delay)
                when = f"after {delay:.2f} s"
            partial = killed.killed and partial_results(workdir / STAGE_DIRS[stage])
            rerun = run_stage(workdir, stage)
            ok = rerun.code == 0 and finished(workdir / STAGE_DIRS[stage])
            same, why = artifacts_equal(stage, workdir / STAGE_DIRS[stage], reference / STAGE_DIRS[stage]) \
                if ok else (False, "not finished")
            for key, value in (("killed", killed.killed), ("workers", killed.workers_at_kill > 0),
                               ("partial", partial), ("left", killed.left + rerun.left > 0),
                               ("resumed", ok), ("equal", same)):
                counts[key] += bool(value)
            print(f"{stage} trial {trial}: kill {when} (killed: {killed.killed}, workers running: "
                  f"{killed.workers_at_kill}, processes left: {killed.left}, partial: {partial}), "
                  f"resumed: {ok}, equal: {same} {why}")
            shutil.rmtree(workdir)
        table.append((stage, args.trials, *counts.values()))

    print("\n| stage | trials | killed mid-run | killed while workers ran | killed with partial results "
          "| processes left running | resumed correctly | artifacts equal |")
    print("|---|---|---|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(map(str, row)) + " |")
    return 0 if all(r[5] == 0 and r[6] == r[1] and r[7] == r[1] for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
