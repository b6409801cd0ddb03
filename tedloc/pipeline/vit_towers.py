"""Vision-transformer towers of CLIP models behind one small interface (:class:`Tower`).

A tower takes normalized pixels (B, 3, H, W), H and W multiples of its patch size p, and
returns the tokens of its last block (B, P + h·w, D): P prefix tokens (the class token,
plus register tokens where the model has them) followed by the h×w = (H/p)×(W/p) patch
tokens in row-major order.  ``head`` takes tokens into the joint image–text space (the
tower's final norm and projection, applied to every token).  Where the grid differs from
the one the model was trained at, the learned position embeddings of the patches are
resized bilinearly (``align_corners=False``), as CLIP-ES resizes them
(``clip/model.py``, ``upsample_pos_emb``); rotary embeddings are rebuilt for the grid.

Two more pieces serve CLIP-ES (``tedloc.pipeline.clip_es``): ``last_norm1``, the norm in
front of the last block's attention, whose output CLIP-ES takes Grad-CAM at, and
``run(..., attention=k)``, which also returns the attention probabilities (B, heads, L, L),
L = P + h·w, of the last k blocks (only those are kept: at an image's own size L can be in
the thousands, and each block's record takes heads·L² floats).

Kinds: :class:`HFCLIPTower` (``transformers`` CLIP, here); the open_clip ViT and the timm
ViT/EVA towers of open_clip models are in ``tedloc.pipeline.open_clip_towers``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tedloc.errors import ConfigError


def resize_position_grid(positions: torch.Tensor, old_grid: tuple[int, int],
                         new_grid: tuple[int, int]) -> torch.Tensor:
    """Patch position embeddings (old_h·old_w, D) -> (new_h·new_w, D), bilinear,
    ``align_corners=False`` (rows in row-major grid order).  The same grid returns them as
    they are."""
    if tuple(old_grid) == tuple(new_grid):
        return positions
    (oh, ow), (nh, nw) = old_grid, new_grid
    dim = positions.shape[-1]
    grid = positions.reshape(1, oh, ow, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(nh, nw), mode="bilinear", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(nh * nw, dim).to(positions.dtype)


class Tower:
    """What every tower offers (see the module docstring).

    Attributes:
        patch_size: p, pixels per patch side.
        native_grid: (h, w) of the grid the model was trained at.
        num_prefix: P, tokens in front of the patch tokens.
        last_norm1: the norm module in front of the last block's attention.
    """

    patch_size: int
    native_grid: tuple[int, int]
    num_prefix: int
    last_norm1: nn.Module

    def grid_of(self, pixels: torch.Tensor) -> tuple[int, int]:
        """(h, w) of (B, 3, H, W) pixels; H and W must be multiples of the patch size."""
        height, width = int(pixels.shape[-2]), int(pixels.shape[-1])
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"input {height}x{width} is not a multiple of the patch size {p}")
        return height // p, width // p

    def run(self, pixels: torch.Tensor, *, attention: int = 0
            ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Last-block tokens float (B, P + h·w, D) and, with ``attention`` = k > 0, the
        attention probabilities (B, heads, L, L) of the last k blocks, in block order (else None)."""
        raise NotImplementedError

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, D) last-block tokens -> (B, L, d) in the joint space (every token)."""
        raise NotImplementedError

    def patch_grid(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Projected patch tokens as a grid: (B, P + h·w, d) -> (B, h, w, d)."""
        projected = self.head(tokens)[:, self.num_prefix:]
        return projected.reshape(projected.shape[0], grid[0], grid[1], projected.shape[-1])


# ----------------------------------------------------------------------------- attention capture

@contextlib.contextmanager
def record_attention(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Collect the attention probabilities (B, heads, L, L) of each module in ``modules``
    while the block runs (entry i for ``modules[i]``, detached).

    ``nn.MultiheadAttention`` (open_clip's default blocks) is asked for its per-head weights;
    timm's attention modules (``fused_attn`` and an ``attn_drop`` dropout that receives the
    softmax) run their unfused path while recording, and the dropout's input is kept (in eval
    mode the dropout is the identity).  Anything else is a :class:`ConfigError`.
    """
    store: list[torch.Tensor | None] = [None] * len(modules)
    handles = []
    restore: list[tuple[nn.Module, bool]] = []

    def want_weights(module, args, kwargs):
        kwargs = dict(kwargs)
        kwargs["need_weights"] = True
        kwargs["average_attn_weights"] = False
        return args, kwargs

    def keeper(index: int, pick_second: bool):
        def hook(module, args, output):
            store[index] = (output[1] if pick_second else output).detach()
        return hook

    try:
        for i, module in enumerate(modules):
            if isinstance(module, nn.MultiheadAttention):
                handles.append(module.register_forward_pre_hook(want_weights, with_kwargs=True))
                handles.append(module.register_forward_hook(keeper(i, True)))
            elif hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Dropout):
                restore.append((module, module.fused_attn))
                module.fused_attn = False
                handles.append(module.attn_drop.register_forward_hook(keeper(i, False)))
            else:
                raise ConfigError(f"cannot read the attention weights of {type(module).__name__} "
                                  "(supported: nn.MultiheadAttention, timm attention modules)")
        yield store
    finally:
        for handle in handles:
            handle.remove()
        for module, fused in restore:
            module.fused_attn = fused


# ----------------------------------------------------------------------------- transformers CLIP

class HFCLIPTower(Tower):
    """The vision tower of a ``transformers`` CLIP model (``CLIPVisionTransformer``).

    The model runs as a whole (its layer API differs between transformers versions); a
    forward hook on its embeddings replaces their output by the same sum with the position
    embeddings resized bilinearly to the input's grid.  Attention comes from the model's
    ``output_attentions`` (load it with ``attn_implementation="eager"``).
    """

    num_prefix = 1

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module):
        self.vision_model = vision_model
        self.visual_projection = visual_projection
        embeddings = vision_model.embeddings
        self.patch_size = int(embeddings.patch_size)
        side = int(embeddings.image_size) // self.patch_size
        self.native_grid = (side, side)
        self.last_norm1 = vision_model.encoder.layers[-1].layer_norm1

    def _embed(self, module, args, kwargs, output):
        pixels = args[0] if args else kwargs["pixel_values"]
        patches = module.patch_embedding(pixels.to(module.patch_embedding.weight.dtype))
        grid = (int(patches.shape[-2]), int(patches.shape[-1]))
        patches = patches.flatten(2).transpose(1, 2)
        positions = module.position_embedding.weight
        cls = module.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        grid_positions = resize_position_grid(positions[1:], self.native_grid, grid)
        return tokens + torch.cat([positions[:1], grid_positions]).to(patches.dtype)

    def run(self, pixels, *, attention=0):
        self.grid_of(pixels)
        handle = self.vision_model.embeddings.register_forward_hook(self._embed, with_kwargs=True)
        try:
            # interpolate_pos_encoding=True only lifts the model's size check: the hook
            # replaces the embeddings it computes.
            out = self.vision_model(pixel_values=pixels, output_attentions=attention > 0,
                                    interpolate_pos_encoding=True)
        finally:
            handle.remove()
        attentions = [a.detach() for a in out.attentions[-attention:]] if attention > 0 else None
        if attention > 0 and (not out.attentions or out.attentions[0] is None):
            raise ConfigError("the CLIP model returned no attention weights (load it with eager attention)")
        return out.last_hidden_state, attentions

    def head(self, tokens):
        return self.visual_projection(self.vision_model.post_layernorm(tokens))
