"""Class activation maps (CAM) from a linear classifier on frozen pooled features.

METHOD.md, "Pseudo-labels" [ours]: fit a multinomial logistic regression on the encoder's
pooled features with the image labels, then the CAM of class y over the grid is
``grid · W[y] + b[y]`` (B, h, w), min–max normalized to [0, 1] per image (a constant map
becomes zeros, as wsolevaluation's ``normalize_scoremap``).  For EfficientNet and tiny-cnn
``pooled`` is the mean of ``grid``, so the CAM's mean is exactly the classifier's logit;
for CLIP the classifier reads the image embedding and the CAM the projected patch tokens
(same joint space, the usual CLIP-CAM approximation).

The classifier (:func:`fit_linear_classifier`) is trained full-batch with L-BFGS
(:mod:`tedloc.pipeline.lbfgs`) in float64 on standardized features (the standardization
is folded back into ``W`` and ``b``, so they apply to raw features), with an L2 penalty;
starting from zeros, so the result is deterministic.  A held-out share of the images (seeded draw) measures accuracy; the final
classifier is then refit on every image (``refit_all``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
import torch.nn.functional as F

from tedloc.pipeline import lbfgs
from tedloc.pipeline.boxes import boxes_from_map

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LinearClassifier:
    """``logits = features @ weight.T + bias``.

    Attributes:
        weight: float32 (C, c).
        bias: float32 (C,).
        holdout_accuracy: top-1 accuracy (fraction) on the held-out images, None if none.
        train_accuracy: top-1 accuracy (fraction) of the final classifier on its training images.
    """

    weight: np.ndarray
    bias: np.ndarray
    holdout_accuracy: float | None = None
    train_accuracy: float | None = None

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])


def _lbfgs_fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
               max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on float64 (N, c) standardized x; (W, b) for them.

    Loss ``mean CE(x Wᵀ + b, y) + λ/2 ‖W‖²`` with its closed-form gradient
    (``(softmax − onehot)ᵀ x / N + λ W`` and the mean of ``softmax − onehot``), minimized
    from zeros by :func:`tedloc.pipeline.lbfgs.minimize`.
    """
    n, c = x.shape
    onehot = F.one_hot(y, num_classes).to(torch.float64)

    def loss_and_grad(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = flat[:num_classes * c].view(num_classes, c), flat[num_classes * c:]
        log_p = torch.log_softmax(x @ w.T + b, dim=1)
        value = -(log_p * onehot).sum() / n + 0.5 * weight_decay * (w * w).sum()
        residual = (log_p.exp() - onehot) / n
        grad = torch.cat([(residual.T @ x + weight_decay * w).reshape(-1), residual.sum(0)])
        return value, grad

    flat = lbfgs.minimize(loss_and_grad, torch.zeros(num_classes * (c + 1), dtype=torch.float64),
                          max_iter=max_iter, history_size=20)
    return flat[:num_classes * c].view(num_classes, c), flat[num_classes * c:]


def fit_linear_classifier(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                          weight_decay: float = 1e-3, max_iter: int = 200, holdout: float = 0.1,
                          refit_all: bool = True, seed: int = 0) -> LinearClassifier:
    """Fit ``logits = features @ W.T + b`` by L2-penalized cross-entropy (full-batch L-BFGS).

    Args:
        features: float (N, c) pooled encoder features.
        labels: int (N,) classes in ``[0, num_classes)``.
        weight_decay: λ of the penalty ``λ/2 ‖W‖²`` on standardized features.
        max_iter: L-BFGS iterations.
        holdout: share of images held out (seeded draw) to measure accuracy; 0 = none
            (also when fewer than 2 images would be held out or training would lose a class).
        refit_all: after measuring, refit on every image (the classifier returned); False
            keeps the classifier fit without the held-out images.
        seed: seed of the held-out draw.
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"features (N, c) and labels (N,) needed, got {tuple(x.shape)} and {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")
    # Standardize for a well-conditioned problem; folded back into W and b below.
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std

    holdout_accuracy = None
    n_hold = int(round(holdout * len(x)))
    fit_index = torch.arange(len(x))
    if n_hold >= 2:
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        hold, rest = perm[:n_hold], perm[n_hold:]
        if len(torch.unique(y[rest])) == len(torch.unique(y)):
            w, b = _lbfgs_fit(z[rest], y[rest], num_classes, weight_decay, max_iter)
            holdout_accuracy = float(((z[hold] @ w.T + b).argmax(1) == y[hold]).double().mean())
            fit_index = torch.arange(len(x)) if refit_all else rest
            if not refit_all:
                return _fold(w, b, mean, std, holdout_accuracy, z[rest], y[rest])
    w, b = _lbfgs_fit(z[fit_index], y[fit_index], num_classes, weight_decay, max_iter)
    return _fold(w, b, mean, std, holdout_accuracy, z[fit_index], y[fit_index])


def _fold(w, b, mean, std, holdout_accuracy, z_fit, y_fit) -> LinearClassifier:
    train_accuracy = float(((z_fit @ w.T + b).argmax(1) == y_fit).double().mean())
    weight = w / std  # W z = W (x - m)/s = (W/s) x - (W/s) m
    bias = b - weight @ mean
    return LinearClassifier(weight=weight.float().numpy(), bias=bias.float().numpy(),
                            holdout_accuracy=holdout_accuracy, train_accuracy=train_accuracy)


def class_activation_maps(grid: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """Raw CAMs of the given classes: float32 (B, h, w) = ``grid[b] · weight[labels[b]] (+ bias)``.

    Args:
        grid: float (B, h, w, c) encoder features.
        weight: float (C, c) classifier weights (same device as ``grid``).
        labels: int64 (B,) the class of each image's map.
        bias: float (C,) or None (a per-map constant: no effect after min–max).
    """
    w = weight[labels].to(grid.dtype)  # (B, c)
    maps = torch.einsum("bhwc,bc->bhw", grid, w)
    if bias is not None:
        maps = maps + bias[labels].to(maps.dtype)[:, None, None]
    return maps.float()


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min–max to [0, 1] of float (B, h, w); a constant (or non-finite range) map -> zeros."""
    flat = maps.flatten(1)
    low = flat.min(1).values[:, None, None]
    high = flat.max(1).values[:, None, None]
    span = high - low
    ok = span > 0
    out = torch.where(ok, (maps - low) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(maps))
    return out.clamp_(0.0, 1.0)


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """float (B, h, w) maps in [0, 1] -> float32 (B, size, size) on the CPU: exactly the maps
    the evaluation scores (:func:`tedloc.pipeline.metrics.evaluation_map`: OpenCV bicubic,
    then min–max again, since bicubic overshoots; a constant map stays zero), so pseudo
    boxes are drawn on the same maps as boxes at evaluation.  About 50 µs per map."""
    from tedloc.pipeline.metrics import evaluation_map

    grids = maps.detach().float().cpu().numpy()
    out = np.empty((len(grids), size, size), np.float32)
    for k, grid in enumerate(grids):
        out[k] = evaluation_map(grid, size)
    return torch.from_numpy(out)


def pseudo_boxes_of_grid_maps(maps: np.ndarray, size: int, threshold: float) -> np.ndarray:
    """float32 (B, 4) :func:`pseudo_boxes` of float (B, h, w) maps at grid resolution, each
    upsampled to ``size``×``size`` as :func:`upsample_maps` does, one map at a time (no
    (B, size, size) array is built)."""
    from tedloc.pipeline.metrics import evaluation_map

    out = np.zeros((len(maps), 4), np.float32)
    for i, grid in enumerate(np.asarray(maps, np.float32)):
        out[i] = boxes_from_map(evaluation_map(grid, size), threshold, multi_contour=False)[0]
    return out


def pseudo_boxes(maps_up: np.ndarray, threshold: float) -> np.ndarray:
    """float32 (B, 4) ``x0y0x1y1`` boxes (inclusive pixels of the S×S map): the largest
    contour of each map above ``threshold`` (relative to its max); ``[0, 0, 0, 0]`` if none.

    One cv2 call per map (contours have no batched form); the maps come in as uint8-ready
    float32 (B, S, S) in [0, 1].
    """
    out = np.zeros((len(maps_up), 4), np.float32)
    for i, scoremap in enumerate(maps_up):
        out[i] = boxes_from_map(scoremap, threshold, multi_contour=False)[0]
    return out
