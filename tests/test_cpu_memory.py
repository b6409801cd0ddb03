"""Freed memory kept for the next CPU forward (glibc's malloc settings)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tedloc.artifacts.cpu_memory import keep_freed_memory

# Allocates, frees and allocates again a 24 MB array; prints the page faults of the second.
_SCRIPT = """
import resource, sys
import numpy as np
from tedloc.artifacts.cpu_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(24 << 20, np.uint8); del a
before = faults(); a = np.ones(24 << 20, np.uint8); del a
print(faults() - before)
"""


def _second_allocation_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_freed_block_is_reused_without_page_faults():
    # Run in fresh processes: the setting is process-wide and would outlive the test.
    assert _second_allocation_faults("keep") < 50
    assert _second_allocation_faults("default") > 200  # glibc's own settings fault it in again


def test_keep_freed_memory_is_idempotent():
    first = keep_freed_memory()
    assert keep_freed_memory() is first
    assert first == (platform.libc_ver()[0] == "glibc" and sys.platform.startswith("linux"))
