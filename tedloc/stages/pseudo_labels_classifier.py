"""Pseudo-labels, step 2: the CAM classifier (``cam_classifier.h5``, written before any
shard, reused on resume).

Multinomial logistic regression (:func:`tedloc.pipeline.cam.fit_linear_classifier`) on the
pooled vectors of *every* selected image, gathered in split order from the staging files of
every part (N × c float32, small); images of other parts that are not staged (yet) are
encoded here for their pooled vector only, so processes never wait on each other.  Written
with exclusive creation, so that one file wins and every process reads that one.  Fit for
every method: the CAM baseline of the evaluate stage uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tedloc.artifacts.integrity import file_problem
from tedloc.artifacts.pseudo_labels import (
    CLASSIFIER_FILE,
    FORMAT,
    read_classifier,
    write_classifier_once,
)
from tedloc.artifacts.staging import EncodedFile, read_encoded
from tedloc.artifacts.store import ArtifactHeader, ShardedWriter, overwrite_hint
from tedloc.configs.pseudo_labels import Config
from tedloc.data.records import Dataset, Record
from tedloc.errors import ArtifactError, ConfigMismatchError, DamagedFileError, InputError
from tedloc.pipeline import cam as cam_ops
from tedloc.pipeline.forwards import encode_batch, resolve_forward_batch
from tedloc.pipeline.image_encoders import ImageEncoder
from tedloc.pipeline.progress import progress
from tedloc.stages.pseudo_labels_plan import image_loader

log = logging.getLogger(__name__)


def pooled_features(encoder: ImageEncoder, dataset: Dataset, records: Sequence[Record], *,
                    config: Config) -> dict[str, np.ndarray]:
    """id -> float32 (c,) pooled feature of the readable ``records`` (an encoder pass)."""
    loader = image_loader(config, encoder, dataset, records)
    forward_batch = resolve_forward_batch(config.forward_batch_size, encoder.device)
    out: dict[str, np.ndarray] = {}
    for batch in progress(loader, desc="pseudo-labels: pooled features", unit="batch"):
        if len(batch):
            pooled, _, _ = encode_batch(encoder, batch.pixels, with_flip=False, forward_batch=forward_batch)
            out.update(zip(batch.ids, pooled.float().cpu().numpy(), strict=True))
    return out


def gather_pooled(encoder: ImageEncoder, dataset: Dataset, records: Sequence[Record],
                  staged: Sequence[EncodedFile], *, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """float32 (N', c) pooled features and int64 (N',) labels of the readable ``records``, in
    split order (so the fit is the same however the staging files happen to be laid out).

    Read from the staging files of every part; images no file holds (another part's, not
    staged yet) are encoded here for their pooled vector only.  A staging file that vanished
    meanwhile (its part finished) raises FileNotFoundError: the classifier exists by then.
    """
    where: dict[str, tuple[int, int]] = {}
    unreadable: set[str] = set()
    for k, entry in enumerate(staged):
        for row, image_id in enumerate(entry.ids):
            where.setdefault(image_id, (k, row))
        unreadable.update(entry.skipped)
    missing = [r for r in records if r.image_id not in where and r.image_id not in unreadable]
    vectors: dict[str, np.ndarray] = {}
    if missing:
        log.info("encoding %d images of other parts (not staged yet) for their pooled vector", len(missing))
        vectors = pooled_features(encoder, dataset, missing, config=config)
    needed = sorted({where[r.image_id][0] for r in records if r.image_id in where})
    for k in needed:
        if not staged[k].path.exists():
            raise FileNotFoundError(staged[k].path)
        pooled = read_encoded(staged[k].path, ["pooled"])["pooled"]
        for row, image_id in enumerate(staged[k].ids):
            if where[image_id] == (k, row):
                vectors[image_id] = pooled[row]
    chosen = [r for r in records if r.image_id in vectors]
    if not chosen:
        raise InputError(dataset.spec, "no readable training image to fit the CAM classifier")
    features = np.stack([vectors[r.image_id] for r in chosen]).astype(np.float32)
    return features, np.asarray([r.label for r in chosen], np.int64)


def check_classifier(directory: Path, writer: ShardedWriter, *, overwrite: bool) -> None:
    """Before resuming: ``cam_classifier.h5`` must be intact once shards made with it exist
    (only a fresh run remakes it); before any shard a damaged one is deleted and fitted
    again.  Its process (the first) checks it; with ``overwrite`` the stage starts afresh."""
    path = directory / CLASSIFIER_FILE
    if path.exists():
        problem = file_problem(path) if writer.owns(CLASSIFIER_FILE) else None
    else:
        problem = "missing" if writer.done_ids() else None
    if problem is None:
        return
    if not writer.done_ids():
        log.warning("%s: %s; deleting it, it is fitted again in this run", path, problem)
        path.unlink(missing_ok=True)
        return
    error = DamagedFileError(path, problem, overwrite_hint(FORMAT) + " (the maps on disk were made with it)")
    if not overwrite:
        raise error
    writer.clear(str(error))


def get_classifier(directory: Path, header: ArtifactHeader, encoder: ImageEncoder, dataset: Dataset,
                   records: Sequence[Record], config: Config, staged: Sequence[EncodedFile]
                   ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(weight (C, c), bias (C,), attrs) from ``cam_classifier.h5``, fitting it first if absent."""
    path = directory / CLASSIFIER_FILE
    if not path.exists():
        try:
            features, labels = gather_pooled(encoder, dataset, records, staged, config=config)
        except (FileNotFoundError, ArtifactError):
            if not path.exists():
                raise
            features = None  # another part finished with the classifier written: use it
        if features is not None:
            fitted = cam_ops.fit_linear_classifier(
                features, labels, dataset.num_classes, weight_decay=config.classifier_weight_decay,
                max_iter=config.classifier_max_iter, holdout=config.classifier_holdout,
                refit_all=config.classifier_refit_all, seed=config.seed)
            attrs = {"holdout_accuracy": -1.0 if fitted.holdout_accuracy is None else fitted.holdout_accuracy,
                     "train_accuracy": fitted.train_accuracy, "num_images": len(labels),
                     "encoder": encoder.spec, "input_size": encoder.input_size}
            created = write_classifier_once(path, header, fitted.weight, fitted.bias, attrs)
            log.info("CAM classifier on %d pooled %d-d features: held-out accuracy %s, train accuracy %.3f%s",
                     len(labels), features.shape[1],
                     "n/a" if fitted.holdout_accuracy is None else f"{fitted.holdout_accuracy:.3f}",
                     fitted.train_accuracy, "" if created else " (another process's file is used)")
    classifier = read_classifier(path)
    if classifier.identity != header.identity:
        raise ConfigMismatchError(
            f"{path}: made with hash {classifier.identity}, this run has {header.identity}; "
            "pass --overwrite to recompute (the old results will be deleted)")
    return classifier.weight, classifier.bias, classifier.attrs
