"""Upstream artifacts of the train stage, made in tests with the store API.

``make_text_embed(workdir, ...)`` writes ``<workdir>/text_embed/`` (text_embed.h5 +
manifest) with orthonormal anchors; ``make_pseudo_labels(workdir, ...)`` writes
``<workdir>/pseudo_labels/`` shards of synthetic feature grids: every image has a
rectangular object whose patches carry the signal of its class (plus an "object"
direction), background patches carry noise only; ``cam`` is the object mask blurred and
min–max normalized, ``pseudo_box`` the object's box at ``input_size``.  Deterministic for a
given seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tedloc.artifacts.store import ArtifactHeader, ShardedWriter, write_manifest
from tedloc.artifacts.text_embed import write_text_embed
from tedloc.config import hash_json


def make_text_embed(workdir: Path, *, num_classes: int = 3, dim: int = 16, seed: int = 0,
                    tag: str = "te") -> Path:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, num_classes)))
    anchors = q.T.astype(np.float32)
    names = [f"class{k}" for k in range(num_classes)]
    stage = Path(workdir) / "text_embed"
    stage.mkdir(parents=True, exist_ok=True)
    header = ArtifactHeader(format="tedloc.text_embed", format_version=1, config={"tag": tag},
                            config_hash=hash_json({"tag": tag, "c": num_classes, "d": dim, "seed": seed}))
    write_text_embed(stage / "text_embed.h5", header, class_names=names, prompt_names=names,
                     templates=["Image of a {}."], raw=anchors, anchors=anchors,
                     attrs={"text_encoder": "test", "encoder_fingerprint": "test", "orthogonalization": "none",
                            "mean_abs_cos_before": 0.0, "mean_abs_cos_after": 0.0})
    return write_manifest(stage, header, files=["text_embed.h5"])


def synthetic_grids(num_images: int, *, num_classes: int, grid: tuple[int, int], channels: int,
                    seed: int = 0, signal: float = 1.5):
    """(labels (N,), features float16 (N, h, w, c), cams float16 (N, h, w), boxes (N, 4) grid cells
    x0y0x1y1 exclusive end)."""
    rng = np.random.default_rng(seed)
    h, w = grid
    prototypes = rng.normal(size=(num_classes, channels))
    objectness = rng.normal(size=channels)
    labels = np.arange(num_images) % num_classes
    feats = rng.normal(scale=1.0, size=(num_images, h, w, channels))
    cams = np.zeros((num_images, h, w))
    boxes = np.zeros((num_images, 4))
    for n in range(num_images):
        # at least n_fg = 4 object patches, so that FG samples are object patches
        bh, bw = rng.integers(max(2, h // 3), 2 * h // 3 + 1), rng.integers(max(2, w // 3), 2 * w // 3 + 1)
        y0, x0 = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        feats[n, y0:y0 + bh, x0:x0 + bw] += signal * (prototypes[labels[n]] + objectness)
        mask = np.zeros((h, w))
        mask[y0:y0 + bh, x0:x0 + bw] = 1.0
        blurred = mask + 0.1 * rng.random((h, w))
        cams[n] = (blurred - blurred.min()) / (blurred.max() - blurred.min())
        boxes[n] = [x0, y0, x0 + bw, y0 + bh]
    return labels.astype(np.int64), feats.astype(np.float16), cams.astype(np.float16), boxes


def make_pseudo_labels(workdir: Path, *, num_images: int = 24, num_classes: int = 3, grid: tuple[int, int] = (6, 6),
                       channels: int = 32, input_size: int = 48, seed: int = 0, shard_size: int = 10,
                       with_features: bool = True, with_flip: bool = True, encoder: str = "tiny-cnn",
                       dataset: str = "", tag: str = "pl", ids: list[str] | None = None,
                       box_threshold: float | None = 0.5) -> Path:
    labels, feats, cams, cell_boxes = synthetic_grids(num_images, num_classes=num_classes, grid=grid,
                                                      channels=channels, seed=seed)
    scale = np.array([input_size / grid[1], input_size / grid[0]] * 2)
    boxes = (cell_boxes * scale - np.array([0, 0, 1, 1])).astype(np.float32)
    ids = list(ids) if ids is not None else [f"img{n:04d}.png" for n in range(num_images)]
    stage = Path(workdir) / "pseudo_labels"
    config = {"tag": tag, "encoder": encoder, "input_size": input_size}
    header = ArtifactHeader(format="tedloc.pseudo_labels", format_version=1, config=config,
                            config_hash=hash_json({**config, "n": num_images, "seed": seed}))
    with ShardedWriter(stage, header) as writer:
        writer.open()
        for start in range(0, num_images, shard_size):
            rows = slice(start, start + shard_size)
            arrays = {"label": labels[rows], "image_size": np.full((len(ids[rows]), 2), input_size, np.int32),
                      "cam": cams[rows], "pseudo_box": boxes[rows]}
            if with_features:
                arrays["features"] = feats[rows]
                if with_flip:
                    # synthetic grids: the flipped image's grid is the mirrored grid
                    arrays["features_flip"] = np.ascontiguousarray(feats[rows][:, :, ::-1])
            writer.write_shard(ids[rows], arrays)
        return writer.finish(ids, extra={
            "encoder": encoder, "input_size": input_size, "grid": list(grid), "feature_dim": channels,
            "method": "cam", "dataset": dataset, "split": "train", "has_features": with_features,
            "has_flip_features": with_features and with_flip, "num_classes": num_classes,
            **({"box_threshold": box_threshold} if box_threshold is not None else {})})
