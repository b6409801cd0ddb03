"""Stage pseudo-labels: frozen encoder -> per-image map of the GT class (CAM or CLIP-ES).

:func:`run`, in one process or in each of ``num_shards`` processes on its part of the images:

0. **Plan** (:mod:`~tedloc.stages.pseudo_labels_plan`): the identity (hashed config fields,
   the selected images' ids and labels, the encoder's weight fingerprint, the method), what
   the final shards cache and what step 1 stages.
1. **Encode** (:mod:`~tedloc.stages.pseudo_labels_encode`, resumable): one pass of the
   encoder over this part's pending images, on ``[images; flipped images]`` when flipped
   grids are cached; everything later steps need is staged in ``encoded/``.
2. **Classifier** (:mod:`~tedloc.stages.pseudo_labels_classifier`): ``cam_classifier.h5``,
   a linear classifier on the pooled vectors of every selected image, written before any
   shard and reused on resume.
3. **Maps** (:mod:`~tedloc.stages.pseudo_labels_maps`): CAM of the GT class from each staged
   grid (no encoder), pseudo box, one final shard per staging file, whose grids it links to.
4. **Manifest**: written by the process that finds every image done, with, when the split has
   GT boxes, the maps' MaxBoxAccV2 against them as a *diagnostic*
   (:mod:`~tedloc.stages.pseudo_labels_diagnostic`; the GT is never used to make the
   pseudo-labels); then ``encoded/`` is removed.

**Two-pass fallback**: when this part's grids do not fit ``cache_budget_gb`` and the shards do
not cache them, and always for ``clip-es`` (its maps need a forward with gradients), step 1
stages only pooled vectors and step 3 decodes and encodes the images again.

How grids move between memory and disk, and what memory CPU forwards keep, is decided by
:mod:`tedloc.artifacts.io_strategy`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tedloc.artifacts import io_strategy
from tedloc.artifacts.pseudo_labels import CLASSIFIER_FILE, FORMAT, STAGE_DIR, SUPPORTED_VERSIONS
from tedloc.artifacts.staging import remove_encoded
from tedloc.artifacts.store import ShardedReader, ShardedWriter
from tedloc.configs.pseudo_labels import Config
from tedloc.data.records import Dataset, Record
from tedloc.paths import absolute_encoder_spec
from tedloc.pipeline.image_encoders import (
    ImageEncoder,
    build_image_encoder,
    image_encoder_fingerprint,
    resolve_device,
)
from tedloc.stages.pseudo_labels_classifier import check_classifier, get_classifier
from tedloc.stages.pseudo_labels_diagnostic import DiagnosticScoring
from tedloc.stages.pseudo_labels_encode import encode, staging_files
from tedloc.stages.pseudo_labels_maps import maps_from_staged, maps_two_pass
from tedloc.stages.pseudo_labels_plan import (
    Plan,
    Progress,
    make_header,
    plan_part,
    resolve_method,
    resolve_sharding,
    select_records,
)

log = logging.getLogger(__name__)


def run(config: Config, *, workdir: Path, overwrite: bool = False,
        on_progress: Progress | None = None) -> Path:
    """Compute the pseudo-labels into ``<workdir>/pseudo_labels/``; return the manifest path
    (or, for a process whose part is done while others are still running, the directory).

    ``on_progress(step, done)``: after each staging file is on disk (``"encode"``; the files
    are then closed one at a time) and after each batch of maps (``"maps"``), with the number
    of images of that step done in this run.
    """
    from tedloc.data.source import DatasetSource

    config.validate()
    directory = Path(workdir) / STAGE_DIR
    dataset = DatasetSource.of(config).open(config.split)
    log.info("pseudo-labels: class names of %s from %s", config.dataset, dataset.class_names_source or "the dataset")
    records = select_records(dataset, config.limit)
    all_ids = [r.image_id for r in records]
    num_shards, shard_index = resolve_sharding(config)
    method = resolve_method(config)
    device = resolve_device(config.device)

    encoder = None
    fingerprint = image_encoder_fingerprint(config.encoder)
    if fingerprint is None:  # a hub model: load it to learn the identity of its weights
        encoder = build_image_encoder(config.encoder, input_size=config.input_size or None, device=device)
        fingerprint = encoder.fingerprint
    header = make_header(config, records=records, class_names=dataset.class_names,
                         encoder_fingerprint=fingerprint, method=method)

    # The classifier cannot be redone by resuming: the maps on disk were made with it.
    writer = ShardedWriter(directory, header, num_shards=num_shards, shard_index=shard_index,
                           supported_versions=SUPPORTED_VERSIONS, precious=(CLASSIFIER_FILE,))
    with writer:
        if writer.open(overwrite=overwrite):
            remove_encoded(directory)  # left by a kill between the manifest and the cleanup
            log.info("pseudo-labels: %s is up to date (hash %s); nothing to do", directory, header.identity)
            return writer.manifest_path
        check_classifier(directory, writer, overwrite=overwrite)
        if encoder is None:
            encoder = build_image_encoder(config.encoder, input_size=config.input_size or None, device=device)
        io = io_strategy.DEFAULT.with_config(config)
        io.prepare_forwards(encoder.device)
        plan = plan_part(config, method, encoder, records, num_shards=num_shards, shard_index=shard_index)
        pending = set(writer.pending(all_ids))
        log.info("pseudo-labels (%s, %s, grid %s, c=%d, %s): %d of %d images to do in part %d/%d",
                 method, encoder.spec, encoder.grid, encoder.feature_dim,
                 "one encoder pass" if plan.stage_grid else "two encoder passes", len(pending), len(all_ids),
                 shard_index, num_shards)

        # Step 1: stage what is not staged yet.  The two-pass fallback stages pooled vectors
        # for the fit only: not needed once the classifier exists.
        own, others = staging_files(directory, header, writer, plan, pending, overwrite=overwrite)
        staged_ids = {i for entry in own for i in (*entry.ids, *entry.skipped)}
        to_encode = [r for r in records if r.image_id in pending and r.image_id not in staged_ids]
        if to_encode and (plan.stage_grid or not (directory / CLASSIFIER_FILE).exists()):
            own += encode(config, encoder, dataset, to_encode, directory=directory, header=header, plan=plan,
                          first_seq=max((entry.seq for entry in own), default=-1) + 1,
                          on_progress=on_progress)
        # Step 2.
        weight, _, clf_attrs = get_classifier(directory, header, encoder, dataset, records, config,
                                              staged=own + others)
        # Step 3.  One process scores its maps for the diagnostic as it makes them (in worker
        # processes, beside the maps); with several, the last to finish scores them all.
        with DiagnosticScoring(config, records, while_mapping=num_shards == 1) as scoring:
            if pending and plan.stage_grid:
                maps_from_staged(config, encoder, own, pending, writer, plan=plan, weight=weight, io=io,
                                 scoring=scoring, on_progress=on_progress)
            elif pending:
                maps_two_pass(config, encoder, dataset, [r for r in records if r.image_id in pending], writer,
                              plan=plan, weight=weight, staged=own, scoring=scoring, on_progress=on_progress)
            # Step 4.
            return _finish(config, writer, dataset, records, encoder, plan=plan, clf_attrs=clf_attrs,
                           scoring=scoring)


def _finish(config: Config, writer: ShardedWriter, dataset: Dataset, records: Sequence[Record],
            encoder: ImageEncoder, *, plan: Plan, clf_attrs: dict, scoring: DiagnosticScoring) -> Path:
    """Step 4: the manifest, once every image of every part is done; then ``encoded/`` goes."""
    all_ids = [r.image_id for r in records]
    diagnostic: dict[str, Any] | None = None
    with ShardedReader(writer.directory, FORMAT, supported_versions=SUPPORTED_VERSIONS,
                       allow_partial=True) as reader:
        complete = set(all_ids) <= set(reader.ids) | set(reader.skipped)
        if complete:
            diagnostic = scoring.value(reader)
    if not complete:
        log.info("pseudo-labels: this part is done; the manifest is written by the last part to finish")
        return writer.directory
    holdout = float(clf_attrs.get("holdout_accuracy", -1.0))
    extra = {
        "encoder": absolute_encoder_spec(encoder.spec),  # train, evaluate and predict rebuild it
        "encoder_fingerprint": encoder.fingerprint,
        "input_size": encoder.input_size,
        "grid": list(encoder.grid),
        "feature_dim": encoder.feature_dim,
        "fine_dim": encoder.fine_dim,  # a finer stage packed into the grid (tedloc.pipeline.fine_grid)
        "method": plan.method,
        "dataset": writer.header.config["dataset"],  # absolute: later stages read it from anywhere
        "split": config.split,
        "class_names": list(dataset.class_names),
        "class_names_source": dataset.class_names_source,
        "box_threshold": config.box_threshold,
        "has_features": plan.has_features,
        "has_flip_features": plan.has_flip,
        "classifier_accuracy": None if holdout < 0 else round(holdout, 4),
        "classifier_train_accuracy": round(float(clf_attrs.get("train_accuracy", 0.0)), 4),
        "diagnostic": diagnostic,
    }
    path = writer.finish(all_ids, extra=extra, also=[CLASSIFIER_FILE])
    if path is None:
        return writer.directory
    remove_encoded(writer.directory)  # after the manifest: a kill before this loses nothing
    return path
