"""The map threshold chosen without GT, on hand-made maps: it lands where the pseudo boxes put
the object, so the level the pseudo boxes are drawn at decides it."""

import numpy as np
import pytest

from tedloc.pipeline.cam import pseudo_boxes_of_grid_maps
from tedloc.pipeline.threshold import choose_threshold


def _core_in_halo(n: int, grid: int = 14, seed: int = 0):
    """n maps (grid × grid) of a 2×2 object core (1.0) in a 6×6 halo (0.5) on a 0.05 floor, at
    random places, and the object's box in pixels of a 224 square (the core)."""
    rng = np.random.default_rng(seed)
    maps = np.full((n, grid, grid), 0.05, np.float32)
    cores = []
    for k in range(n):
        y, x = rng.integers(2, grid - 4, size=2)
        maps[k, y - 2:y + 4, x - 2:x + 4] = 0.5
        maps[k, y:y + 2, x:x + 2] = 1.0
        cell = 224 // grid
        cores.append([x * cell, y * cell, (x + 2) * cell - 1, (y + 2) * cell - 1])
    return maps, np.array(cores, np.float32)


@pytest.mark.parametrize("criterion", ["mean_iou", "iou50"])
def test_pseudo_boxes_drawn_at_the_object_level_give_a_threshold_that_boxes_the_object(criterion):
    head_maps, cores = _core_in_halo(12)
    pseudo_maps, _ = _core_in_halo(12)  # the head learnt the pseudo-label maps' shape
    # Boxes drawn below the halo's level hold the halo: the threshold boxes the halo too.
    low = choose_threshold(head_maps, pseudo_boxes_of_grid_maps(pseudo_maps, 224, 0.3), input_size=224,
                           criterion=criterion)
    # Drawn above it (the object region): the threshold boxes the core, the object.
    high = choose_threshold(head_maps, pseudo_boxes_of_grid_maps(pseudo_maps, 224, 0.6), input_size=224,
                            criterion=criterion)
    assert low.threshold < 0.5 < high.threshold
    assert low.summary()["iou50"] == high.summary()["iou50"] == 1.0  # each matches its own boxes

    def object_hits(threshold):  # the chosen threshold against the objects' boxes (what GT would say)
        return choose_threshold(head_maps, cores, input_size=224, criterion=criterion).iou50[
            int(round(threshold * 100))]

    assert object_hits(high.threshold) == 1.0 and object_hits(low.threshold) == 0.0
