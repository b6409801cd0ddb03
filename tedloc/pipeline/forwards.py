"""Encoder forwards over a batch of images and their flips, as the pseudo-labels stage runs them.

On a CPU small forwards run much faster per image: their activations stay under the 32 MB
that malloc recycles (:mod:`tedloc.artifacts.cpu_memory`) and in the CPU's caches.  On a
GPU the whole batch is one forward.  Outputs do not depend on the split (beyond float
rounding of the encoder).
"""

from __future__ import annotations

import numpy as np
import torch

from tedloc.pipeline.image_encoders import ImageEncoder

#: Images per forward on a CPU when ``forward_batch_size`` is 0 (see the config field).
CPU_FORWARD_BATCH = 2


def resolve_forward_batch(forward_batch_size: int, device: torch.device) -> int:
    """Images per encoder forward: ``forward_batch_size`` when set, else 2 on a CPU, else 0
    (the whole batch)."""
    if forward_batch_size:
        return forward_batch_size
    return CPU_FORWARD_BATCH if device.type == "cpu" else 0


#: Images in one CPU forward at 224 px whose activations all stay under the 32 MB malloc
#: recycles (EfficientNet-Lite0's largest, the first block's expanded 112×112×96 float32
#: map, is about 4.8 MB an image): 2 images and their 2 flips in the pseudo-labels stage.
CPU_FORWARD_PIXELS = 4 * 224 * 224


def inference_forward_batch(input_size: int, device: torch.device) -> int:
    """Images per forward when a stage runs the encoder without flips at ``input_size``: on a
    CPU as many as keep the activations of a 224-px forward of 4 (at least 1: 4 at 224 px,
    1 at 448 px), else 0 (the whole batch)."""
    if device.type != "cpu":
        return 0
    return max(1, CPU_FORWARD_PIXELS // (input_size * input_size))


def encode_batch(encoder: ImageEncoder, pixels: torch.Tensor, *, with_flip: bool, forward_batch: int = 0,
                 grid_out: np.ndarray | None = None, flip_out: np.ndarray | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The encoder on uint8 (B, S, S, 3) images, and on their horizontal flips when
    ``with_flip``: each forward takes ``[k images; their k flips]`` (k = ``forward_batch``,
    0 = all B at once).

    Returns (pooled float32 (B, c), grid float32 (B, h, w, c), flipped grid or None), on
    the encoder's device.  With ``grid_out`` (and ``flip_out`` when ``with_flip``), float16
    host arrays of at least B rows, each forward's grids are rounded into them instead, and
    the grids returned are float16 CPU views of their first B rows: the encode step reuses
    two such buffers for every batch rather than allocating (and page-faulting in) hundreds
    of MB of new arrays per batch.
    """
    step = forward_batch if 0 < forward_batch < len(pixels) else len(pixels)
    into = grid_out is not None
    if into and with_flip and flip_out is None:
        raise ValueError("with_flip and grid_out need flip_out too")
    pooled, grids, flips = [], [], []
    for start in range(0, len(pixels), step):
        x = encoder.normalize(pixels[start:start + step])
        k = len(x)
        if with_flip:
            x = torch.cat([x, x.flip(-1)])
        with torch.inference_mode():
            out = encoder(x)
        pooled.append(out.pooled[:k])
        if into:
            torch.from_numpy(grid_out[start:start + k]).copy_(out.grid[:k])
            if with_flip:
                torch.from_numpy(flip_out[start:start + k]).copy_(out.grid[k:])
            continue
        grids.append(out.grid[:k])
        if with_flip:
            flips.append(out.grid[k:])

    def joined(parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    if into:
        n = len(pixels)
        return (joined(pooled), torch.from_numpy(grid_out[:n]),
                torch.from_numpy(flip_out[:n]) if with_flip else None)
    return joined(pooled), joined(grids), (joined(flips) if with_flip else None)
