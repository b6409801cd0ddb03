"""Worker processes end when the process that started them is killed (SIGKILL: no cleanup).

Each test starts a process that starts workers, waits until the workers exist, SIGKILLs
that process and polls /proc until every worker is gone.  The waits are events (a line
printed, a child listed), never a guessed duration; the bound on the last poll is generous.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers_data import make_wsol_tree

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

ROOT = Path(__file__).resolve().parent.parent
GONE_WITHIN = 60.0  # seconds; a loaded 2-core machine needs well under one


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process; None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except FileNotFoundError:
            pass
    return found


def _survivors(processes: dict[int, int]) -> dict[int, int]:
    """Those of {pid: start time} that still run (a zombie has ended; a reused pid is another process)."""
    alive = {}
    for pid, start in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[0] not in "ZX" and stat[2] == start:
            alive[pid] = start
    return alive


def _kill_and_wait(parent: subprocess.Popen, workers: set[int]) -> dict[int, int]:
    """SIGKILL ``parent`` alone; return the workers still running after GONE_WITHIN s."""
    processes = {pid: stat[2] for pid in workers if (stat := _stat(pid)) is not None}
    assert processes, "the workers ended before the kill"
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + GONE_WITHIN
    while (alive := _survivors(processes)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in alive:  # leave nothing behind for the rest of the suite
        os.kill(pid, signal.SIGKILL)
    return alive


def _start(tmp_path: Path, code: str, *args: str) -> subprocess.Popen:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)


def _read_pids(proc: subprocess.Popen, count: int, *, then: str = "") -> tuple[set[int], str]:
    """Pids from the first ``count`` lines ``ready <pid>`` (printed by the workers themselves),
    and the first line starting with ``then`` (the lines come in any order)."""
    pids: set[int] = set()
    found = ""
    while len(pids) < count or (then and not found):
        line = proc.stdout.readline()
        assert line, f"the process ended (exit {proc.poll()}) before {count} workers were ready"
        if line.startswith("ready "):
            pids.add(int(line.split()[1]))
        elif then and line.startswith(then):
            found = line.strip()
    return pids, found


POOL_SCRIPT = r"""
    import os, sys, threading
    from tedloc.pipeline import workers
    from tedloc.pipeline.workers import process_pool

    def announce():
        # One write per line: workers share the pipe, and stdout may be unbuffered.
        os.write(1, f"ready {os.getpid()}\n".encode())

    def block():
        threading.Event().wait()

    def by_main_thread():
        # Which watch this worker has: the kernel's (its parent is the main thread; after
        # the thread that started it ends, it is) or the poll.
        return workers._started_by_main_thread(os.getppid())

    def start(method, pools):
        pool = process_pool(3, start_method=method, initializer=announce)
        pool.submit(block)  # one worker busy for ever, the others idle on the queue
        pools.append(pool)

    if __name__ == "__main__":
        method, where = sys.argv[1:]
        pools = []
        if where == "main":
            start(method, pools)
        else:
            # Started by a thread that then ends: the workers must outlive that thread.
            thread = threading.Thread(target=start, args=(method, pools))
            thread.start()
            thread.join()
            while str(thread.native_id) in os.listdir("/proc/self/task"):
                threading.Event().wait(0.01)  # the kernel has not finished the thread yet
        # Tasks for the idle workers: if the thread's end had killed one, this would raise
        # BrokenProcessPool instead of returning.
        kinds = {result.result() for result in [pools[0].submit(by_main_thread) for _ in range(6)]}
        os.write(1, f"answered {sorted(kinds)}\n".encode())
        threading.Event().wait()
"""


@pytest.mark.parametrize("method, where", [("fork", "main"), ("spawn", "main"), ("fork", "thread")])
def test_pool_workers_end_with_their_killed_parent(tmp_path, method, where):
    proc = _start(tmp_path, POOL_SCRIPT, method, where)
    try:
        workers, answer = _read_pids(proc, 3, then="answered")
        if where == "main":
            assert answer == "answered [True]"  # the kernel's watch (a later thread may inherit them)
        assert workers <= _children(proc.pid)
        assert not _kill_and_wait(proc, workers)
    finally:
        proc.kill()
        proc.wait()


LOADER_SCRIPT = r"""
    import os, threading
    import torch
    from torch.utils.data import DataLoader, Dataset
    from tedloc.pipeline.workers import loader_worker_init

    class Blocking(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, k):
            os.write(1, f"ready {os.getpid()}\n".encode())  # one write: the workers share the pipe
            threading.Event().wait()  # an item that never finishes: torch's own check never runs

    if __name__ == "__main__":
        torch.set_num_threads(1)
        loader = DataLoader(Blocking(), batch_size=None, num_workers=2, worker_init_fn=loader_worker_init())
        next(iter(loader))
"""


def test_loader_workers_end_with_their_killed_parent(tmp_path):
    proc = _start(tmp_path, LOADER_SCRIPT)
    try:
        workers, _ = _read_pids(proc, 2)
        assert workers <= _children(proc.pid)
        assert not _kill_and_wait(proc, workers)
    finally:
        proc.kill()
        proc.wait()


def test_worker_whose_parent_is_already_gone_ends_at_once():
    # The parent pid recorded when the pool was made is not this process's parent any more:
    # it died before the worker could watch it.
    code = ("import os\nfrom tedloc.pipeline.workers import die_with_parent\n"
            "die_with_parent(os.getppid() + 1)\nprint('still running')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == -signal.SIGKILL and "still running" not in result.stdout


STAGE_SCRIPT = r"""
    import sys, threading
    from pathlib import Path
    import torch
    from tedloc.artifacts.pseudo_labels import open_pseudo_labels
    from tedloc.configs.pseudo_labels import Config
    from tedloc.data.open import open_dataset
    from tedloc.pipeline.box_diagnostic import maxboxacc_v2
    from tedloc.pipeline.metrics import threshold_grid
    from tedloc.stages import pseudo_labels as stage

    def hold(step, done):
        # In the maps step: the diagnostic's workers are scoring the first maps.
        if step == "maps":
            print("maps", flush=True)
            threading.Event().wait()

    if __name__ == "__main__":
        torch.set_num_threads(1)
        stage.run(Config(**__import__("json").loads(sys.argv[2])), workdir=Path(sys.argv[1]), on_progress=hold)
"""


def test_stage_killed_during_the_diagnostic_leaves_no_worker_and_resumes(tmp_path):
    from tedloc.artifacts.pseudo_labels import open_pseudo_labels
    from tedloc.configs.pseudo_labels import Config
    from tedloc.data.open import open_dataset
    from tedloc.pipeline.box_diagnostic import maxboxacc_v2
    from tedloc.pipeline.metrics import threshold_grid
    from tedloc.stages import pseudo_labels as stage

    data = make_wsol_tree(tmp_path, splits={"train": 20}, num_classes=2, size=(40, 32))
    values = dict(dataset=str(data), encoder="tiny-cnn", input_size=32, num_workers=0, device="cpu",
                  batch_size=4, forward_batch_size=4, shard_size=8, diagnostic_workers=2)
    proc = _start(tmp_path, STAGE_SCRIPT, str(tmp_path / "w"), json.dumps(values))
    try:
        assert proc.stdout.readline().strip() == "maps"
        workers = _children(proc.pid)
        assert len(workers) == 2  # forked at the first maps scored, before the hook runs
        assert not _kill_and_wait(proc, workers)
    finally:
        proc.kill()
        proc.wait()
    resumed = json.loads(stage.run(Config(**values), workdir=tmp_path / "w").read_text())
    assert resumed["complete"] and resumed["num_images"] == 20
    # The diagnostic, scored partly before the kill (lost) and the rest on resume, counts
    # every image once: it equals scoring the artifact's maps all at once.
    boxes = {r.image_id: r.boxes for r in open_dataset(str(data), "train").records}
    with open_pseudo_labels(tmp_path / "w") as art:
        ids = list(art.ids)
        value = maxboxacc_v2(art.read_all("cam"), [boxes[i] for i in ids], art.read_all("image_size"), ids,
                             threshold_grid(0.01))
    assert resumed["diagnostic"]["num_images"] == 20
    assert resumed["diagnostic"]["maxboxacc_v2"] == round(value, 2)
