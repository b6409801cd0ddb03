"""Memory measurement shared by the benchmarks (Linux /proc)."""

from __future__ import annotations

from pathlib import Path


def rss_tree_kb(pid: int) -> int:
    """Resident set of ``pid`` and all its descendants, in kB (0 if the process is gone)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += rss_tree_kb(int(child))
    except (OSError, ValueError):
        pass
    return total


def steal_seconds() -> float | None:
    """CPU time the hypervisor has taken from this (virtual) machine since boot, summed over
    its CPUs, in seconds (``steal`` in /proc/stat); None where it is not reported.  The
    difference over a run, divided by (run seconds × CPUs), is the share of the machine
    the host took while it ran: timings of a run with a large share are not comparable."""
    import os

    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
