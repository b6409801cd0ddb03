"""CLIP-ES pseudo-label maps (Lin et al., CVPR 2023) on a ``transformers`` CLIP encoder.

METHOD.md, "Pseudo-labels" [paper]: Grad-CAM of the ground-truth class's prompt
("a clean origami {}.") against background prompts, with an attention-based refinement.
What this module does, per batch of B images:

1. Text side (once): the class prompts and the background prompts through CLIP's text
   tower + projection (``tedloc.pipeline.text_encoders``), L2-normalized: T (C + K, d).
2. Image side: the vision tower is run with the input of its **last** encoder layer made a
   leaf tensor that requires grad (a forward pre-hook), so that no weight needs a gradient.
   Image embedding e (projected class token) -> ``softmax(logit_scale · cos(e, T))`` over
   classes + backgrounds; the score is the probability of the GT class (the softmax over
   background prompts is CLIP-ES's way to suppress co-occurring background).
3. Grad-CAM on the patch tokens of that layer input: channel weights = mean gradient over
   the patches, map = ReLU(Σ_channels weight · activation), per patch -> (h, w), min–max.
4. Refinement (``refine=True``, a simplified class-aware attention affinity): the mean
   attention of the last ``attention_layers`` layers and all heads among patches,
   Sinkhorn-normalized (rows and columns, 3 rounds) and symmetrized, is the affinity A;
   the map is propagated as ``A @ (cam · mask)`` where ``mask`` keeps the patches whose CAM
   is at least ``refine_threshold`` (CLIP-ES restricts the affinity to the CAM's boxes;
   the mask is the patch-level version of that), then min–max normalized.  Setting
   ``refine=False`` gives plain Grad-CAM.

Pure computation; the encoder must be a :class:`CLIPImageEncoder`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from tedloc.configs.pseudo_labels import CLIP_ES_BACKGROUNDS
from tedloc.errors import ConfigError
from tedloc.pipeline.cam import minmax_normalize
from tedloc.pipeline.image_encoders import CLIPImageEncoder, ImageEncoder

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "a clean origami {}."
DEFAULT_BACKGROUNDS = CLIP_ES_BACKGROUNDS  # the list of CLIP-ES's code


class ClipES:
    """CLIP-ES maps for one encoder and one set of classes.

    Args:
        encoder: a ``clip:`` image encoder.
        class_names: label order.
        prompt: template with ``{}`` for the class (and background) name.
        backgrounds: background category names.
        refine: apply the attention-affinity refinement.
        attention_layers: last layers whose attention makes the affinity.
        refine_threshold: CAM level (0..1) of the patches the affinity propagates from.
        text_features: float (C + K, d) precomputed unit text embeddings (tests); None =
            encode the prompts with the model's own text tower.
    """

    def __init__(self, encoder: ImageEncoder, class_names: Sequence[str], *,
                 prompt: str = DEFAULT_PROMPT, backgrounds: Sequence[str] = DEFAULT_BACKGROUNDS,
                 refine: bool = True, attention_layers: int = 8, refine_threshold: float = 0.4,
                 text_features: torch.Tensor | None = None):
        if not isinstance(encoder, CLIPImageEncoder):
            raise ConfigError(f"method clip-es needs a clip:<model> image encoder, got {encoder.spec!r}")
        self.encoder = encoder
        self.num_classes = len(class_names)
        self.refine = refine
        self.attention_layers = max(1, attention_layers)
        self.refine_threshold = refine_threshold
        if text_features is None:
            from tedloc.pipeline.text_encoders import build_text_encoder

            names = [*class_names, *backgrounds]
            text = build_text_encoder(encoder.spec, device=str(encoder.device))
            text_features = torch.as_tensor(text.encode([prompt.replace("{}", n) for n in names]))
        self.text = torch.nn.functional.normalize(text_features.float(), dim=-1).to(encoder.device)
        if self.text.shape[0] != self.num_classes + len(backgrounds):
            raise ValueError("text_features must have one row per class and background")

    def maps(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float32 (B, h, w) maps in [0, 1] of the classes ``labels`` (int64 (B,))."""
        encoder = self.encoder
        layers = encoder.vision_model.encoder.layers
        captured: dict[str, torch.Tensor] = {}

        def make_leaf(module, args, kwargs):
            hidden = args[0].detach().requires_grad_(True)
            captured["input"] = hidden
            return (hidden, *args[1:]), kwargs

        handle = layers[-1].register_forward_pre_hook(make_leaf, with_kwargs=True)
        try:
            with torch.enable_grad():
                out = encoder.run_tower(pixels, output_attentions=self.refine)
                _, image_embedding = encoder.project_tokens(out.last_hidden_state)
                image_embedding = torch.nn.functional.normalize(image_embedding.float(), dim=-1)
                logits = encoder.logit_scale * image_embedding @ self.text.T
                score = logits.softmax(-1).gather(1, labels[:, None].to(logits.device)).sum()
                (grad,) = torch.autograd.grad(score, captured["input"])
        finally:
            handle.remove()
        activation = captured["input"].detach()[:, 1:].float()  # drop the class token
        grad = grad[:, 1:].float()
        weights = grad.mean(dim=1, keepdim=True)  # (B, 1, D)
        cam = torch.relu((weights * activation).sum(-1))  # (B, N)
        h, w = encoder.grid
        cam = minmax_normalize(cam.reshape(-1, h, w))
        if self.refine and out.attentions:
            cam = self._refine(cam, out.attentions)
        return cam.detach()

    def _refine(self, cam: torch.Tensor, attentions: Sequence[torch.Tensor]) -> torch.Tensor:
        b, h, w = cam.shape
        attn = torch.stack([a.detach().float() for a in attentions[-self.attention_layers:]])
        attn = attn.mean(dim=(0, 2))[:, 1:, 1:]  # (B, N, N) patches only
        for _ in range(3):  # Sinkhorn: balance rows and columns
            attn = attn / attn.sum(-1, keepdim=True).clamp_min(1e-12)
            attn = attn / attn.sum(-2, keepdim=True).clamp_min(1e-12)
        affinity = (attn + attn.transpose(1, 2)) / 2
        flat = cam.reshape(b, -1)
        seeds = flat * (flat >= self.refine_threshold)
        refined = torch.bmm(affinity, seeds[:, :, None])[:, :, 0]
        return minmax_normalize(refined.reshape(b, h, w))
