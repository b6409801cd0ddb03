"""The trained localizer for inference: frozen encoder E + the trained head, from a checkpoint.

``Localizer.from_checkpoint(path, device)`` rebuilds the encoder from the spec and the
inference input size stored in the checkpoint (``inference_input_size``: the training size
times the train stage's ``inference_scale``; older checkpoints: ``input_size``) and the head
from ``head_config`` / ``head_state``;
``predict(pixels)`` needs no class label (the map is class-agnostic).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from tedloc.errors import ArtifactError
from tedloc.pipeline.model import HeadConfig, TedLocHead


@dataclasses.dataclass
class LocalizerOutput:
    """class_logits: float (B, C) s_c; maps: float (B, h, w) in [0, 1] at grid resolution."""

    class_logits: torch.Tensor
    maps: torch.Tensor


class Localizer:
    """Attributes: ``encoder`` (frozen ImageEncoder, for preprocessing), ``head``,
    ``class_names``, ``threshold`` (τ chosen at training without GT), ``device``."""

    def __init__(self, encoder, head: TedLocHead, class_names: list[str], threshold: float,
                 device: torch.device):
        self.encoder = encoder
        self.head = head.eval()
        self.class_names = class_names
        self.threshold = threshold
        self.device = device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", *,
                        encoder=None) -> Localizer:
        """Load a train checkpoint (``model.pt``, ``best.pt`` or ``last.pt``).

        Args:
            path: the checkpoint file.
            device: where encoder and head run.
            encoder: an already built encoder to reuse (must match the stored spec and
                inference size).
        """
        from tedloc.artifacts.checkpoint import load_checkpoint
        from tedloc.pipeline.image_encoders import build_image_encoder, resolve_device

        device = resolve_device(device)
        state = load_checkpoint(path, map_location="cpu")
        try:
            head_config = HeadConfig.from_dict(dict(state["head_config"]))
            head = TedLocHead(head_config, state["anchors"])
            head.load_state_dict(state["head_state"])
            spec = str(state["encoder"])
            input_size = int(state.get("inference_input_size") or state["input_size"])
            class_names = [str(n) for n in state["class_names"]]
            threshold = float(state["threshold"]) if state.get("threshold") is not None else 0.5
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise ArtifactError(f"{path}: not a train checkpoint of this version ({exc})") from None
        if encoder is None:
            encoder = build_image_encoder(spec, input_size=input_size, device=device)
        elif encoder.spec != spec or encoder.input_size != input_size:
            raise ArtifactError(f"{path}: reads {spec}@{input_size}, given {encoder.spec}@{encoder.input_size}")
        if encoder.feature_dim != head_config.in_dim:
            raise ArtifactError(f"{path}: head expects {head_config.in_dim} channels, encoder {spec} "
                                f"gives {encoder.feature_dim}")
        return cls(encoder, head.to(device), class_names, threshold, device)

    @torch.no_grad()
    def predict_features(self, grid: torch.Tensor) -> LocalizerOutput:
        """Frozen grid float (B, h, w, c) (e.g. cached features) -> :class:`LocalizerOutput`."""
        out = self.head(grid.to(self.device, torch.float32))
        return LocalizerOutput(class_logits=out.class_logits.float(), maps=out.maps.float())

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor) -> LocalizerOutput:
        """Normalized pixels float (B, 3, S, S) (``encoder.normalize`` / ``preprocess``) ->
        :class:`LocalizerOutput`.  On a CPU the encoder runs a few images at a time
        (:func:`~tedloc.pipeline.forwards.inference_forward_batch`)."""
        from tedloc.pipeline.forwards import inference_forward_batch

        step = inference_forward_batch(self.encoder.input_size, self.device) or len(pixels)
        if not 0 < step < len(pixels):
            return self.predict_features(self.encoder(pixels.to(self.device)).grid)
        grids = [self.encoder(pixels[start:start + step].to(self.device)).grid
                 for start in range(0, len(pixels), step)]
        return self.predict_features(torch.cat(grids))
