"""Encode the class names into frozen text anchors (text encoder + QR orthogonalization).

Writes ``<workdir>/text_embed/text_embed.h5``: the class names, the prompt templates, the
template-averaged class embeddings (``raw``) and the orthogonalized ``anchors``.
"""

from __future__ import annotations

import dataclasses

from tedloc.config import StageConfig, check_fields, option
from tedloc.configs.common import class_names_option, metadata_option
from tedloc.errors import ConfigError

DEFAULT_TEMPLATE = "Image of a {}."


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    """Configuration of the text-embed stage."""

    # Fields whose effect enters the hash by content instead (the class names read from the
    # dataset and the map, the templates read from the file: see stages/text_embed.py), plus
    # fields that do not change the numbers.  Moving the dataset thus keeps the anchors.
    NOT_HASHED = frozenset({"dataset", "metadata", "class_names", "split", "class_name_map", "templates_file",
                            "batch_size", "device"})
    SECTION = "text_embed"
    PATH_FIELDS = {"dataset": "dataset", "metadata": "file", "class_names": "file", "class_name_map": "file",
                   "templates_file": "file", "text_encoder": "encoder"}

    # Dataset whose class names (label order) become the anchors; 'demo' or a folder.
    dataset: str = option("demo", "Dataset spec whose class names are embedded ('demo' or a folder).")
    metadata: str = metadata_option()
    class_names: str = class_names_option()
    # Split the class names are read from (all splits share them).
    split: str = option("train", "Split to read the class names from.")
    # CSV/TSV 'original,nicer' lines: nicer names to put into the prompts.
    class_name_map: str = option("", "CSV/TSV file of 'original,nicer' class names for the prompts ('' = none).")
    # The paper's prompt; several give an ensemble (average of normalized embeddings).
    templates: tuple[str, ...] = option((DEFAULT_TEMPLATE,),
                                        "Prompt template, '{}' = class name; repeat for an ensemble.")
    # One template per line ('#' comments); replaces --templates when given.
    templates_file: str = option("", "File with one prompt template per line; replaces --templates ('' = none).")
    # minilm | clip:<hub id or folder> | open_clip:<model>/<pretrained> (the image encoder's spec
    # gives anchors in its joint space; the paper's: open_clip:EVA02-L-14/merged2b_s4b_b131k)
    text_encoder: str = option("minilm", "Text encoder: minilm (default), open_clip:EVA02-L-14/merged2b_s4b_b131k (the paper's "
                               "EVA-CLIP), clip:<hub id or folder>, open_clip:<model>/<tag or file>, open_clip:local-dir:<folder>.")
    # Off = the paper's ablation without QR orthogonalization (anchors = raw embeddings).
    orthogonalize: bool = option(True, "QR-orthogonalize the class embeddings into anchors.")
    # Prompts per forward pass of the text encoder.
    batch_size: int = option(64, "Prompts per text-encoder batch.")
    # cpu | cuda | cuda:N | auto
    device: str = option("auto", "Device for the text encoder: cpu, cuda, cuda:N or auto.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_fields(self, "text_embed")
        if not self.templates_file:
            if not self.templates:
                raise ConfigError("text_embed: at least one template is needed")
            for template in self.templates:
                if "{}" not in template:
                    raise ConfigError(f"text_embed: template {template!r} has no '{{}}' for the class name")
        elif self.templates != (DEFAULT_TEMPLATE,):
            raise ConfigError("text_embed: give either templates or templates_file, not both")
        if self.batch_size < 1:
            raise ConfigError(f"text_embed: batch_size must be at least 1, got {self.batch_size}")
