"""Phase 2 of the evaluate stage: the report, always recomputed from the shards.

The metrics of :mod:`tedloc.pipeline.metrics` for every method (TeD-Loc, the CAM baseline,
the centre prior), over the split, per class and by group (:mod:`tedloc.pipeline.groups`);
``results.json`` / ``results.md``, ``predictions.jsonl``, overlays, the BoxAcc curve and
optional score-map exports.  Each image's maps are scored once, in ``num_workers``
processes that share the work; counts are summed, so the numbers do not depend on them.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tedloc.artifacts import evaluate as files
from tedloc.artifacts.store import ShardedReader
from tedloc.configs.evaluate import Config
from tedloc.data.records import Dataset, Record
from tedloc.errors import ArtifactError
from tedloc.pipeline import metrics
from tedloc.pipeline.centre_prior import centre_prior
from tedloc.pipeline.groups import GroupedAccumulator, group_keys, image_groups
from tedloc.stages.evaluate_classes import CLASS_AGNOSTIC_NOTE
from tedloc.stages.evaluate_outputs import (
    overlay_picture,
    overlay_sample,
    prediction_line,
    write_curve,
)

log = logging.getLogger(__name__)

#: Methods whose map and class scores are stored in the shards: key -> (map, logits) datasets.
STORED_METHODS = {"tedloc": ("map", "class_logits"), "cam_baseline": ("cam_map", "cam_class_logits")}


@dataclasses.dataclass
class ReportInputs:
    """What the report needs besides the shards: the split, class names and thresholds."""

    dataset: Dataset
    records: list[Record]
    class_names: list[str]
    stored_threshold: float
    baseline_threshold: float
    checkpoint: str
    #: dataset label k -> model class label_map[k] when the dataset lists the model's
    #: classes in another order (``records`` are mapped already); None when they agree.
    label_map: list[int] | None = None
    #: The classes of the model's logits (predictions, captions); None: ``class_names``.
    model_class_names: list[str] | None = None
    #: Labels are the dataset's own (``class_names`` are its classes): the metrics that need
    #: the model to name the GT class are not computed (:mod:`tedloc.stages.evaluate_classes`).
    class_agnostic: bool = False


def _eval_mask(mask: np.ndarray | None, size: int) -> np.ndarray | None:
    """bool (H, W) mask -> bool (size, size), nearest neighbour (wsolevaluation)."""
    if mask is None:
        return None
    return cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0


@dataclasses.dataclass
class _Scored:
    """One image's per-image outcome, sent back from a scoring worker."""

    image_id: str
    label: int
    image_size: tuple[int, int]
    logits: dict[str, np.ndarray]
    results: dict[str, metrics.ImageResult]


def _read_maps(reader: ShardedReader, image_id: str, has_baseline: bool) -> dict[str, np.ndarray]:
    """The stored float32 (S, S) maps of one image: TeD-Loc's and the CAM baseline's."""
    keys = ("tedloc", "cam_baseline") if has_baseline else ("tedloc",)
    return {key: reader.read(STORED_METHODS[key][0], image_id).astype(np.float32) for key in keys}


#: The shard reader of a scoring worker process, opened once by :func:`_open_worker_reader`.
_WORKER_READER: ShardedReader | None = None


def _open_worker_reader(stage_dir: Path) -> None:
    global _WORKER_READER
    _WORKER_READER = ShardedReader(stage_dir, files.FORMAT, allow_partial=True)


def _score_chunk(stage_dir: Path, size: int, accs: dict[str, GroupedAccumulator],
                 dataset: Dataset, records: Sequence[Record], reader: ShardedReader | None = None,
                 prior_sigma: float | None = None) -> tuple[dict[str, GroupedAccumulator], list[_Scored]]:
    """Score ``records`` from the shards into fresh accumulators shaped like ``accs``.

    Runs in a worker process (reading through the worker's reader) or in the caller (its
    ``reader``); returns the counts and the per-image outcomes, so that the caller merges
    and writes in the split's order.  ``dataset`` only loads masks (its records may be empty).
    ``accs["centre_prior"]``, when there, scores the same map for every image (σ =
    ``prior_sigma``), whose boxes are searched once per process.
    """
    reader = reader or _WORKER_READER
    if reader is None:
        raise RuntimeError("no shard reader")
    fresh = {key: acc.empty_like() for key, acc in accs.items()}
    prior = None
    if "centre_prior" in fresh:
        prior = centre_prior(size, float(prior_sigma), tuple(fresh["centre_prior"].overall.thresholds.tolist()))
    scored = []
    has_baseline = "cam_baseline" in fresh
    any_acc = next(iter(fresh.values()))
    for record in records:
        image_id = record.image_id
        label = int(reader.read("label", image_id))
        if label != record.label:
            raise ArtifactError(f"{stage_dir}: stored label {label} of {image_id!r} differs from the "
                                f"dataset's {record.label}; rerun with --overwrite")
        width, height = (int(v) for v in reader.read("image_size", image_id))
        gt = metrics.gt_boxes_at_eval_size(record.boxes, (width, height), size) if len(record.boxes) else None
        groups = image_groups(record.boxes, (width, height), any_acc.edges)
        foreground = ignore = None
        if record.mask_path is not None or record.mask_paths:
            fg, ig = dataset.load_mask(record)
            foreground, ignore = _eval_mask(fg, size), _eval_mask(ig, size)
        maps = _read_maps(reader, image_id, has_baseline)
        logits = {key: reader.read(STORED_METHODS[key][1], image_id) for key in maps}
        try:  # class-agnostic: the logits name the model's classes, not the label's
            results = {key: acc.add(maps[key], logits[key] if acc.overall.classifies else None, label, gt,
                                    groups=groups, image_id=image_id, foreground=foreground, ignore=ignore)
                       for key, acc in fresh.items() if key in maps}
            if prior is not None:
                results["centre_prior"] = fresh["centre_prior"].add(
                    None, None, label, gt, groups=groups, image_id=image_id, foreground=foreground,
                    ignore=ignore, fixed=prior)
        except ValueError as exc:  # a damaged shard: NaN or out-of-range values
            raise ArtifactError(f"{stage_dir}: {exc}; rerun with --overwrite") from None
        scored.append(_Scored(image_id, label, (width, height), logits, results))
    return fresh, scored


def _scored_chunks(stage_dir: Path, size: int, accs: dict[str, GroupedAccumulator],
                   dataset: Dataset, records: Sequence[Record], num_workers: int, reader: ShardedReader,
                   prior_sigma: float | None = None):
    """Yield ``_score_chunk`` outcomes in the split's order, computed by ``num_workers``
    processes (0: in this process, with ``reader``).  Contour extraction is CPU-bound:
    processes scale it."""
    # Enough chunks to balance the workers, few enough to keep per-chunk overhead small.
    chunk = max(1, min(64, -(-len(records) // (4 * max(1, num_workers)))))
    chunks = [records[i:i + chunk] for i in range(0, len(records), chunk)]
    if num_workers <= 0 or len(chunks) < 2:
        for part in chunks:
            yield _score_chunk(stage_dir, size, accs, dataset, part, reader, prior_sigma)
        return
    from tedloc.pipeline.workers import process_pool

    # Workers get the dataset without its record list (masks are loaded per record), so
    # that a large split is not pickled once per chunk.
    light = dataclasses.replace(dataset, records=[])
    # spawn: the parent may hold torch/OpenCV threads, which do not survive a fork safely.
    with process_pool(min(num_workers, len(chunks)), start_method="spawn",
                      initializer=_open_worker_reader, initargs=(stage_dir,)) as pool:
        # A bounded window of chunks in flight: results are consumed in order, memory stays small.
        window = 4 * num_workers
        futures = collections.deque(pool.submit(_score_chunk, stage_dir, size, accs, light, part, None,
                                                prior_sigma) for part in chunks[:window])
        for part in chunks[window:]:
            yield futures.popleft().result()
            futures.append(pool.submit(_score_chunk, stage_dir, size, accs, light, part, None, prior_sigma))
        while futures:
            yield futures.popleft().result()


def compute_report(stage_dir: Path, config: Config, inputs: ReportInputs) -> dict[str, Any]:
    """Phase 2: metrics and every report file, from the shards in ``stage_dir``.

    Returns the results dict (also written as ``results.json``).  The numbers do not depend
    on ``config.num_workers`` (counts are summed).
    """
    from tedloc.pipeline.progress import progress

    started = time.perf_counter()
    size = config.eval_size
    thresholds = metrics.threshold_grid(config.cam_curve_interval)
    names = inputs.class_names
    model_names = inputs.model_class_names or names
    common = dict(iou_thresholds=config.iou_thresholds, v1_iou=config.v1_iou, loc_iou=config.loc_iou,
                  loc_multi_contour=config.loc_multi_contour)

    def method(**settings: Any) -> GroupedAccumulator:
        return GroupedAccumulator(metrics.LocalizationAccumulator(len(names), thresholds, **common, **settings),
                                  config.box_fraction_bins)

    with ShardedReader(stage_dir, files.FORMAT, allow_partial=True) as reader:
        has_baseline = reader.has("cam_map")
        accs = {"tedloc": method(stored_threshold=inputs.stored_threshold, classifies=not inputs.class_agnostic)}
        if has_baseline:
            accs["cam_baseline"] = method(stored_threshold=inputs.baseline_threshold)
        if config.centre_prior:
            # No classifier, and no threshold chosen without GT: Loc at the oracle τ only.
            accs["centre_prior"] = method(stored_threshold=None, classifies=False)
        records = [r for r in inputs.records if r.image_id in reader]
        skipped = {k: v for k, v in reader.skipped.items() if k not in reader}
        by_id = {r.image_id: r for r in records}
        overlay_ids = overlay_sample([r.image_id for r in records], config.num_overlays)
        scoremap_root = stage_dir / files.SCOREMAP_DIR
        overlay_dir = stage_dir / files.OVERLAY_DIR
        for old in overlay_dir.glob("*.png") if overlay_dir.is_dir() else ():
            old.unlink()  # a rerun with another sample size must not leave stale pictures
        with files.jsonl_writer(stage_dir / files.PREDICTIONS) as predictions, \
                progress(total=len(records), desc="evaluate: metrics", unit="img") as bar:
            for part_accs, scored in _scored_chunks(stage_dir, size, accs, inputs.dataset, records,
                                                    config.num_workers, reader, config.centre_prior_sigma):
                for key, acc in accs.items():
                    acc.merge(part_accs[key])
                for item in scored:
                    record = by_id[item.image_id]
                    files.write_jsonl_line(predictions, prediction_line(
                        record, item.label, item.logits["tedloc"], item.results["tedloc"], names, model_names,
                        inputs.stored_threshold, item.image_size, size))
                    if config.export_scoremaps or item.image_id in overlay_ids:
                        maps = _read_maps(reader, item.image_id, has_baseline)
                    if config.export_scoremaps:
                        files.save_scoremap(scoremap_root, item.image_id, maps["tedloc"])
                    if item.image_id in overlay_ids:
                        picture = overlay_picture(inputs.dataset, record, maps, item.results, item.logits,
                                                   model_names, item.image_size, size, config.loc_multi_contour)
                        files.write_png(overlay_dir / files.overlay_name(overlay_ids[item.image_id], item.image_id),
                                        picture)
                bar.update(len(scored))

    methods = {}
    for key, acc in accs.items():
        computed = acc.compute(names)
        methods[key] = {"label": files.METHOD_LABELS[key], "uses_label": key == "cam_baseline", **computed}
    results = {
        "format": files.FORMAT,
        "dataset": inputs.dataset.spec,
        "split": inputs.dataset.split,
        "checkpoint": inputs.checkpoint,
        "num_images": len(records),
        "skipped": skipped,
        "class_names": names,
        "class_names_source": inputs.dataset.class_names_source,
        **({"dataset_class_names": list(inputs.dataset.class_names), "label_map": inputs.label_map}
           if inputs.label_map is not None else {}),
        "class_agnostic": inputs.class_agnostic,
        **({"model_class_names": model_names, "left_out": CLASS_AGNOSTIC_NOTE} if inputs.class_agnostic else {}),
        "conventions": {
            "eval_size": size, "cam_curve_interval": config.cam_curve_interval,
            "num_thresholds": len(thresholds), "iou_thresholds": list(config.iou_thresholds),
            "v1_iou": config.v1_iou, "loc_iou": config.loc_iou,
            "loc_multi_contour": config.loc_multi_contour, "normalize_maps": config.normalize_maps,
            "oracle_threshold": "the grid threshold maximizing GT-known Loc on this split",
            "box_fraction_bins": list(config.box_fraction_bins),
            "groups": group_keys(config.box_fraction_bins),
            "box_fraction": "area of the image's largest GT box / image area, original pixels, "
                            "(x1 - x0 + 1)(y1 - y0 + 1); bins [lower, upper); images without boxes in no group",
            "group_oracle_threshold": "each group's own; the stored threshold is the method's",
            **({"centre_prior_sigma": config.centre_prior_sigma} if config.centre_prior else {}),
        },
        "methods": methods,
    }
    files.write_results(stage_dir, results)
    write_curve(stage_dir, results, inputs.stored_threshold)
    if config.html:  # after predictions.jsonl and results.json, whose numbers it shows
        from tedloc.stages.evaluate_html import write_index_html

        write_index_html(stage_dir, results, inputs.dataset, records, name=stage_dir.name,
                         max_images=config.html_max_images, side=config.html_image_size)
    log.info("evaluate: metrics of %d images in %.1f s", len(records), time.perf_counter() - started)
    return results
