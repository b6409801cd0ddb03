"""Maps and GT boxes as the metrics score them (wsolevaluation's conventions): the threshold
grid, map validation, min–max normalization, a model's grid map at the evaluation size, GT
boxes rescaled to it.  Re-exported by :mod:`tedloc.pipeline.metrics`.
"""

from __future__ import annotations

import cv2
import numpy as np

from tedloc.pipeline.boxes import rescale_boxes


def threshold_grid(interval: float = 0.01) -> np.ndarray:
    """float64 (T,) thresholds ``0, interval, 2·interval, …`` strictly below 1
    (wsolevaluation's ``np.arange(0, 1, cam_curve_interval)``; 0.01 gives 0 … 0.99)."""
    if not 0 < interval < 1:
        raise ValueError(f"threshold interval must be in (0, 1), got {interval}")
    return np.arange(0, 1, interval)


def check_scoremap(scoremap: np.ndarray, image_id: str = "<map>") -> np.ndarray:
    """Validate a score map: 2-D, no NaN, values in [0, 1]; return it as float64.

    Raises ValueError naming ``image_id`` (a NaN map is never silently repaired).
    """
    scoremap = np.asarray(scoremap)
    if scoremap.ndim != 2:
        raise ValueError(f"{image_id}: score map must be 2-D (H, W), got shape {scoremap.shape}")
    scoremap = scoremap.astype(np.float64, copy=False)
    if np.isnan(scoremap).any():
        raise ValueError(f"{image_id}: score map contains NaN")
    if scoremap.size and (scoremap.min() < 0 or scoremap.max() > 1):
        raise ValueError(f"{image_id}: score map values must be in [0, 1], "
                         f"got min {scoremap.min():.4g}, max {scoremap.max():.4g}")
    return scoremap


def normalize_scoremap(scoremap: np.ndarray, image_id: str = "<map>") -> np.ndarray:
    """Min–max normalize a float (H, W) map to [0, 1]; a constant map gives zeros.

    Same as wsolevaluation's ``normalize_scoremap`` except that NaN is refused (ValueError
    naming ``image_id``) instead of being turned into zeros: NaN means a broken model.
    """
    scoremap = np.asarray(scoremap, dtype=np.float64)
    if np.isnan(scoremap).any():
        raise ValueError(f"{image_id}: score map contains NaN")
    low, high = scoremap.min(), scoremap.max()
    if low == high:
        return np.zeros_like(scoremap)
    return (scoremap - low) / (high - low)


def evaluation_map(grid_map: np.ndarray, size: int = 224, *, normalize: bool = True,
                   image_id: str = "<map>") -> np.ndarray:
    """A model's map at grid resolution → the float32 (size, size) map that is scored.

    Bicubic upsampling, then min–max normalization (wsolevaluation's CAMComputer), or
    with ``normalize=False`` a clip to [0, 1] (bicubic overshoots).
    """
    grid_map = np.asarray(grid_map, dtype=np.float32)
    if grid_map.ndim != 2:
        raise ValueError(f"{image_id}: map must be 2-D (h, w), got shape {grid_map.shape}")
    if np.isnan(grid_map).any():
        raise ValueError(f"{image_id}: score map contains NaN")
    if normalize and grid_map.min() == grid_map.max():
        # Interpolation adds float noise to a constant map, which min–max would blow up.
        return np.zeros((size, size), np.float32)
    resized = cv2.resize(grid_map, (size, size), interpolation=cv2.INTER_CUBIC)
    if normalize:
        return normalize_scoremap(resized, image_id).astype(np.float32)
    return np.clip(resized, 0.0, 1.0)


def gt_boxes_at_eval_size(boxes: np.ndarray, image_size: tuple[int, int], eval_size: int = 224
                          ) -> np.ndarray:
    """``x0y0x1y1`` boxes in original pixels of a (width, height) image → int64 (K, 4) at
    ``eval_size``×``eval_size``, truncated like wsolevaluation's ``resize_bbox``."""
    scaled = rescale_boxes(boxes, image_size, (eval_size, eval_size))
    return scaled.astype(np.int64)
