"""Where a dataset is read from, as the stages record it: the spec, and for a wsolevaluation
layout kept apart from its images the metadata folder, and the class-names file.

The three travel together: a stage records them in its artifact's config (absolute paths,
``tedloc.paths``), and a later stage that reads the same images (train decoding images,
evaluate with no ``--dataset``, ``tedloc inspect --image``) opens the dataset exactly as
it was opened, with :meth:`DatasetSource.recorded`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tedloc.data.records import Dataset, Problems
from tedloc.paths import recorded_dataset


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """``spec``: :func:`~tedloc.data.open.open_dataset`'s (``demo``, a folder, ``hf:…``);
    ``metadata``: the wsolevaluation metadata folder (``metadata/CUB``, holding
    ``<split>/image_ids.txt``), '' for ``<spec>/metadata``; ``class_names``: the names file
    that comes before every other source, '' for none (:mod:`tedloc.data.class_names`)."""

    spec: str
    metadata: str = ""
    class_names: str = ""

    @classmethod
    def of(cls, config: Any, spec: str | None = None) -> DatasetSource:
        """The source a stage config names (its ``dataset``, ``metadata``, ``class_names``
        fields; ``spec`` in place of ``dataset`` when given)."""
        return cls(spec if spec is not None else str(config.dataset), str(getattr(config, "metadata", "") or ""),
                   str(getattr(config, "class_names", "") or ""))

    @classmethod
    def recorded(cls, manifest: Mapping[str, Any], where: str | Path) -> DatasetSource | None:
        """The source a stage's manifest (``where``) records, or None when it names no dataset."""
        config = manifest.get("config") or {}
        spec = manifest.get("dataset") or config.get("dataset")
        if not spec:
            return None
        return cls(recorded_dataset(str(spec), where), str(config.get("metadata") or ""),
                   str(config.get("class_names") or ""))

    def open(self, split: str, *, problems: Problems | None = None) -> Dataset:
        from tedloc.data.open import open_dataset

        return open_dataset(self.spec, split, metadata=self.metadata or None, class_names=self.class_names or None,
                            problems=problems)

    def __str__(self) -> str:
        return self.spec + (f" (metadata {self.metadata})" if self.metadata else "")
