"""``tedloc predict``: class, top-5, map and boxes for arbitrary image files (no dataset).

The map is processed exactly as in the evaluate stage (upsampled to the evaluation size,
min–max normalized, same conventions from :class:`tedloc.configs.evaluate.Config`); boxes
come from the model's stored threshold (or the one given) and are returned in the original
image's pixels (``x0y0x1y1``, floats).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tedloc.artifacts import evaluate as files
from tedloc.artifacts.atomic import write_json_atomic
from tedloc.configs.evaluate import Config as EvaluateConfig
from tedloc.data.images import load_rgb
from tedloc.errors import ArtifactError, ConfigError, InputError
from tedloc.paths import check_output_dir, check_output_file
from tedloc.pipeline import metrics, render
from tedloc.pipeline.boxes import boxes_from_map, boxes_in_original, scoremap_to_uint8

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
ON_BAD_IMAGE = ("fail", "skip")


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders as their image files (recursive, sorted by path).

    A path that does not exist raises :class:`InputError`; a folder without images too.
    """
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(path, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            out.extend(found)
        elif path.exists():
            out.append(path)
        else:
            raise InputError(path, "image file not found")
    return out


def predict_images(inputs: Sequence[str | Path], *, checkpoint: str | Path, threshold: float | None = None,
                   overlays: str | Path | None = None, on_bad_image: str = "fail", device: str = "auto",
                   batch_size: int = 16, conventions: EvaluateConfig | None = None,
                   maps: bool = False) -> dict[str, Any]:
    """Run the localizer of ``checkpoint`` on image files.

    Args:
        inputs: image files and/or folders of images.
        checkpoint: a train checkpoint (``<workdir>/train/model.pt``).
        threshold: τ for the boxes; None = the threshold stored in the checkpoint.
        overlays: folder for one overlay PNG per image (map, boxes green), or None.
        on_bad_image: ``"fail"`` raise the InputError naming the file; ``"skip"`` leave it
            out and list it under ``skipped``.
        device: cpu, cuda, cuda:N or auto.
        batch_size: images per forward pass.
        conventions: map processing (eval size, normalization); the evaluate defaults.
        maps: also return each image's map (an h×w grid of numbers per image: off by default,
            so that what is printed is the class, score and boxes).

    Returns:
        ``{"checkpoint", "threshold", "class_names", "predictions": [per image: image,
        image_size (w, h), class, class_name, score, top5, boxes (every region above τ),
        box (the largest region's, or None), and with ``maps`` map (grid resolution, 3
        decimals) and map_size],
        "skipped": {file: reason}}``.
    """
    import torch

    from tedloc.pipeline.image_encoders import resolve_device
    from tedloc.pipeline.localizer import Localizer

    if on_bad_image not in ON_BAD_IMAGE:
        raise ConfigError(f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {on_bad_image!r}")
    if threshold is not None and not 0 <= threshold < 1:
        raise ConfigError(f"threshold must be in [0, 1), got {threshold}")
    if batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    if overlays is not None:  # before any image is computed
        check_output_dir(overlays, "--overlays")
    conventions = conventions or EvaluateConfig()
    paths = expand_inputs(inputs)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ArtifactError(f"{checkpoint}: checkpoint not found (train a model first, or pass --checkpoint)")
    localizer = Localizer.from_checkpoint(checkpoint, resolve_device(device))
    tau = float(localizer.threshold) if threshold is None else float(threshold)
    names = [str(n) for n in localizer.class_names]
    size = conventions.eval_size
    overlay_dir = Path(overlays) if overlays is not None else None

    predictions: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for start in range(0, len(paths), batch_size):
        images, kept = [], []
        for path in paths[start:start + batch_size]:
            try:
                images.append(load_rgb(path))
                kept.append(path)
            except InputError as exc:
                if on_bad_image == "fail":
                    raise
                log.warning("skipping %s", exc)
                skipped[str(path)] = exc.problem
        if not images:
            continue
        with torch.inference_mode():
            out = localizer.predict(localizer.encoder.preprocess(images))
        logits = out.class_logits.float().cpu().numpy()
        grid_maps = out.maps.float().cpu().numpy()
        for i, path in enumerate(kept):
            height, width = images[i].shape[:2]
            scoremap = metrics.evaluation_map(grid_maps[i], size, normalize=conventions.normalize_maps,
                                              image_id=str(path))
            u8 = scoremap_to_uint8(scoremap)
            every = boxes_from_map(scoremap, tau, multi_contour=True, scoremap_u8=u8)
            largest = boxes_from_map(scoremap, tau, multi_contour=False, scoremap_u8=u8)
            probs, top5 = metrics.ranked_classes(logits[i], names)
            best = top5[0]["class"]
            boxes = boxes_in_original(every, size, (width, height))
            box = boxes_in_original(largest, size, (width, height))
            predictions.append({
                "image": str(path),
                "image_size": [width, height],
                "class": best,
                "class_name": names[best],
                "score": top5[0]["score"],
                "top5": top5,
                "boxes": boxes,
                "box": box[0] if box else None,
                **({"map": np.round(grid_maps[i].astype(np.float64), 3).tolist(),
                    "map_size": list(grid_maps[i].shape)} if maps else {}),
            })
            if overlay_dir is not None:
                picture = render.overlay(images[i], scoremap, pred_boxes=np.asarray(boxes).reshape(-1, 4),
                                         caption=f"{names[best]} {probs[best]:.2f}")
                files.write_png(overlay_dir / files.overlay_name(len(predictions) - 1, path.name), picture)
    return {"checkpoint": str(checkpoint), "threshold": tau, "class_names": names,
            "predictions": predictions, "skipped": skipped}


def run_predict(inputs: Sequence[str | Path], *, checkpoint: str | Path, out_json: str | Path | None = None,
                **kwargs: Any) -> dict[str, Any]:
    """:func:`predict_images`, then write the result to ``out_json`` (atomically) if given.

    Both output paths are checked before anything is computed: a folder given as
    ``out_json`` would otherwise be found only after every prediction was made.
    """
    if out_json is not None:
        check_output_file(out_json, "--out-json")
        overlays = kwargs.get("overlays")
        if overlays is not None and Path(overlays).absolute() == Path(out_json).absolute():
            raise ConfigError(f"{out_json}: given as both --out-json and --overlays; give them different paths")
    result = predict_images(inputs, checkpoint=checkpoint, **kwargs)
    if out_json is not None:
        write_json_atomic(Path(out_json), result)
    return result
