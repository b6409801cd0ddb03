"""Options that several stages share, with one help text each (a field per call: dataclass
fields cannot be shared between classes)."""

from __future__ import annotations

from typing import Any

from tedloc.config import option


def metadata_option() -> Any:
    """``metadata``: wsolevaluation keeps its metadata apart from the images
    (``metadata/CUB/<split>/*.txt``, ids relative to ``dataset/CUB/``); the dataset is then
    the image folder."""
    return option("", "wsolevaluation metadata folder holding <split>/image_ids.txt, apart from the "
                      "images in --dataset ('' = <dataset>/metadata).")


def class_names_option() -> Any:
    """``class_names``: read before any other source of class names
    (:mod:`tedloc.data.class_names`)."""
    return option("", "File of class names: one per line in label order, or 'synset,name' lines "
                      "('' = class_names.txt beside the data, else the class folders).")


def keep_freed_memory_option() -> Any:
    """``cpu_keep_freed_memory``: glibc's malloc otherwise unmaps a forward's freed
    activations and faults them in again on the next forward; process-wide, see
    :mod:`tedloc.artifacts.cpu_memory`."""
    return option(True, "On a CPU, keep freed memory in the process for the next forward.")
