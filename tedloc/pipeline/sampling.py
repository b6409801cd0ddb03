"""FG/BG patch sampling from pseudo-label maps (vectorized, reproducible with a generator).

Per image: the ``n_fg`` FG patches are drawn without replacement among the top ``p_fg``
fraction of the map's values, with probability ∝ the map value; the ``n_bg`` BG patches
among the bottom ``p_bg`` fraction, ∝ 1 − value.  With levels, the candidates are also
limited to the map's own region (values ≥ ``fg_level``; BG: ≤ ``bg_level``): a fixed
fraction offers a small object's surroundings as foreground, a region does not.  Drawn anew every step, so the whole
map (kept in the cache) serves many epochs.  Patches are flat indices ``row · w + col``
into the h×w grid.
"""

from __future__ import annotations

import dataclasses
import math

import torch

#: Keeps every candidate drawable when the map is flat (weights all 0).
WEIGHT_EPS = 1e-6


@dataclasses.dataclass
class PatchSample:
    """Sampled patches of B images.

    Attributes:
        fg: int64 (B, n_fg) flat patch indices of foreground samples.
        bg: int64 (B, n_bg) flat patch indices of background samples.
    """

    fg: torch.Tensor
    bg: torch.Tensor


def _draw(candidates: torch.Tensor, weights: torch.Tensor, n: int, generator: torch.Generator | None,
          counts: torch.Tensor | None = None) -> torch.Tensor:
    """n of the (B, K) ``candidates`` per row, drawn ∝ ``weights`` (B, K) without replacement
    (with replacement when K < n).  ``counts`` int64 (B,): only the first ``counts[b]`` of
    row b are candidates (each ≥ 1), drawn with replacement where fewer than n."""
    if n == 0:
        return candidates[:, :0]
    k = candidates.shape[1]
    weights = weights + WEIGHT_EPS
    if counts is None:
        picks = torch.multinomial(weights, n, replacement=k < n, generator=generator)
        return torch.gather(candidates, 1, picks)
    weights = torch.where(torch.arange(k)[None, :] < counts[:, None], weights, torch.zeros_like(weights))
    picks = torch.empty((candidates.shape[0], n), dtype=torch.long)
    for replacement in (False, True):  # one call per kind of row keeps the draw reproducible
        rows = (counts < n) == replacement
        if rows.any():
            picks[rows] = torch.multinomial(weights[rows], n, replacement=replacement, generator=generator)
    return torch.gather(candidates, 1, picks)


def sample_patches(cam: torch.Tensor, *, n_fg: int = 4, n_bg: int = 4, p_fg: float = 0.2,
                   p_bg: float = 0.3, fg_level: float | None = None, bg_level: float | None = None,
                   generator: torch.Generator | None = None) -> PatchSample:
    """Draw FG and BG patches from maps.

    Args:
        cam: float (B, h, w) pseudo-label maps in [0, 1] (on CPU, where the generator is).
        n_fg, n_bg: patches per image.
        p_fg, p_bg: fractions of the grid (top resp. bottom values) drawn from; at least one
            patch each.
        fg_level: None, or FG candidates are only the patches with a value ≥ this (the map's
            own region, whatever the object's size), at most the top ``p_fg`` and at least
            the map's peak.
        bg_level: None, or BG candidates are only the patches with a value ≤ this, at most
            the bottom ``p_bg`` and at least the map's lowest patch.
        generator: the torch generator that makes the draw reproducible.

    Returns:
        :class:`PatchSample` with flat indices into the h·w grid.
    """
    b = cam.shape[0]
    flat = cam.reshape(b, -1).float().clamp(0, 1)
    p = flat.shape[1]
    # Stable sort: ties are broken by patch index, so the draw is reproducible.
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    k_fg = max(1, min(p, math.ceil(p_fg * p)))
    k_bg = max(1, min(p, math.ceil(p_bg * p)))
    top = order[:, :k_fg]
    bottom = order[:, p - k_bg:]
    fg_counts = bg_counts = None
    if fg_level is not None:
        fg_counts = (flat >= fg_level).sum(dim=1).clamp(1, k_fg)
    if bg_level is not None:
        bottom = bottom.flip(1)  # lowest first: a row's candidates are its first ones
        bg_counts = (flat <= bg_level).sum(dim=1).clamp(1, k_bg)
    fg = _draw(top, torch.gather(flat, 1, top), n_fg, generator, fg_counts)
    bg = _draw(bottom, 1.0 - torch.gather(flat, 1, bottom), n_bg, generator, bg_counts)
    return PatchSample(fg=fg, bg=bg)
