"""Disk and memory strategies: whether the pseudo-labels stage writes its feature grids to
disk once, and what memory CPU forwards keep.  The stages call this interface
(:class:`IOStrategy`); none of them calls ``mallopt`` itself.

Every strategy changes speed only, never a value written: with all of them off the grids
are copied into the shards and malloc keeps its defaults, and the artifacts hold the same
values.  When each applies:

* ``link_grid_files``: when the final shards cache the grids, a staging file whose images are
  all in one shard becomes that shard's grid file (renamed into ``shards/``; the shard links
  to its grids), so the grids are written to disk once.  Off: the maps step reads the grids
  back and writes them again into the shard.
* ``keep_freed_memory``: forwards on a CPU, with glibc (the stages' ``cpu_keep_freed_memory``
  field): freed blocks up to 32 MB stay in the process for the next forward
  (:mod:`tedloc.artifacts.cpu_memory`).  Process-wide and lasting.

What each was measured to buy is in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class IOStrategy:
    """Which disk and memory strategies are on (see the module docstring); all on by default."""

    link_grid_files: bool = True
    keep_freed_memory: bool = True

    def with_config(self, config: Any) -> IOStrategy:
        """This strategy with the switches a stage's config holds (``cpu_keep_freed_memory``)."""
        return dataclasses.replace(self, keep_freed_memory=bool(getattr(config, "cpu_keep_freed_memory", True)))

    def prepare_forwards(self, device: Any) -> bool:
        """Before forwards on ``device``: keep freed memory in the process where it applies
        (a CPU, glibc); returns whether that setting is in force."""
        if not self.keep_freed_memory or getattr(device, "type", str(device)) != "cpu":
            return False
        from tedloc.artifacts.cpu_memory import keep_freed_memory

        return keep_freed_memory()


#: The strategies the stages use (benchmarks switch them one at a time).
DEFAULT = IOStrategy()
