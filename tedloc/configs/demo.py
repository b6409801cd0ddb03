"""The demo: every stage on the bundled demo data with the offline encoders.

Per-stage settings come from the stages' own configs (and the ``[text_embed]``,
``[pseudo_labels]``, ``[train]``, ``[evaluate]`` sections of ``--config``); the fields
here only choose the data and the size of the run.
"""

from __future__ import annotations

import dataclasses

from tedloc.config import StageConfig, check_fields, option
from tedloc.configs.common import class_names_option, metadata_option
from tedloc.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    SECTION = "demo"
    PATH_FIELDS = {"dataset": "dataset", "metadata": "file", "class_names": "file"}

    dataset: str = option("demo", "Dataset spec the demo runs on (the bundled demo data by default).")
    metadata: str = metadata_option()
    class_names: str = class_names_option()
    # The evaluation's folder, <workdir>/evaluate/<name>/ ('' = <dataset>-test: demo-test).
    name: str = option("", "Name of the test-split evaluation ('' = <dataset>-test, e.g. demo-test).")
    quick: bool = option(False, "Smoke run (CI): a class-balanced slice of the images and fewer epochs.")
    quick_train_images: int = option(96, "Training images used by --quick.")
    quick_test_images: int = option(48, "Test images used by --quick.")
    quick_epochs: int = option(3, "Training epochs used by --quick.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_fields(self, "demo")
        if self.name:
            from tedloc.artifacts.evaluations import check_name

            check_name(self.name)
        for name in ("quick_train_images", "quick_test_images", "quick_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"demo: {name} must be at least 1, got {getattr(self, name)}")
