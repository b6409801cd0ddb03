"""A tiny trained-model workdir for evaluate / predict tests, built from the real pieces.

``make_model_workdir`` runs the real pseudo-labels stage (tiny-cnn encoder) on a dataset
and saves a train checkpoint of a small randomly initialized ``TedLocHead`` with the
layout the train stage writes (``Localizer.from_checkpoint`` loads it), plus a
``tedloc.train`` manifest.  The head's weights are random: its maps and classes say
nothing about localization quality; tests check plumbing and metric bookkeeping only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tedloc.artifacts.checkpoint import save_checkpoint
from tedloc.artifacts.store import ArtifactHeader, write_manifest
from tedloc.pipeline.model import HeadConfig, TedLocHead

THRESHOLD = 0.3


def save_tiny_checkpoint(path: Path, class_names: list[str], *, threshold: float = THRESHOLD,
                         seed: int = 0) -> Path:
    """A checkpoint of a random head on the tiny-cnn encoder (32 channels, 64 px)."""
    torch.manual_seed(seed)
    config = HeadConfig(in_dim=32, embed_dim=8, num_classes=len(class_names), decoder="conv",
                        width=16, depth=1, patch_head="mlp", patch_hidden=8)
    anchors = torch.nn.functional.normalize(torch.randn(len(class_names), 8), dim=1)
    head = TedLocHead(config, anchors)
    return save_checkpoint(path, {
        "head_state": head.state_dict(), "head_config": config.to_dict(), "anchors": anchors,
        "class_names": list(class_names), "encoder": "tiny-cnn", "input_size": 64,
        "threshold": threshold, "config": {}, "config_hash": "tiny", "upstream_hash": "",
    })


def make_model_workdir(workdir: Path, data_root: Path, *, pseudo_labels: bool = True) -> Path:
    """``workdir`` with ``pseudo_labels/`` (real stage, tiny-cnn) and ``train/model.pt``."""
    from tedloc.data.open import open_dataset

    workdir = Path(workdir)
    if pseudo_labels:
        from tedloc.configs.pseudo_labels import Config as PseudoConfig
        from tedloc.stages import pseudo_labels as pseudo_stage

        pseudo_stage.run(PseudoConfig(dataset=str(data_root), encoder="tiny-cnn", cache_features="off",
                                      diagnostic=False, batch_size=8, num_workers=0, device="cpu"),
                         workdir=workdir)
    names = open_dataset(str(data_root), "train").class_names
    save_tiny_checkpoint(workdir / "train" / "model.pt", names)
    write_manifest(workdir / "train", ArtifactHeader("tedloc.train", 1, {}, "tiny", ""), files=["model.pt"])
    return workdir


def train_real_pipeline(workdir: Path, data_root: Path, clip_folder: Path, *, encoder: str = "tiny-cnn") -> Path:
    """Run the real text-embed (tiny CLIP text tower), pseudo-labels (``encoder``, tiny-cnn by
    default) and train (one short epoch) stages on ``data_root``; return ``<workdir>/train/model.pt``."""
    from tedloc.configs.pseudo_labels import Config as PseudoConfig
    from tedloc.configs.text_embed import Config as TextConfig
    from tedloc.configs.train import Config as TrainConfig
    from tedloc.stages import pseudo_labels, text_embed, train

    text_embed.run(TextConfig(dataset=str(data_root), text_encoder=f"clip:{clip_folder}", device="cpu"),
                   workdir=workdir)
    pseudo_labels.run(PseudoConfig(dataset=str(data_root), encoder=encoder, diagnostic=False,
                                   batch_size=8, num_workers=0, device="cpu"), workdir=workdir)
    train.run(TrainConfig(epochs=1, batch_size=4, width=16, depth=1, patch_hidden=8, num_workers=0,
                          device="cpu", progress=False), workdir=workdir)
    return workdir / "train" / "model.pt"
