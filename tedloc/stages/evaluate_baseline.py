"""The CAM baseline of the evaluate stage: the pseudo-labels' linear classifier applied to
the encoder's grid, for the GT class (a GT-known map, as CAM methods are reported), with
the classifier's own class scores for its Top-1 Loc.  Its rows are put in the model's class
order by name; the encoder is the localizer's own when the pseudo-labels used the same one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tedloc.data.classes import match_classes
from tedloc.errors import ArtifactError

log = logging.getLogger(__name__)


class CamBaseline:
    """The CAM of the pseudo-label classifier: ``grid · W[y] + b[y]`` for the GT class y,
    and the classifier's logits ``pooled · Wᵀ + b`` (its own class prediction)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        import torch

        self.weight = torch.as_tensor(np.asarray(weight, np.float32))
        self.bias = torch.as_tensor(np.asarray(bias, np.float32))

    def __call__(self, grid, pooled, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """grid float (B, h, w, c), pooled (B, c), labels (B,) -> maps (B, h, w), logits (B, C)."""
        import torch

        from tedloc.pipeline.cam import class_activation_maps

        weight = self.weight.to(grid.device)
        bias = self.bias.to(grid.device)
        logits = pooled.float() @ weight.T + bias
        index = torch.as_tensor(labels, device=grid.device, dtype=torch.long)
        maps = class_activation_maps(grid.float(), weight, index, bias)
        return maps.cpu().numpy(), logits.float().cpu().numpy()


def load_baseline(workdir: Path, pseudo_manifest: dict[str, Any] | None, encoder, class_names: list[str],
                   device, input_size: int = 0) -> tuple[CamBaseline, Any] | None:
    """The CAM baseline and the encoder whose grid it reads (the localizer's own encoder when
    it has the baseline's spec and input size), or None without a classifier file.  The
    baseline's input size is ``input_size``, or (0) the pseudo-labels'.  Its rows are put in
    the order of ``class_names`` (the model's) by name."""
    from tedloc.artifacts.pseudo_labels import CLASSIFIER_FILE, read_classifier, stage_dir

    path = stage_dir(workdir) / CLASSIFIER_FILE
    if not path.is_file():
        log.warning("%s not found: the CAM baseline is left out", path)
        return None
    classifier = read_classifier(path)
    spec = (pseudo_manifest or {}).get("encoder") or encoder.spec
    input_size = int(input_size or (pseudo_manifest or {}).get("input_size") or encoder.input_size)
    cam_encoder = encoder
    if (spec, input_size) != (encoder.spec, encoder.input_size):
        from tedloc.pipeline.image_encoders import build_image_encoder

        log.info("CAM baseline: pseudo-label encoder %s @%d differs from the model's %s @%d",
                 spec, input_size, encoder.spec, encoder.input_size)
        cam_encoder = build_image_encoder(spec, input_size=input_size, device=device)
    weight, bias = classifier.weight, classifier.bias
    num_classes = len(class_names)
    if (pseudo_manifest or {}).get("class_names") and weight.shape[0] == num_classes:
        order = match_classes(class_names, pseudo_manifest["class_names"], found_where="the model",
                              wanted_where=str(path), hint="rerun train on these pseudo-labels")
        if order is not None:  # train mapped the pseudo-labels' classes to the anchors' order
            weight, bias = weight[order], bias[order]
    if weight.shape != (num_classes, cam_encoder.feature_dim) or bias.shape != (num_classes,):
        raise ArtifactError(f"{path}: weight {weight.shape} / bias {bias.shape} do not match "
                            f"{num_classes} classes × {cam_encoder.feature_dim} features of {spec}")
    return CamBaseline(weight, bias), cam_encoder
