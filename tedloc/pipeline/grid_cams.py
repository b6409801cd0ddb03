"""CAMs of the ground-truth class from (B, h, w, c) encoder grids, as the pseudo-labels stage
makes its maps (:func:`cam_from_grid`)."""

from __future__ import annotations

import torch

from tedloc.pipeline import cam as cam_ops

#: Images per read of staged grids.
CAM_CHUNK = 16


def cam_from_grid(grid: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """float32 (B, h, w) CAM of ``labels`` in [0, 1] from a (B, h, w, c) grid.

    The grid is rounded to float16 first, so that a map is the CAM of exactly the features
    the artifact caches, and the same whether it came from a staged grid or a fresh forward.
    Each map depends only on its own image: one matrix-vector product per image
    (:func:`tedloc.pipeline.cam.class_activation_maps` of the rounded grid) through one
    reused float32 (h·w, c) buffer, on the grid's device.
    """
    b, h, w, c = grid.shape
    maps = torch.empty((b, h * w), dtype=torch.float32, device=grid.device)
    rows = torch.empty((h * w, c), dtype=torch.float32, device=grid.device)
    class_weights = weight.to(grid.device)[labels.to(grid.device)].float()
    for i in range(b):
        image = grid[i].reshape(h * w, c)
        rows.copy_(image if image.dtype == torch.float16 else image.to(torch.float16))
        torch.mv(rows, class_weights[i], out=maps[i])
    return cam_ops.minmax_normalize(maps.view(b, h, w))
