"""CLIP-ES pseudo-label maps (Lin et al., CVPR 2023) as its authors run them.

METHOD.md, "Pseudo-labels" [paper]: Grad-CAM of the ground-truth class's prompt
("a clean origami {}.") against background prompts, refined by the model's attention.
Every step below is a function whose docstring names the part of the authors' code
(linyq2117/CLIP-ES: ``generate_cams_voc12.py``, ``clip/model.py``, ``utils.py``,
``pytorch_grad_cam/``) it follows.  For an image of class y:

1. :func:`own_resolution`, :func:`resize_bicubic`: the image at its own size rounded up to
   a multiple of the patch size p (position embeddings resized to its grid, see
   ``tedloc.pipeline.vit_towers``), CLIP's normalization.
2. The tower runs with the output of its last block's ``norm1`` made a leaf tensor (the
   authors' Grad-CAM target layer, ``resblocks[-1].ln_1``), recording every block's attention.
3. :func:`image_embedding`: the mean of the projected patch tokens.
4. :func:`class_probability`: ``softmax(logit_scale · cos(e, t))`` over the image's own class
   prompt plus the background prompts (:func:`softmax_rows`); the score is y's probability.
5. :func:`gradcam` and :func:`scale_cam`: channel weights = mean gradient over the patches,
   map = ReLU(Σ_c w_c A_c), scaled to [0, 1] (twice, as their Grad-CAM does).
6. :func:`mean_attention`: attention among patch tokens, mean over heads and the last 8 blocks.
7. :func:`box_mask`: the boxes of every region of the CAM above 0.4 of its max.
8. :func:`sinkhorn` (3 rounds, columns then rows), :func:`symmetrize`, :func:`square`.
9. :func:`refine`: the transition matrix with its columns outside the boxes zeroed, times
   the CAM; :func:`scale_cam` again.

Departures, each a field of the pseudo-labels config whose default is the authors' choice:
``softmax_classes`` ("image": their prompt set; "all": every class), ``resolution`` ("image":
their input; "encoder": the encoder's S×S, batched), ``refine`` (False: plain Grad-CAM),
``attention_layers`` (8), ``refine_threshold`` (0.4).  One change is required by the
artifact: the authors resize the refined map to the image; here it is resized to the
encoder's grid (area when shrinking, bilinear when enlarging) and min–max normalized
(:func:`to_grid`), the pipeline's convention for maps.

Pure computation; the encoder must have a CLIP tower (``clip:`` or ``open_clip:``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from tedloc.configs.pseudo_labels import CLIP_ES_BACKGROUNDS
from tedloc.errors import ConfigError
from tedloc.pipeline.boxes import boxes_from_map
from tedloc.pipeline.cam import minmax_normalize
from tedloc.pipeline.image_encoders import ImageEncoder, is_clip_encoder

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "a clean origami {}."
DEFAULT_BACKGROUNDS = CLIP_ES_BACKGROUNDS  # BACKGROUND_CATEGORY of their clip_text.py
SOFTMAX_CLASSES = ("image", "all")
RESOLUTIONS = ("image", "encoder")
#: ``1e-7`` of pytorch_grad_cam's ``scale_cam_image``.
_SCALE_EPS = 1e-7


# ----------------------------------------------------------------------------- steps

def own_resolution(height: int, width: int, patch: int, scale: float = 1.0) -> tuple[int, int]:
    """(H', W'): each side times ``scale``, rounded up to a multiple of ``patch``
    (``generate_cams_voc12.py``, ``img_ms_and_flip``: ``ceil(scale·H / 16) · 16``)."""
    return (int(math.ceil(scale * height / patch) * patch), int(math.ceil(scale * width / patch) * patch))


def resize_bicubic(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> uint8 (H', W', 3) with PIL's bicubic filter
    (``_transform_resize``: ``Resize((h, w), interpolation=BICUBIC)`` on the PIL image)."""
    height, width = size
    return np.array(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def softmax_rows(label: int, num_classes: int, num_backgrounds: int, mode: str = "image"
                 ) -> tuple[list[int], int]:
    """Rows of the text matrix (classes first, then backgrounds) the softmax runs over, and
    the position of ``label`` among them.  ``"image"``: the image's class and every
    background (``perform``: ``text_features_temp = cat([fg_text_features[label_id_list],
    bg_text_features])``, target ``label_list.index(label)``); ``"all"``: every class."""
    backgrounds = list(range(num_classes, num_classes + num_backgrounds))
    if mode == "image":
        return [int(label), *backgrounds], 0
    if mode == "all":
        return [*range(num_classes), *backgrounds], int(label)
    raise ValueError(f"softmax mode must be one of {SOFTMAX_CLASSES}, got {mode!r}")


def image_embedding(projected_tokens: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """(B, P + N, d) tokens in the joint space -> (B, d) mean of the patch tokens
    (``clip/model.py``, ``forward_last_layer``: ``ln_post``, ``mean(x[:, 1:])``, ``@ proj``;
    the projection is linear, so projecting first gives the same vector)."""
    return projected_tokens[:, num_prefix:].mean(dim=1)


def class_probability(embedding: torch.Tensor, text: torch.Tensor, rows: torch.Tensor,
                      target: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """(B,) probability of each image's target among its rows.

    Args:
        embedding: float (B, d) image embeddings (normalized here).
        text: float (T, d) unit text embeddings.
        rows: int64 (B, R) rows of ``text`` per image (:func:`softmax_rows`).
        target: int64 (B,) position of the class in ``rows``.
        logit_scale: CLIP's ``exp(logit_scale)``.

    ``forward_last_layer``: ``softmax(logit_scale · e/‖e‖ · tᵀ)``; ``ClipOutputTarget``.
    """
    unit = torch.nn.functional.normalize(embedding, dim=-1)
    logits = logit_scale * torch.einsum("bd,brd->br", unit, text[rows])
    return logits.softmax(dim=-1).gather(1, target[:, None])[:, 0]


def gradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Raw Grad-CAM (B, N) of patch activations and gradients float (B, N, D): channel
    weights = the gradient's mean over the patches, map = Σ_c w_c A_c (``GradCAM.
    get_cam_weights``: ``np.mean(grads, axis=(2, 3))``; ``BaseCAM.get_cam_image``)."""
    weights = gradients.mean(dim=1)  # (B, D)
    return torch.einsum("bnd,bd->bn", activations, weights)


def scale_cam(maps: torch.Tensor) -> torch.Tensor:
    """Per map (first axis): ``(x - min) / (1e-7 + max(x - min))`` (``scale_cam_image``)."""
    flat = maps.flatten(1)
    shifted = flat - flat.min(dim=1, keepdim=True).values
    return (shifted / (_SCALE_EPS + shifted.max(dim=1, keepdim=True).values)).reshape(maps.shape)


def gradcam_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """(B, N) in [0, 1]: ReLU then scale per layer, and again after averaging the (single)
    target layer (``BaseCAM.compute_cam_per_layer``, ``aggregate_multi_layers``)."""
    cam = scale_cam(torch.relu(gradcam(activations, gradients)))
    return scale_cam(torch.relu(cam))


def mean_attention(attentions: Sequence[torch.Tensor], num_prefix: int, layers: int = 8) -> torch.Tensor:
    """(B, N, N) attention among patch tokens: each block's (B, heads, L, L) probabilities
    averaged over heads (``nn.MultiheadAttention``'s default), prefix tokens dropped, mean of
    the last ``layers`` blocks (``perform``: ``attn_weight[:, 1:, 1:]``, ``stack(...)[-8:]``,
    ``mean(dim=0)``)."""
    chosen = [a.float().mean(dim=1)[:, num_prefix:, num_prefix:] for a in attentions[-layers:]]
    return torch.stack(chosen).mean(dim=0)


def box_mask(cam: np.ndarray, threshold: float = 0.4) -> np.ndarray:
    """float32 (h, w) mask of the boxes of every region of ``cam`` (h, w) in [0, 1] above
    ``threshold`` of its max (``utils.scoremap2bbox(..., multi_contour_eval=True)``, the
    wsolevaluation box code), each set as ``mask[y0:y1, x0:x1] = 1`` (``perform``: the end
    row and column are excluded, as in their code)."""
    mask = np.zeros(cam.shape, np.float32)
    for x0, y0, x1, y1 in boxes_from_map(cam, threshold, multi_contour=True):
        mask[y0:y1, x0:x1] = 1.0
    return mask


def sinkhorn(affinity: torch.Tensor, rounds: int = 3) -> torch.Tensor:
    """(B, N, N) -> each round divides by the column sums, then by the row sums (``perform``:
    ``trans_mat / sum(dim=0)``, ``/ sum(dim=1)``, then twice more)."""
    out = affinity
    for _ in range(rounds):
        out = out / out.sum(dim=-2, keepdim=True)
        out = out / out.sum(dim=-1, keepdim=True)
    return out


def symmetrize(matrix: torch.Tensor) -> torch.Tensor:
    """(B, N, N) -> (M + Mᵀ) / 2 (``perform``)."""
    return (matrix + matrix.transpose(-1, -2)) / 2


def square(matrix: torch.Tensor) -> torch.Tensor:
    """(B, N, N) -> M @ M, the transition matrix raised once (``perform``: ``for _ in
    range(1): trans_mat = matmul(trans_mat, trans_mat)``)."""
    return matrix @ matrix


def refine(cam: torch.Tensor, transition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N) refined CAM = (T ⊙ 1·maskᵀ) @ cam: the columns of T outside the boxes zeroed,
    so only CAM values inside the boxes propagate (``perform``: ``trans_mat * aff_mask`` with
    ``aff_mask`` of shape (1, n), then ``matmul(trans_mat, cam_to_refine)``)."""
    return torch.einsum("bij,bj->bi", transition * mask[:, None, :], cam)


def to_grid(maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """float32 (B, h', w') -> (B, h, w) min–max normalized: area interpolation when
    shrinking, bilinear when enlarging (replaces ``scale_cam_image(cam, (ori_w, ori_h))``,
    which resizes to the image: the artifact keeps one value per patch of the encoder)."""
    h, w = grid
    out = np.empty((len(maps), h, w), np.float32)
    for i, cam in enumerate(maps):
        if cam.shape == (h, w):
            out[i] = cam
            continue
        shrink = cam.shape[0] * cam.shape[1] > h * w
        out[i] = cv2.resize(cam, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return minmax_normalize(torch.from_numpy(out)).numpy()


# ----------------------------------------------------------------------------- the method

class ClipES:
    """CLIP-ES maps for one CLIP encoder and one set of classes.

    Args:
        encoder: a ``clip:`` or ``open_clip:`` image encoder (it has a ``tower()``).
        class_names: label order.
        prompt: template with ``{}`` for the class (and background) name.
        backgrounds: background category names.
        refine: apply the attention refinement (steps 6-9).
        attention_layers: last blocks whose attention is averaged.
        refine_threshold: CAM level (of its max) of the regions whose boxes mask the refinement.
        softmax_classes: ``"image"`` (the image's class + backgrounds) or ``"all"``.
        resolution: ``"image"`` (its own size rounded to the patch) or ``"encoder"`` (S×S).
        text_features: float (C + K, d) text embeddings (tests); None = encode the prompts
            with the model's own text tower.
    """

    def __init__(self, encoder: ImageEncoder, class_names: Sequence[str], *,
                 prompt: str = DEFAULT_PROMPT, backgrounds: Sequence[str] = DEFAULT_BACKGROUNDS,
                 refine: bool = True, attention_layers: int = 8, refine_threshold: float = 0.4,
                 softmax_classes: str = "image", resolution: str = "image",
                 text_features: torch.Tensor | None = None):
        if not is_clip_encoder(encoder):
            raise ConfigError(f"method clip-es needs a CLIP image encoder (clip:<model> or open_clip:<model>), "
                              f"got {encoder.spec!r}")
        if softmax_classes not in SOFTMAX_CLASSES or resolution not in RESOLUTIONS:
            raise ConfigError(f"clip-es: softmax_classes must be one of {SOFTMAX_CLASSES} and resolution one of "
                              f"{RESOLUTIONS}, got {softmax_classes!r}, {resolution!r}")
        self.encoder = encoder
        self.tower = encoder.tower()
        self.num_classes = len(class_names)
        self.num_backgrounds = len(backgrounds)
        self.refine = refine
        self.attention_layers = max(1, attention_layers)
        self.refine_threshold = refine_threshold
        self.softmax_classes = softmax_classes
        self.resolution = resolution
        if text_features is None:
            from tedloc.pipeline.text_encoders import build_text_encoder, fill_template

            text = build_text_encoder(encoder.spec, device=str(encoder.device))
            names = [*class_names, *backgrounds]
            text_features = torch.as_tensor(text.encode([fill_template(prompt, n) for n in names]))
        self.text = torch.nn.functional.normalize(text_features.float(), dim=-1).to(encoder.device)
        if self.text.shape[0] != self.num_classes + self.num_backgrounds:
            raise ValueError("text_features must have one row per class and background")

    @classmethod
    def from_config(cls, encoder: ImageEncoder, class_names: Sequence[str], config) -> ClipES:
        """Built from the ``clip_es_*`` fields of a pseudo-labels ``Config``."""
        return cls(encoder, class_names, prompt=config.clip_es_prompt, backgrounds=config.clip_es_backgrounds,
                   refine=config.clip_es_refine, attention_layers=config.clip_es_attention_layers,
                   refine_threshold=config.clip_es_refine_threshold,
                   softmax_classes=config.clip_es_softmax_classes, resolution=config.clip_es_resolution)

    def grid_maps(self, pixels: torch.Tensor, labels: torch.Tensor,
                  originals: Sequence[np.ndarray] | None = None) -> torch.Tensor:
        """float32 (B, h, w) maps in [0, 1] on the encoder's grid, of the classes ``labels``
        (int64 (B,)).  ``pixels``: uint8 (B, S, S, 3), the images resized for the encoder;
        ``originals``: the same images, uint8 (H, W, 3) at their own sizes (needed, and
        used, when ``resolution == "image"``)."""
        if self.resolution == "encoder":
            maps = self.maps(self.encoder.normalize(pixels), labels)
        else:
            if originals is None or len(originals) != len(labels):
                raise ValueError("resolution 'image' needs the original images")
            # one image per forward: each has its own grid
            maps = [self.maps(self._own_size_pixels(image), labels[i:i + 1]) for i, image in enumerate(originals)]
            return torch.from_numpy(np.concatenate([to_grid(m.numpy(), self.encoder.grid) for m in maps]))
        return torch.from_numpy(to_grid(maps.numpy(), self.encoder.grid))

    def _own_size_pixels(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> normalized float (1, 3, H', W') at its own size (step 1)."""
        size = own_resolution(image.shape[0], image.shape[1], self.tower.patch_size)
        return self.encoder.normalize(resize_bicubic(image, size)[None])

    def maps(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float32 (B, h', w') CPU maps in [0, 1] at the grid of normalized ``pixels``
        (B, 3, H', W'), of the classes ``labels`` (int64 (B,))."""
        tower = self.tower
        grid = tower.grid_of(pixels)
        captured: list[torch.Tensor] = []

        def make_leaf(module, args, output):
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf

        labels = torch.as_tensor(labels).to(self.text.device)
        chosen = [softmax_rows(int(y), self.num_classes, self.num_backgrounds, self.softmax_classes)
                  for y in labels.tolist()]
        rows = torch.tensor([c[0] for c in chosen], device=self.text.device)
        target = torch.tensor([c[1] for c in chosen], device=self.text.device)
        handle = tower.last_norm1.register_forward_hook(make_leaf)
        try:
            with torch.enable_grad():
                tokens, attentions = tower.run(pixels, attention=self.attention_layers if self.refine else 0)
                embedding = image_embedding(tower.head(tokens).float(), tower.num_prefix)
                score = class_probability(embedding, self.text, rows, target, self.encoder.logit_scale).sum()
                (grad,) = torch.autograd.grad(score, captured[-1])
        finally:
            handle.remove()
        p = tower.num_prefix
        cam = gradcam_map(captured[-1].detach()[:, p:].float(), grad[:, p:].float())  # (B, N)
        if self.refine:
            transition = square(symmetrize(sinkhorn(mean_attention(attentions, p, self.attention_layers))))
            masks = np.stack([box_mask(c.reshape(grid).cpu().numpy(), self.refine_threshold) for c in cam])
            mask = torch.from_numpy(masks.reshape(len(cam), -1)).to(cam.device)
            cam = scale_cam(refine(cam, transition, mask))
        return cam.reshape(-1, *grid).detach().float().cpu()
