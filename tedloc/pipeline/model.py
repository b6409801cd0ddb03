"""The trainable TeD-Loc head on top of a frozen encoder grid.

* **D** (:class:`Decoder`): frozen grid float (B, h, w, c) -> patch embeddings z float
  (B, h, w, d), d = the anchors' dimension.
* **g** (:class:`PatchClassifier`): z_p -> one FG/BG logit per patch; M = sigmoid(g) is the
  class-agnostic localization map over the grid.
* **Σ** (:func:`aggregate`): e = Σ_p m_p z_p / Σ_p m_p with m_p = sigmoid(g(z_p)).
* class logits s_c = cos(e, t_c) / τ against the frozen anchors t_c (a buffer).

Everything is channels-last at the interfaces (as the encoders return grids); the conv
decoder permutes internally.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Added to Σ_p m_p so that an all-background image does not divide by zero.
AGGREGATION_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """Architecture of the head (stored in checkpoints as ``head_config``).

    Attributes:
        in_dim: c, channels of the frozen grid.
        embed_dim: d, dimension of the anchors and of z.
        num_classes: C.
        decoder: ``conv`` | ``transformer`` | ``linear``.
        width, depth, heads: decoder size.
        patch_head: ``mlp`` | ``linear``; patch_hidden: hidden units of the mlp.
        tau: temperature of the class logits.
        fine_dim: channels of a finer stage packed into the grid (:mod:`tedloc.pipeline.fine_grid`;
            ``in_dim`` counts them 4 times); 0 = none.  With it the maps are 2h×2w.
        fine_width: width of the decoder's block at the fine grid.
    """

    in_dim: int
    embed_dim: int
    num_classes: int
    decoder: str = "conv"
    width: int = 128
    depth: int = 2
    heads: int = 4
    patch_head: str = "mlp"
    patch_hidden: int = 64
    tau: float = 0.07
    fine_dim: int = 0
    fine_width: int = 64

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HeadConfig:
        return cls(**values)


@dataclasses.dataclass
class HeadOutput:
    """What the head returns for B images on an h×w grid.

    Attributes:
        z: float (B, h, w, d) patch embeddings (not normalized).
        patch_logits: float (B, h, w) logits of g; the map is their sigmoid.
        class_logits: float (B, C) s_c = cos(e, t_c)/τ.
        embedding: float (B, d) e, the map-weighted mean of z.
    """

    z: torch.Tensor
    patch_logits: torch.Tensor
    class_logits: torch.Tensor
    embedding: torch.Tensor

    @property
    def maps(self) -> torch.Tensor:
        """float (B, h, w) in [0, 1]: M = sigmoid(g(z))."""
        return torch.sigmoid(self.patch_logits)


class _ConvBlock(nn.Module):
    """Pre-norm residual 3×3 conv block (GroupNorm: no batch statistics, so results do not
    depend on the batch split across processes)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(F.gelu(self.norm(x)))


class _TransformerBlock(nn.Module):
    """Depthwise 3×3 conv position encoding (CPVT-style, works for any grid) + a pre-norm
    transformer encoder layer over the h·w tokens."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.pos = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                                activation="gelu", batch_first=True, norm_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x + self.pos(x)
        tokens = self.layer(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


def _blocks(config: HeadConfig) -> nn.Sequential:
    if config.decoder == "conv":
        return nn.Sequential(*[_ConvBlock(config.width) for _ in range(config.depth)])
    if config.decoder == "transformer":
        return nn.Sequential(*[_TransformerBlock(config.width, config.heads) for _ in range(config.depth)])
    raise ValueError(f"unknown decoder {config.decoder!r}")


def build_decoder(config: HeadConfig) -> nn.Module:
    """D for the config: :class:`Decoder`, or for a grid with a packed fine stage
    (``fine_dim``) :class:`tedloc.pipeline.fine_grid.FineDecoder` around the same projection
    and blocks (``linear``: the projection alone)."""
    if not config.fine_dim:
        return Decoder(config)
    from tedloc.pipeline.fine_grid import FACTOR, FineDecoder

    coarse_dim = config.in_dim - FACTOR * FACTOR * config.fine_dim
    trunk = nn.Sequential(nn.Conv2d(coarse_dim, config.width, 1),
                          *(_blocks(config) if config.decoder != "linear" else ()))
    return FineDecoder(trunk, config.width, config.fine_dim, config.fine_width, config.embed_dim)


class Decoder(nn.Module):
    """D: float (B, h, w, c) -> float (B, h, w, d)."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        if config.decoder == "linear":
            self.proj = nn.Identity()
            self.blocks = nn.Sequential()
            self.out = nn.Conv2d(config.in_dim, config.embed_dim, 1)
            return
        self.proj = nn.Conv2d(config.in_dim, config.width, 1)
        self.blocks = _blocks(config)
        self.norm = nn.GroupNorm(1, config.width)
        self.out = nn.Conv2d(config.width, config.embed_dim, 1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = grid.permute(0, 3, 1, 2)
        x = self.blocks(self.proj(x))
        if hasattr(self, "norm"):
            x = F.gelu(self.norm(x))
        return self.out(x).permute(0, 2, 3, 1)


class PatchClassifier(nn.Module):
    """g: float (..., d) -> float (...) FG/BG logits."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        if config.patch_head == "mlp":
            self.net = nn.Sequential(nn.Linear(config.embed_dim, config.patch_hidden), nn.GELU(),
                                     nn.Linear(config.patch_hidden, 1))
        elif config.patch_head == "linear":
            self.net = nn.Linear(config.embed_dim, 1)
        else:
            raise ValueError(f"unknown patch head {config.patch_head!r}")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


def aggregate(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ: e = Σ_p m_p z_p / (Σ_p m_p + eps).

    Args:
        z: float (B, h, w, d) (or (B, P, d)) patch embeddings.
        weights: float (B, h, w) (or (B, P)) non-negative patch weights m_p.

    Returns:
        float (B, d).
    """
    z = z.reshape(z.shape[0], -1, z.shape[-1])
    m = weights.reshape(weights.shape[0], -1, 1).to(z.dtype)
    return (m * z).sum(dim=1) / (m.sum(dim=1) + AGGREGATION_EPS)


def cosine_logits(x: torch.Tensor, anchors: torch.Tensor, tau: float) -> torch.Tensor:
    """float (..., d) × anchors (C, d) -> float (..., C): cos(x, t_c) / τ (computed in float32)."""
    x = F.normalize(x.float(), dim=-1)
    return x @ F.normalize(anchors.float(), dim=-1).T / tau


class TedLocHead(nn.Module):
    """D + g + Σ + cosine class logits against the frozen anchors (buffer ``anchors``)."""

    def __init__(self, config: HeadConfig, anchors: torch.Tensor):
        super().__init__()
        anchors = torch.as_tensor(anchors, dtype=torch.float32)
        if anchors.shape != (config.num_classes, config.embed_dim):
            raise ValueError(f"anchors {tuple(anchors.shape)} do not match "
                             f"{config.num_classes} classes × d={config.embed_dim}")
        self.config = config
        self.decoder = build_decoder(config)
        self.patch_classifier = PatchClassifier(config)
        # Frozen: anchors are not parameters; saved with the state dict.
        self.register_buffer("anchors", anchors.clone())

    def map_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the maps for an encoder grid of (h, w): twice as fine with a packed stage."""
        factor = 2 if self.config.fine_dim else 1
        return factor * int(grid[0]), factor * int(grid[1])

    def forward(self, grid: torch.Tensor) -> HeadOutput:
        """grid: float (B, h, w, c) frozen features -> :class:`HeadOutput` (maps on
        :meth:`map_grid`)."""
        z = self.decoder(grid)
        patch_logits = self.patch_classifier(z)
        embedding = aggregate(z.float(), torch.sigmoid(patch_logits.float()))
        class_logits = cosine_logits(embedding, self.anchors, self.config.tau)
        return HeadOutput(z=z, patch_logits=patch_logits, class_logits=class_logits, embedding=embedding)
