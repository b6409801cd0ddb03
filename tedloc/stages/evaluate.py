"""Evaluate stage: the trained localizer (beside a CAM baseline and a centre prior) scored
on a labelled split.

Two phases, so that the expensive one is resumable and the cheap one reproducible:

1. **Maps** (resumable shards, ``tedloc.evaluate``): for each image, the localizer's class
   logits and map, and the CAM baseline's logits and GT-class map, upsampled to the
   evaluation size and min–max normalized (wsolevaluation), stored as float16.
2. **Report**, always recomputed from the shards (seconds for thousands of images,
   :mod:`tedloc.stages.evaluate_report`): the metrics of :mod:`tedloc.pipeline.metrics`
   over the split, per class and by group, ``results.json`` / ``results.md``,
   ``predictions.jsonl``, overlays, the BoxAcc curve and optional score-map exports.

Identity: ``config_hash`` of the evaluate config; ``upstream_hash`` = hash of the train
artifact's identity and of the split's content (ids, labels, boxes, masks), so a changed
model or dataset is never mixed with old maps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tedloc.artifacts import evaluate as files
from tedloc.artifacts import pseudo_labels as pseudo_files
from tedloc.artifacts import train as train_files
from tedloc.artifacts.atomic import TMP_SUFFIX
from tedloc.artifacts.evaluations import default_name, evaluation_dir
from tedloc.artifacts.store import (
    MANIFEST,
    SHARD_DIR,
    ArtifactHeader,
    ShardedWriter,
    read_manifest,
)
from tedloc.config import hash_json
from tedloc.configs.evaluate import Config
from tedloc.data.records import Record
from tedloc.data.source import DatasetSource
from tedloc.errors import ArtifactError, ConfigError, ConfigMismatchError, InputError
from tedloc.paths import absolute_dataset_spec, absolute_spec
from tedloc.stages.evaluate_classes import scored_classes
from tedloc.stages.evaluate_html import INDEX_HTML
from tedloc.stages.evaluate_maps import compute_maps
from tedloc.stages.evaluate_report import ReportInputs, compute_report

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- inputs

def dataset_content_hash(class_names: Sequence[str], records: Sequence[Record]) -> str:
    """Hash of what the metrics read from the split: ids, labels (indices into
    ``class_names``), boxes, mask file names."""
    return hash_json({
        "classes": list(class_names),
        "items": [[r.image_id, r.label, np.asarray(r.boxes, np.float64).round(3).tolist(),
                   sorted(p.name for p in (r.mask_paths or ((r.mask_path,) if r.mask_path else ()))),
                   r.ignore_path.name if r.ignore_path else None] for r in records],
    })


def _train_identity(workdir: Path) -> tuple[dict[str, Any], str]:
    manifest = read_manifest(workdir / train_files.STAGE_DIR, train_files.FORMAT)
    return manifest, f"{manifest.get('config_hash')}/{manifest.get('upstream_hash')}"


def _pseudo_manifest(workdir: Path) -> dict[str, Any] | None:
    try:
        return read_manifest(workdir / pseudo_files.STAGE_DIR, pseudo_files.FORMAT)
    except ArtifactError:
        return None


def resolve_source(config: Config, workdir: Path) -> DatasetSource:
    """Where the split is read from: the config's dataset, else the one the pseudo-labels
    were made from (with its metadata folder and class-names file)."""
    if config.dataset:
        return DatasetSource.of(config)
    where = workdir / pseudo_files.STAGE_DIR / MANIFEST
    source = DatasetSource.recorded(_pseudo_manifest(workdir) or {}, where)
    if source is None:
        raise ConfigError(f"evaluate: no --dataset given and none recorded in {where}")
    # Options given on this command line come first.
    return DatasetSource(source.spec, config.metadata or source.metadata, config.class_names or source.class_names)


def stored_threshold_of(checkpoint: dict[str, Any], path: Path) -> float:
    try:
        return float(checkpoint["threshold"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{path}: checkpoint has no 'threshold'") from None


def baseline_threshold_of(config: Config, pseudo_manifest: dict[str, Any] | None) -> float:
    """The CAM baseline's non-oracle τ: the config's, else the pseudo-label box threshold."""
    if config.baseline_threshold is not None:
        return config.baseline_threshold
    manifest = pseudo_manifest or {}
    for value in (manifest.get("box_threshold"), (manifest.get("config") or {}).get("box_threshold")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.5


# ----------------------------------------------------------------------------- the stage

def run(config: Config, *, workdir: Path, overwrite: bool = False) -> Path:
    """Run the evaluate stage; return the manifest path (see the module docstring)."""
    from tedloc.artifacts.checkpoint import load_checkpoint

    workdir = Path(workdir)
    _, train_identity = _train_identity(workdir)
    checkpoint_path = workdir / train_files.STAGE_DIR / config.checkpoint
    checkpoint = load_checkpoint(checkpoint_path)
    pseudo_manifest = _pseudo_manifest(workdir)

    source = resolve_source(config, workdir)
    spec = source.spec
    dataset = source.open(config.split)
    log.info("evaluate: class names of %s from %s", source, dataset.class_names_source or "the dataset")
    # Labels in the model's classes (matched by name), or the dataset's own when class-agnostic.
    scored = scored_classes(dataset, dataset.head(config.limit), checkpoint.get("class_names", []),
                            class_agnostic=config.class_agnostic, dataset_where=f"dataset {spec} ({config.split})",
                            model_where=f"the model {checkpoint_path}")
    records, label_map = scored.records, scored.label_map
    if not records:
        raise InputError(spec, f"split {config.split!r} has no images")

    header = ArtifactHeader(
        format=files.FORMAT, format_version=files.FORMAT_VERSION,
        config={**config.stored_dict(), "dataset": absolute_dataset_spec(spec),
                "metadata": absolute_spec(source.metadata, "file"),
                "class_names": absolute_spec(source.class_names, "file")},
        config_hash=config.config_hash(),
        upstream_hash=hash_json({"train": train_identity,
                                 "data": dataset_content_hash(scored.label_names, records)}),
    )
    name = config.name or default_name(spec, config.split, source.metadata)
    stage_dir = evaluation_dir(workdir, name)
    log.info("evaluate: evaluation %r of %s (%s) in %s", name, spec, config.split, stage_dir)
    inputs = ReportInputs(dataset=dataset, records=records, class_names=scored.label_names,
                          stored_threshold=stored_threshold_of(checkpoint, checkpoint_path),
                          baseline_threshold=baseline_threshold_of(config, pseudo_manifest),
                          checkpoint=str(checkpoint_path), label_map=label_map,
                          model_class_names=scored.model_names, class_agnostic=scored.class_agnostic)
    ids = [r.image_id for r in records]
    writer = ShardedWriter(stage_dir, header, supported_versions=(files.FORMAT_VERSION,))
    with writer:
        try:
            finished = writer.open(overwrite=overwrite)
        except ConfigMismatchError as exc:
            # Another dataset or model under this name: keeping both is one option away.
            raise ConfigMismatchError(str(exc).replace("use another --workdir", "give this evaluation another "
                                                       "--name (both are kept)")) from None
        if finished:
            if not _outputs_missing(stage_dir, config):
                log.info("evaluate: finished results in %s match this config; nothing to do", stage_dir)
                return writer.manifest_path
            log.info("evaluate: rewriting the report (requested outputs or report settings differ)")
        pending = writer.pending(ids)
        if pending:
            log.info("evaluate: %d of %d images to run (%d done)", len(pending), len(ids), len(ids) - len(pending))
            index = {r.image_id: r for r in records}  # labels in the model's order
            compute_maps(config, workdir=workdir, dataset=dataset, records=[index[i] for i in pending],
                         writer=writer, checkpoint_path=checkpoint_path, pseudo_manifest=pseudo_manifest)
        results = compute_report(stage_dir, config, inputs)
        summary = {key: {k: m["overall"].get(k) for k in ("max_box_acc_v1", "max_box_acc_v2", "top1_loc",
                                                          "top1_cls", "pxap") if k in m["overall"]}
                   for key, m in results["methods"].items()}
        path = writer.finish(ids, also=_report_files(stage_dir), extra={
            "name": name, "dataset": header.config["dataset"], "split": config.split, "label_map": label_map,
            "class_agnostic": scored.class_agnostic, "class_names_source": dataset.class_names_source,
            "train_identity": train_identity,
            "stored_threshold": inputs.stored_threshold, "baseline_threshold": inputs.baseline_threshold,
            "num_overlays": config.num_overlays, "export_scoremaps": config.export_scoremaps,
            "html": _html_settings(config),
            "report_settings": _report_settings(config), "summary": summary,
            "outputs": [files.RESULTS_JSON, files.RESULTS_MD, files.PREDICTIONS, files.CURVE_PNG,
                        files.OVERLAY_DIR] + ([files.SCOREMAP_DIR] if config.export_scoremaps else [])
                       + ([INDEX_HTML] if config.html else []),
        })
    if path is None:  # cannot happen with one process; kept for the contract of finish()
        raise ArtifactError(f"{stage_dir}: images are missing after the run")
    log.info("evaluate: results in %s", stage_dir / files.RESULTS_MD)
    return path


def _report_files(stage_dir: Path) -> list[str]:
    """The report's files (relative paths): everything but the shards, the manifest, locks
    and temporary files; recorded in the manifest's checksums."""
    return sorted(p.relative_to(stage_dir).as_posix() for p in stage_dir.rglob("*")
                  if p.is_file() and p.name != MANIFEST and not p.name.startswith(".lock")
                  and not p.name.endswith(TMP_SUFFIX) and p.relative_to(stage_dir).parts[0] != SHARD_DIR)


def _report_settings(config: Config) -> dict[str, Any]:
    """The report-only settings (not hashed: the maps do not depend on them), as JSON."""
    return {name: value for name, value in config.to_dict().items() if name in Config.REPORT_FIELDS}


def _outputs_missing(stage_dir: Path, config: Config) -> bool:
    """A finished run asked for outputs it did not write, or made its report with other
    report settings (NOT_HASHED options): its report is rewritten from the shards."""
    manifest = read_manifest(stage_dir, files.FORMAT)
    if config.export_scoremaps and not (stage_dir / files.SCOREMAP_DIR).is_dir():
        return True
    if not all((stage_dir / name).is_file() for name in (files.RESULTS_JSON, files.RESULTS_MD, files.PREDICTIONS)):
        return True
    return (manifest.get("num_overlays") != config.num_overlays
            or manifest.get("report_settings") != _report_settings(config)
            or manifest.get("html") != _html_settings(config))


def _html_settings(config: Config) -> dict[str, Any] | None:
    """What index.html was made with (None: not written), to rewrite it when asked otherwise."""
    return {"max_images": config.html_max_images, "image_size": config.html_image_size} if config.html else None
