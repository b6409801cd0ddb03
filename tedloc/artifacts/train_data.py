"""Training data over the pseudo-label artifact: maps, labels, and the features to train on.

Three ways to get the frozen grid of a training image (``tedloc.stages.train`` picks one):

* :class:`MemoryFeatures`: the cached float16 ``features`` (and ``features_flip``) of every
  image loaded once into memory (fastest; used when they fit ``cache_memory_mb``);
* :func:`shard_feature_loader`: the same read from the shards per batch in DataLoader
  workers (each worker opens its own read-only handles);
* :func:`image_loader`: images decoded and resized in DataLoader workers, to be fed
  through the frozen encoder on the fly (no cached features).

An epoch is a *plan*: a list of batches, each ``(indices, flips)`` into the artifact's
``ids`` order.  A flipped image uses the cached grid of the flipped image
(``features_flip``), never a flip of the grid (the encoder is not flip-equivariant); its
map is ``cam[:, ::-1]``.  All HDF5 reading of the train stage is here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from tedloc.artifacts.pseudo_labels import PseudoLabels, open_pseudo_labels
from tedloc.artifacts.text_embed import TextEmbedArtifact
from tedloc.data.classes import class_difference, match_classes, remap_labels
from tedloc.errors import ArtifactError
from tedloc.paths import recorded_dataset
from tedloc.pipeline.workers import loader_worker_init

log = logging.getLogger(__name__)

Batch = tuple[list[int], list[bool]]


@dataclasses.dataclass
class PseudoLabelIndex:
    """The small per-image arrays of a pseudo-label artifact, in memory.

    Attributes:
        directory: the stage directory.
        ids: N image ids (row order of every array).
        labels: int64 (N,).
        cams: float32 (N, h, w) maps in [0, 1].
        pseudo_boxes: float32 (N, 4) ``x0y0x1y1`` at ``input_size``×``input_size``.
        box_threshold: the map level (relative to its peak) the pseudo boxes were drawn at;
            None when the manifest does not say.
        image_sizes: int32 (N, 2) original (width, height).
        encoder: the encoder spec; input_size: S; grid: (h, w); feature_dim: c.
        fine_dim: channels of a finer stage packed into the grid (:mod:`tedloc.pipeline.fine_grid`), 0 = none.
        has_features / has_flip_features: whether the shards cache the grids.
        num_classes: C of the artifact (manifest, else its CAM classifier, else max label + 1).
        class_names: the C names in label order (manifest; empty for artifacts without them).
        dataset / split: where the images came from (for on-the-fly encoding); ``metadata``
            and ``class_names_file``: the metadata folder and names file they were read with.
        identity: ``config_hash/upstream_hash``.
    """

    directory: Path
    ids: list[str]
    labels: np.ndarray
    cams: np.ndarray
    pseudo_boxes: np.ndarray
    image_sizes: np.ndarray
    box_threshold: float | None
    encoder: str
    input_size: int
    grid: tuple[int, int]
    feature_dim: int
    fine_dim: int
    has_features: bool
    has_flip_features: bool
    num_classes: int
    class_names: list[str]
    dataset: str
    split: str
    identity: str
    metadata: str = ""
    class_names_file: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def region_level(self) -> float:
        """The level of the maps' object region: the pseudo boxes' (ArtifactError without one)."""
        if self.box_threshold is None:
            raise ArtifactError(f"{self.directory / 'manifest.json'}: no box_threshold recorded, "
                                "so the maps' region is unknown (rerun pseudo-labels)")
        return self.box_threshold

    def open_dataset(self):
        """The split the images came from, opened as the pseudo-labels stage opened it."""
        from tedloc.data.source import DatasetSource

        return DatasetSource(self.dataset, self.metadata, self.class_names_file).open(self.split)

    def feature_bytes(self, with_flip: bool) -> int:
        """Bytes of the float16 features in memory (twice with the flipped copy)."""
        h, w = self.grid
        return len(self) * h * w * self.feature_dim * 2 * (2 if with_flip else 1)


def _num_classes(reader: PseudoLabels, labels: np.ndarray) -> int:
    manifest = reader.manifest or {}
    if manifest.get("num_classes") is not None:
        return int(manifest["num_classes"])
    if manifest.get("class_names"):
        return len(manifest["class_names"])
    try:
        return int(reader.classifier().weight.shape[0])
    except ArtifactError:
        return int(labels.max()) + 1 if len(labels) else 0


def read_pseudo_label_index(workdir_or_dir: str | Path) -> PseudoLabelIndex:
    """Load ids, labels, maps and boxes of a finished pseudo-label artifact.

    Raises:
        DamagedFileError: a shard is missing or fails its checksum.
        ArtifactError: unfinished, unknown format, missing datasets or inconsistent shapes.
    """
    with open_pseudo_labels(workdir_or_dir) as reader:
        manifest = reader.manifest or {}
        where = reader.directory
        try:
            labels = reader.read_all("label").astype(np.int64)
            cams = reader.read_all("cam").astype(np.float32)
            boxes = reader.read_all("pseudo_box").astype(np.float32)
            sizes = reader.read_all("image_size").astype(np.int32)
        except KeyError as exc:
            raise ArtifactError(f"{where}: shards lack a dataset ({exc})") from None
        if not len(reader.ids):
            raise ArtifactError(f"{where}: no training images in the pseudo-labels")
        if cams.ndim != 3 or np.isnan(cams).any():
            raise ArtifactError(f"{where}: 'cam' must be (N, h, w) without NaN, got shape {cams.shape}")
        grid = tuple(manifest.get("grid") or cams.shape[1:])
        if tuple(cams.shape[1:]) != grid:
            raise ArtifactError(f"{where}: cam grid {cams.shape[1:]} differs from the manifest's {grid}")
        has_features = bool(manifest.get("has_features", reader.has("features")))
        feature_dim = int(manifest.get("feature_dim") or
                          (reader.read("features", reader.ids[0]).shape[-1] if has_features else 0))
        config = manifest.get("config") or {}
        return PseudoLabelIndex(
            directory=where, ids=list(reader.ids), labels=labels, cams=np.clip(cams, 0.0, 1.0),
            pseudo_boxes=boxes, image_sizes=sizes,
            box_threshold=_number(manifest.get("box_threshold", config.get("box_threshold"))),
            encoder=str(manifest.get("encoder") or config.get("encoder")),
            input_size=int(manifest.get("input_size") or config.get("input_size")),
            grid=(int(grid[0]), int(grid[1])), feature_dim=feature_dim,
            fine_dim=int(manifest.get("fine_dim") or 0),
            has_features=has_features and reader.has("features"),
            has_flip_features=bool(manifest.get("has_flip_features", False)) and reader.has("features_flip"),
            num_classes=_num_classes(reader, labels),
            class_names=[str(n) for n in manifest.get("class_names") or []],
            dataset=recorded_dataset(str(manifest.get("dataset") or config.get("dataset") or ""),
                                     where / "manifest.json"),
            split=str(manifest.get("split") or config.get("split") or "train"),
            identity=reader.identity,
            metadata=str(config.get("metadata") or ""),
            class_names_file=str(config.get("class_names") or ""),
        )


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def labels_in_anchor_order(index: PseudoLabelIndex, text: TextEmbedArtifact) -> np.ndarray:
    """The pseudo-labels' int (N,) labels as indices of the anchors' classes (matched by name:
    text-embed may have read the classes in another order); refuses classes that differ."""
    hint = "rerun text-embed on the dataset the pseudo-labels were made from"
    manifest = index.directory / "manifest.json"
    if text.num_classes != index.num_classes:
        names = class_difference(index.class_names, text.class_names) if index.class_names else ""
        raise ArtifactError(f"{text.path} has {text.num_classes} classes but {manifest} has {index.num_classes}"
                            f"{f' ({names})' if names else ''}; {hint}")
    if not index.class_names:  # made without names: labels are taken in the anchors' order
        return index.labels
    label_map = match_classes(index.class_names, text.class_names, found_where=str(manifest),
                              wanted_where=str(text.path), hint=hint)
    return remap_labels(index.labels, label_map)


class MemoryFeatures:
    """Every cached grid in memory as float16 torch tensors (N, h, w, c)."""

    def __init__(self, index: PseudoLabelIndex, *, with_flip: bool):
        with open_pseudo_labels(index.directory, verify=False) as reader:  # checked by the stage
            self._check_order(reader, index)
            self.features = torch.from_numpy(np.ascontiguousarray(reader.read_all("features"), np.float16))
            self.features_flip = (torch.from_numpy(np.ascontiguousarray(reader.read_all("features_flip"),
                                                                        np.float16))
                                  if with_flip else None)

    @staticmethod
    def _check_order(reader: PseudoLabels, index: PseudoLabelIndex) -> None:
        if list(reader.ids) != index.ids:
            raise ArtifactError(f"{index.directory}: the shards changed while training read them")

    def batch(self, indices: Sequence[int], flips: Sequence[bool]) -> torch.Tensor:
        """float16 (B, h, w, c): the grids of ``indices``, the flipped image's where ``flips``."""
        rows = torch.as_tensor(list(indices), dtype=torch.long)
        grids = self.features.index_select(0, rows)
        if self.features_flip is not None and any(flips):
            flip = torch.as_tensor(list(flips), dtype=torch.bool)
            grids[flip] = self.features_flip.index_select(0, rows[flip])
        return grids


class _ShardBatches(TorchDataset):
    """Item k: the float16 grids (B, h, w, c) of batch k of the plan, read from the shards."""

    def __init__(self, directory: Path, ids: Sequence[str], plan: Sequence[Batch]):
        self.directory = directory
        self.ids = list(ids)
        self.plan = list(plan)
        self._reader: PseudoLabels | None = None

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> torch.Tensor:
        if self._reader is None:  # opened in the worker: h5py handles do not cross fork safely
            self._reader = open_pseudo_labels(self.directory, verify=False)  # checked by the stage
        indices, flips = self.plan[k]
        rows = [self._reader.read("features_flip" if flip else "features", self.ids[i])
                for i, flip in zip(indices, flips, strict=True)]
        return torch.from_numpy(np.stack(rows).astype(np.float16, copy=False))

    def __getstate__(self):
        return {**self.__dict__, "_reader": None}


def shard_feature_loader(index: PseudoLabelIndex, plan: Sequence[Batch], *, num_workers: int) -> DataLoader:
    """DataLoader yielding the float16 grids (B, h, w, c) of each batch of ``plan``, in order."""
    return DataLoader(_ShardBatches(index.directory, index.ids, plan), batch_size=None, shuffle=False,
                      num_workers=num_workers, prefetch_factor=2 if num_workers > 0 else None,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=loader_worker_init())


class _ImageBatches(TorchDataset):
    """Item k: uint8 (B, S, S, 3) pixels of batch k, decoded, resized and flipped here."""

    def __init__(self, dataset, records: Sequence, plan: Sequence[Batch], input_size: int):
        self.dataset = dataset
        self.records = list(records)
        self.plan = list(plan)
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> torch.Tensor:
        indices, flips = self.plan[k]
        images = []
        for i, flip in zip(indices, flips, strict=True):
            image, _ = self.dataset.load_resized(self.records[i], self.input_size)
            images.append(image[:, ::-1] if flip else image)
        return torch.from_numpy(np.ascontiguousarray(np.stack(images)))


def image_loader(dataset, records: Sequence, plan: Sequence[Batch], *, input_size: int,
                 num_workers: int) -> DataLoader:
    """DataLoader yielding uint8 (B, S, S, 3) RGB pixels per batch of ``plan`` (``records`` in
    the artifact's ``ids`` order); flipped images are mirrored left-right before encoding."""
    return DataLoader(_ImageBatches(dataset, records, plan, input_size), batch_size=None, shuffle=False,
                      num_workers=num_workers, prefetch_factor=2 if num_workers > 0 else None,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=loader_worker_init())
