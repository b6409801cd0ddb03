"""docs/BAD_INPUTS.md names real tests: every node id in its table is collected by pytest."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_row_names_a_collected_test():
    text = (ROOT / "docs" / "BAD_INPUTS.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| input")]
    nodes = [re.findall(r"`(tests/[^`]+::[^`]+)`\s*\|\s*$", row) for row in rows]
    assert all(len(found) == 1 for found in nodes), [r for r, f in zip(rows, nodes, strict=True) if len(f) != 1]
    wanted = {found[0] for found in nodes}
    assert len(rows) >= 40 and len(wanted) == len(rows)
    files = sorted({node.split("::")[0] for node in wanted})
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *files], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    collected = {line.strip() for line in listed.splitlines()}
    assert not wanted - collected, sorted(wanted - collected)
