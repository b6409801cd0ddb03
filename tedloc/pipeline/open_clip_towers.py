"""open_clip image encoders: open_clip's own ViT and timm ViT/EVA towers (EVA-CLIP).

``open_clip:<model>/<pretrained>`` (a tag such as ``EVA02-L-14/merged2b_s4b_b131k``, the
paper's encoder, or a weights file), ``open_clip:hf-hub:<org>/<name>`` and
``open_clip:local-dir:<folder>`` (a folder with ``open_clip_config.json`` and the weights,
open_clip's offline layout) load through ``open_clip.create_model``.  Two kinds of image
tower give a patch grid:

* open_clip's ``VisionTransformer`` (``ViT-B-16``, ``ViT-L-14``, ...): the last block's
  patch tokens through ``ln_post`` and ``proj``.
* a timm ``VisionTransformer`` or ``Eva`` trunk inside open_clip's ``TimmModel``
  (``EVA02-L-14``, ``EVA02-B-16``, ``MobileCLIP2-L-14``, ...) with token or average pooling:
  the patch tokens through the trunk's ``norm``, ``fc_norm`` and ``head`` (for EVA-CLIP the
  head is the projection into the joint space) and open_clip's own projection, if any.

Class and register tokens are dropped; the grid is (S/p)×(S/p) for input size S and patch
size p (EVA02-L-14 at 224 px: 16×16, d = 768).  Other input sizes resize the learned
position embeddings bilinearly and rebuild EVA's rotary embeddings for the grid.  Towers
with attention pooling (SigLIP's ``map``, CoCa) have no per-patch form and are refused.

``pooled`` is the mean of the projected patch tokens, so that the CAM classifier fitted on
it and the CAM it draws over the grid are exactly consistent (the CAM's mean is the logit);
it is also the image embedding CLIP-ES scores (``tedloc.pipeline.clip_es``).

open_clip imports torchvision; where torchvision cannot load beside the installed torch,
these encoders are unavailable (a :class:`ConfigError` says so).
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch
from torch import nn

from tedloc.config import hash_json
from tedloc.errors import ConfigError
from tedloc.pipeline.image_encoders import CLIP_MEAN, CLIP_STD, EncoderOutput, ImageEncoder, _freeze
from tedloc.pipeline.text_encoders import parse_open_clip
from tedloc.pipeline.vit_towers import Tower, record_attention, resize_position_grid

SUPPORTED = ("open_clip's ViT (e.g. ViT-B-16, ViT-L-14) or a timm ViT/EVA with token or average "
             "pooling (e.g. EVA02-L-14, EVA02-B-16, MobileCLIP2-L-14)")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def import_open_clip():
    """The ``open_clip`` module, or a :class:`ConfigError` saying why it cannot be used."""
    if importlib.util.find_spec("open_clip") is None:
        raise ConfigError("open_clip encoders need the package open_clip_torch "
                          "(pip install 'tedloc[open_clip]')")
    try:
        import open_clip
    except Exception as exc:  # noqa: BLE001 - an unloadable torchvision raises RuntimeError
        raise ConfigError(f"open_clip is installed but cannot be imported ({_one_line(exc)}); it needs a "
                          "torchvision that loads beside the installed torch") from None
    return open_clip


def create_open_clip_model(rest: str) -> nn.Module:
    """The open_clip model named by ``open_clip:<rest>``, in eval mode on the CPU."""
    open_clip = import_open_clip()
    model_name, pretrained = parse_open_clip(rest)
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained)
    except Exception as exc:  # noqa: BLE001 - open_clip raises many types for bad names
        raise ConfigError(f"open_clip:{rest}: cannot create the model ({_one_line(exc)})") from None
    return model.eval()


def _side(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


# ----------------------------------------------------------------------------- open_clip ViT

class OpenCLIPViTTower(Tower):
    """open_clip's ``VisionTransformer``: conv patches, class token, learned positions,
    ``ln_pre``, residual blocks (``ln_1`` in front of attention), ``ln_post`` and ``proj``."""

    num_prefix = 1

    def __init__(self, visual: nn.Module, spec: str):
        if getattr(visual, "attn_pool", None) is not None:
            raise ConfigError(f"{spec}: attention-pooled towers (CoCa) have no per-patch embedding; "
                              f"supported: {SUPPORTED}")
        if not getattr(visual.transformer, "batch_first", True):
            raise ConfigError(f"{spec}: sequence-first open_clip transformers are not supported")
        self.visual = visual
        self.patch_size = _side(visual.patch_size)
        self.native_grid = tuple(int(g) for g in visual.grid_size)
        self.blocks = list(visual.transformer.resblocks)
        self.last_norm1 = self.blocks[-1].ln_1

    def run(self, pixels, *, attention=0):
        visual = self.visual
        grid = self.grid_of(pixels)
        x = visual.conv1(pixels.to(visual.conv1.weight.dtype))  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)
        positions = visual.positional_embedding
        positions = torch.cat([positions[:1], resize_position_grid(positions[1:], self.native_grid, grid)])
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + positions.to(x.dtype)
        x = visual.ln_pre(x)  # patch dropout is off: the tower is frozen in eval mode
        with _recording(self.blocks, attention) as store:
            for block in self.blocks:
                x = block(x)
        return x, (list(store) if attention > 0 else None)

    def head(self, tokens):
        x = self.visual.ln_post(tokens)
        proj = getattr(self.visual, "proj", None)
        return x @ proj if proj is not None else x


# ----------------------------------------------------------------------------- timm ViT / EVA

class TimmTower(Tower):
    """A timm ``VisionTransformer`` or ``Eva`` trunk in open_clip's ``TimmModel``: patch
    embedding, class/register tokens, absolute (and for EVA rotary) positions, ``norm_pre``,
    blocks (``norm1`` in front of attention), then ``norm``, ``fc_norm``, ``head`` and
    open_clip's head for every token."""

    def __init__(self, timm_model: nn.Module, spec: str):
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer

        trunk = timm_model.trunk
        if not isinstance(trunk, (Eva, VisionTransformer)):
            raise ConfigError(f"{spec}: the timm trunk is a {type(trunk).__name__}; supported: {SUPPORTED}")
        if trunk.global_pool not in ("token", "avg") or "pool" in dict(timm_model.head.named_children()):
            raise ConfigError(f"{spec}: pooling {trunk.global_pool!r} has no per-patch embedding; "
                              f"supported: {SUPPORTED}")
        if getattr(trunk, "rope_mixed", False):
            raise ConfigError(f"{spec}: depth-dependent rotary embeddings are not supported")
        self.model = timm_model
        self.trunk = trunk
        self.patch_size = _side(trunk.patch_embed.patch_size)
        self.native_grid = tuple(int(g) for g in trunk.patch_embed.grid_size)
        self.num_prefix = int(trunk.num_prefix_tokens)
        self.blocks = list(trunk.blocks)
        self.last_norm1 = self.blocks[-1].norm1

    def _rope(self, grid: tuple[int, int]):
        rope = getattr(self.trunk, "rope", None)
        if rope is None:
            return None
        if grid == self.native_grid:
            return rope.get_embed()
        if getattr(rope, "_use_cached_embed", False):
            # The cached form ignores a new shape: build the grid's from the same frequency bands.
            return rope._build_embed_cat(list(grid), rope.bands)
        return rope.get_embed(shape=list(grid))

    def _embed(self, pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        trunk = self.trunk
        embed = trunk.patch_embed
        strict = getattr(embed, "strict_img_size", False)
        embed.strict_img_size = False  # the size is checked by grid_of (a multiple of p)
        try:
            x = embed(pixels)
        finally:
            if hasattr(embed, "strict_img_size"):
                embed.strict_img_size = strict
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # NHWC or NLC -> NLC
        prefix = [t.expand(x.shape[0], -1, -1) for t in (trunk.cls_token, trunk.reg_token) if t is not None]
        positions = trunk.pos_embed
        if positions is not None:
            first = 0 if trunk.no_embed_class else self.num_prefix
            positions = torch.cat([positions[0, :first],
                                   resize_position_grid(positions[0, first:], self.native_grid, grid)])[None]
        if trunk.no_embed_class:
            x = torch.cat(prefix + [x if positions is None else x + positions], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1)
            x = x if positions is None else x + positions
        # pos_drop and patch dropout are off: the tower is frozen in eval mode
        return trunk.norm_pre(trunk.pos_drop(x))

    def run(self, pixels, *, attention=0):
        grid = self.grid_of(pixels)
        x = self._embed(pixels, grid)
        rope = self._rope(grid)
        with _recording(self.blocks, attention) as store:
            for block in self.blocks:
                x = block(x) if rope is None else block(x, rope=rope)
        return x, (list(store) if attention > 0 else None)

    def head(self, tokens):
        trunk = self.trunk
        x = trunk.head(trunk.head_drop(trunk.fc_norm(trunk.norm(tokens))))
        return self.model.head(x)


def _recording(blocks, last: int):
    """Records the attention of the last ``last`` blocks (a null context for 0)."""
    return record_attention([b.attn for b in blocks[-last:]]) if last > 0 else contextlib.nullcontext()


def open_clip_tower(visual: nn.Module, spec: str) -> Tower:
    """The :class:`Tower` of an open_clip model's ``visual``; ConfigError when unsupported."""
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, VisionTransformer):
        return OpenCLIPViTTower(visual, spec)
    if isinstance(visual, TimmModel):
        return TimmTower(visual, spec)
    raise ConfigError(f"{spec}: the image tower is a {type(visual).__name__}; supported: {SUPPORTED}")


# ----------------------------------------------------------------------------- the encoder

class OpenCLIPImageEncoder(ImageEncoder):
    """The image tower of an open_clip model; grid = projected patch tokens (joint space).

    ``tower()`` gives the :class:`Tower` (CLIP-ES runs it); ``logit_scale`` is the model's
    ``exp(logit_scale)``.
    """

    def __init__(self, rest: str, input_size: int | None = None):
        spec = f"open_clip:{rest}"
        model = create_open_clip_model(rest)
        tower = open_clip_tower(model.visual, spec)
        import open_clip

        preprocess = open_clip.get_model_preprocess_cfg(model)
        super().__init__(mean=tuple(preprocess.get("mean") or CLIP_MEAN),
                         std=tuple(preprocess.get("std") or CLIP_STD))
        self.spec = spec
        self.visual = model.visual  # a submodule: moves with .to(device); the text tower is not kept
        self._tower = tower
        self.logit_scale = float(model.logit_scale.detach().exp())
        self.patch_size = tower.patch_size
        if tower.native_grid[0] != tower.native_grid[1]:
            raise ConfigError(f"{spec}: non-square native grids {tower.native_grid} are not supported")
        self.native_size = tower.native_grid[0] * tower.patch_size
        self.input_size = int(input_size or self.native_size)
        if self.input_size % self.patch_size:
            raise ConfigError(f"{spec}: input_size {self.input_size} is not a multiple of the patch size "
                              f"{self.patch_size}")
        from tedloc.pipeline.image_encoders import image_encoder_fingerprint

        self.fingerprint = image_encoder_fingerprint(spec) or hash_json({"open_clip": rest})
        del model
        _freeze(self)
        self._probe()

    def tower(self) -> Tower:
        return self._tower

    def forward(self, pixels: torch.Tensor) -> EncoderOutput:
        tokens, _ = self._tower.run(pixels)
        grid = self._tower.patch_grid(tokens, self._tower.grid_of(pixels)).float()
        return EncoderOutput(grid=grid, pooled=grid.mean(dim=(1, 2)))

