"""Evaluate, phase 1 (resumable shards, ``tedloc.evaluate``): for each image, the localizer's
class logits and map, and the CAM baseline's logits and GT-class map, upsampled to the
evaluation size and min–max normalized (wsolevaluation), stored as float16."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tedloc.artifacts import io_strategy
from tedloc.artifacts.store import ShardedWriter
from tedloc.configs.evaluate import Config
from tedloc.data.records import Dataset, Record
from tedloc.errors import ArtifactError, InputError
from tedloc.pipeline import metrics
from tedloc.stages.evaluate_baseline import load_baseline


def compute_maps(config: Config, *, workdir: Path, dataset: Dataset, records: Sequence[Record],
                  writer: ShardedWriter, checkpoint_path: Path,
                 pseudo_manifest: dict[str, Any] | None) -> None:
    """Phase 1: run the model (and the baseline) on ``records``; write shards of maps."""
    import torch

    from tedloc.pipeline.forwards import encode_batch, inference_forward_batch
    from tedloc.pipeline.image_encoders import resolve_device
    from tedloc.pipeline.image_loader import make_image_loader
    from tedloc.pipeline.localizer import Localizer
    from tedloc.pipeline.progress import progress

    device = resolve_device(config.device)
    io_strategy.DEFAULT.with_config(config).prepare_forwards(device)
    localizer = Localizer.from_checkpoint(checkpoint_path, device)
    encoder = localizer.encoder
    num_classes = len(localizer.class_names)
    # The CAM baseline maps the GT class among the model's: not defined for other classes.
    loaded = (load_baseline(workdir, pseudo_manifest, encoder, list(localizer.class_names), device,
                            config.baseline_input_size)
              if config.baseline and not config.class_agnostic else None)
    baseline, cam_encoder = loaded if loaded is not None else (None, None)
    size = config.eval_size
    loader = make_image_loader(dataset, records, input_size=encoder.input_size, batch_size=config.batch_size,
                               num_workers=config.num_workers, on_bad_image=config.on_bad_image)
    buffer: dict[str, list] = {k: [] for k in ("ids", "map", "cam_map", "class_logits",
                                               "cam_class_logits", "label", "image_size")}
    skipped: dict[str, str] = {}

    def flush() -> None:
        if not buffer["ids"] and not skipped:
            return
        arrays = {
            "map": np.asarray(buffer["map"], np.float16).reshape(-1, size, size),
            "class_logits": np.asarray(buffer["class_logits"], np.float32).reshape(-1, num_classes),
            "label": np.asarray(buffer["label"], np.int64),
            "image_size": np.asarray(buffer["image_size"], np.int32).reshape(-1, 2),
        }
        if baseline is not None:
            arrays["cam_map"] = np.asarray(buffer["cam_map"], np.float16).reshape(-1, size, size)
            arrays["cam_class_logits"] = np.asarray(buffer["cam_class_logits"], np.float32).reshape(-1, num_classes)
        writer.write_shard(
            list(buffer["ids"]), arrays, skipped=dict(skipped),
            dataset_attrs={"map": {"size": size, "range": "[0, 1]", "normalized": config.normalize_maps},
                           "image_size": {"order": "width,height"}},
            attrs={"class_names_json": json.dumps(localizer.class_names), "has_baseline": baseline is not None})
        for values in buffer.values():
            values.clear()
        skipped.clear()

    by_id = {r.image_id: r for r in records}
    with progress(total=len(records), desc="evaluate: maps", unit="img") as bar:
        for batch in loader:
            skipped.update(batch.bad)
            if len(batch):
                # Once: the head and the baseline share it (small forwards on a CPU).
                pooled, grid, _ = encode_batch(encoder, batch.pixels, with_flip=False,
                                               forward_batch=inference_forward_batch(encoder.input_size, device))
                with torch.inference_mode():
                    out = localizer.predict_features(grid)
                    logits = out.class_logits.float().cpu().numpy()
                    grid_maps = out.maps.float().cpu().numpy()
                    if baseline is not None:
                        if cam_encoder is not encoder:
                            from tedloc.pipeline.image_encoders import resize_batch

                            pooled, grid, _ = encode_batch(
                                cam_encoder, resize_batch(list(batch.pixels.numpy()), cam_encoder.input_size),
                                with_flip=False, forward_batch=inference_forward_batch(cam_encoder.input_size, device))
                        cam_grid, cam_logits = baseline(grid, pooled, batch.labels)
                for i, image_id in enumerate(batch.ids):
                    try:
                        scoremap = metrics.evaluation_map(grid_maps[i], size, normalize=config.normalize_maps,
                                                          image_id=image_id)
                        # A CAM has no fixed range: always min–max normalized (wsolevaluation).
                        cam_map = (metrics.evaluation_map(cam_grid[i], size, image_id=image_id)
                                   if baseline is not None else None)
                    except ValueError as exc:  # NaN from the model: refuse, naming the image
                        raise ArtifactError(f"{checkpoint_path}: {exc}") from None
                    buffer["ids"].append(image_id)
                    buffer["map"].append(scoremap.astype(np.float16))  # the stored precision
                    buffer["class_logits"].append(logits[i])
                    buffer["label"].append(int(batch.labels[i]))
                    buffer["image_size"].append(batch.sizes[i])
                    check_boxes_inside(dataset, by_id[image_id], tuple(int(v) for v in batch.sizes[i]))
                    if baseline is not None:
                        buffer["cam_map"].append(cam_map.astype(np.float16))
                        buffer["cam_class_logits"].append(cam_logits[i])
            bar.update(len(batch) + len(batch.bad))
            if len(buffer["ids"]) >= config.shard_size:
                flush()
        flush()


def check_boxes_inside(dataset: Dataset, record: Record, size: tuple[int, int]) -> None:
    """Refuse a GT box (``x0y0x1y1`` pixels) that leaves the decoded ``size`` = (width, height)
    image, naming the index line it came from (readers check this only where the index
    states image sizes).  ``width`` itself is tolerated, as in ``tedloc data check``."""
    width, height = size
    wheres = dataset.box_where.get(record.image_id, [])
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(record.boxes, dtype=np.float64).tolist()):
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            where = wheres[k] if k < len(wheres) else dataset.image_where.get(record.image_id)
            file, line = (where.file, where.line) if where else (str(record.path or dataset.spec), None)
            raise InputError(file, f"box {[x0, y0, x1, y1]} of {record.image_id!r} is outside the "
                                   f"{width}x{height} image", line)
