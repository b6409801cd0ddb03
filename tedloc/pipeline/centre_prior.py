"""The centre prior: a baseline that localizes without looking at the image.

Its map is the same for every image: a Gaussian centred on the image, isotropic in
normalized coordinates (so an ellipse with the image's aspect ratio once the map is
stretched back over the image), at eval size and min–max normalized like every CAM
(wsolevaluation).  Thresholded, it gives centred boxes, smaller as the threshold rises; how
often one of them matches the object measures how much of a method's score a centred guess
of the right size already earns.  It has no classifier (Top-1/Top-5 Cls and Loc are not
computed) and no threshold chosen without ground truth (its Loc metrics are at the oracle
threshold only).
"""

from __future__ import annotations

import functools

import numpy as np

from tedloc.pipeline.image_score import FixedMap, fix_map
from tedloc.pipeline.scoremaps import normalize_scoremap


def centre_prior_map(size: int, sigma: float) -> np.ndarray:
    """float32 (size, size) map in [0, 1]: ``exp(-((u - ½)² + (v - ½)²) / (2σ²))`` at each
    pixel centre ``(u, v) = ((x + ½) / size, (y + ½) / size)``, min–max normalized (its
    largest value becomes 1, the corners 0).  ``sigma`` is in units of the side."""
    if size < 1 or not sigma > 0:
        raise ValueError(f"centre prior: size must be ≥ 1 and sigma > 0, got {size}, {sigma}")
    # (x + ½)/size - ½ written as (x - (size - 1)/2)/size: exact, so the map is exactly
    # symmetric (its boxes centred to the pixel).
    coords = (np.arange(size, dtype=np.float64) - (size - 1) / 2) / size
    squared = coords[None, :] ** 2 + coords[:, None] ** 2
    return normalize_scoremap(np.exp(-squared / (2 * sigma**2))).astype(np.float32)


@functools.lru_cache(maxsize=4)
def centre_prior(size: int, sigma: float, thresholds: tuple[float, ...]) -> FixedMap:
    """The prior at eval ``size`` with its boxes at every threshold of the grid and its
    pixels' PxAP bins, found once for all images (``fixed`` of
    :meth:`tedloc.pipeline.metrics.LocalizationAccumulator.score`); cached, so a scoring
    process builds it once (a few ms)."""
    return fix_map(centre_prior_map(size, sigma), np.asarray(thresholds, np.float64))
