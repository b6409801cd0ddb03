"""The demo: every stage on the bundled demo data with the offline encoders.

Per-stage settings come from the stages' own configs (and the ``[text_embed]``,
``[pseudo_labels]``, ``[train]``, ``[evaluate]`` sections of ``--config``); the fields
here only choose the data and the size of the run.
"""

from __future__ import annotations

import dataclasses

from tedloc.config import StageConfig, option


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    SECTION = "demo"

    dataset: str = option("demo", "Dataset spec the demo runs on (the bundled demo data by default).")
    quick: bool = option(False, "Smoke run (CI): a class-balanced slice of the images and fewer epochs.")
    quick_train_images: int = option(96, "Training images used by --quick.")
    quick_test_images: int = option(48, "Test images used by --quick.")
    quick_epochs: int = option(3, "Training epochs used by --quick.")
