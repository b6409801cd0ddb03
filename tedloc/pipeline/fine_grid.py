"""A grid twice as fine as the encoder's: an earlier, finer stage packed into the grid's channels.

A CNN's last stages see the whole object but on a coarse grid (Lite0 at 224 px: 14×14, one
cell = 16 px, a quarter of a 3 %-of-the-image object's side); an earlier stage is finer (28×28
at stride 8) but sees little.  The ``-fine`` encoders (``efficientnet-lite0-fine``, ...) add
the stage at stride 8 (tiny-cnn: 2) to the grid, **packed**: each 2×2 block of its cells goes
into the channels of the coarse cell that covers it (space-to-depth), so the grid keeps its
h×w shape.  Everything that stores, caches or reads grids (pseudo-label shards, the CAM,
training's feature cache) works unchanged and the cache grows by ``4·f / c`` (Lite0: 4·40
channels beside 1392, +11 %), instead of the 4× of a 2h×2w grid of every channel.

The head unpacks it (:class:`FineDecoder`): the decoder runs on the coarse channels at h×w
(its context), is upsampled ×2 and fused with the fine stage, and one more block at 2h×2w
gives patch embeddings, so the localization map has 2h×2w cells.

Layout of a packed grid (channels last): ``[coarse (c - 4f) | fine (4f)]``, the fine part in
``torch.nn.functional.pixel_unshuffle`` order (channel-major: channel k of the fine stage at
offset (i, j) of its 2×2 block is channel ``4k + 2i + j``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Each packed coarse cell holds FACTOR × FACTOR fine cells.
FACTOR = 2


def pack(grid: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """Coarse float (B, h, w, c) + fine float (B, 2h, 2w, f) -> packed float (B, h, w, c + 4f)."""
    b, h, w, _ = grid.shape
    if fine.shape[1:3] != (FACTOR * h, FACTOR * w):
        raise ValueError(f"fine grid {tuple(fine.shape[1:3])} is not {FACTOR}× the grid {(h, w)}")
    packed = F.pixel_unshuffle(fine.permute(0, 3, 1, 2), FACTOR).permute(0, 2, 3, 1)
    return torch.cat([grid, packed.to(grid.dtype)], dim=-1)


def unpack(packed: torch.Tensor, fine_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed float (B, h, w, c + 4f) -> coarse (B, c, h, w) and fine (B, f, 2h, 2w), channels
    first (as the convolutions take them)."""
    split = packed.shape[-1] - FACTOR * FACTOR * fine_dim
    if fine_dim <= 0 or split <= 0:
        raise ValueError(f"a packed grid of {packed.shape[-1]} channels cannot hold {fine_dim} fine ones")
    x = packed.permute(0, 3, 1, 2)
    return x[:, :split], F.pixel_shuffle(x[:, split:], FACTOR)


class FineDecoder(nn.Module):
    """D for packed grids: float (B, h, w, c + 4f) -> float (B, 2h, 2w, d).

    The coarse channels go through ``coarse`` (a :class:`tedloc.pipeline.model.Decoder`'s
    projection and blocks, at h×w), a 1×1 map to ``fine_width`` and a bilinear ×2; the fine
    stage through its own 1×1 map to ``fine_width``; their sum through one residual 3×3 conv
    block at 2h×2w, GroupNorm, GELU and a 1×1 map to d.
    """

    def __init__(self, coarse: nn.Module, width: int, fine_dim: int, fine_width: int, embed_dim: int):
        super().__init__()
        from tedloc.pipeline.model import _ConvBlock

        self.fine_dim = fine_dim
        self.coarse = coarse
        self.down = nn.Conv2d(width, fine_width, 1)
        self.fine_proj = nn.Conv2d(fine_dim, fine_width, 1)
        self.block = _ConvBlock(fine_width)
        self.norm = nn.GroupNorm(1, fine_width)
        self.out = nn.Conv2d(fine_width, embed_dim, 1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        coarse, fine = unpack(grid, self.fine_dim)
        x = self.down(self.coarse(coarse))
        x = F.interpolate(x, scale_factor=FACTOR, mode="bilinear", align_corners=False) + self.fine_proj(fine)
        x = F.gelu(self.norm(self.block(x)))
        return self.out(x).permute(0, 2, 3, 1)


def upsample_maps(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """float (N, h, w) maps in [0, 1] -> float32 (N, H, W) = ``grid``: bilinear, then min–max
    per map (a constant map stays constant), e.g. pseudo-label maps at a fine head's grid."""
    from tedloc.pipeline.cam import minmax_normalize

    if tuple(maps.shape[1:]) == tuple(grid):
        return maps.float()
    up = F.interpolate(maps.float()[:, None], size=tuple(grid), mode="bilinear", align_corners=False)[:, 0]
    flat = maps.reshape(len(maps), -1)
    constant = (flat.max(1).values == flat.min(1).values)[:, None, None]
    return torch.where(constant, up, minmax_normalize(up))
