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
