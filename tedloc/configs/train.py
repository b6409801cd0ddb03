"""Train the TeD-Loc head (decoder D, patch classifier g, aggregation Σ) on frozen features.

Reads ``<workdir>/text_embed`` (the frozen anchors) and ``<workdir>/pseudo_labels`` (CAMs,
optionally cached encoder features); writes ``<workdir>/train/``: ``last.pt`` and
``best.pt`` every epoch, ``train_log.csv``, then ``model.pt`` and the manifest.

Defaults are chosen so that the demo (~560 training images of 8 classes, 14×14 grids of
1392 channels, cached features) trains in well under a minute on two CPU cores.
"""

from __future__ import annotations

import dataclasses

from tedloc.config import StageConfig, check_fields, option
from tedloc.errors import ConfigError

DECODERS = ("conv", "transformer", "linear")
PATCH_HEADS = ("mlp", "linear")
FEATURE_SOURCES = ("auto", "cache", "encoder")
BEST_CRITERIA = ("loss",)
THRESHOLD_CRITERIA = ("mean_iou", "iou50")


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    """Configuration of the train stage."""

    # Resources: they change speed, not what is learned (up to float rounding).
    NOT_HASHED = frozenset({"num_workers", "device", "amp", "cache_memory_mb", "progress"})
    SECTION = "train"

    # --- decoder D: frozen grid (h, w, c) -> patch embeddings (h, w, d) ------------------
    # conv: 1×1 projection, `depth` residual 3×3 conv blocks, linear to d (fast on CPU);
    # transformer: 1×1 projection, `depth` pre-norm transformer blocks with a depthwise-conv
    # position encoding (grid-size agnostic); linear: one 1×1 map to d (no context).
    decoder: str = option("conv", "Decoder type: conv, transformer or linear.")
    width: int = option(128, "Decoder width (channels of its hidden layers).")
    depth: int = option(2, "Number of decoder blocks (3×3 conv or transformer).")
    heads: int = option(4, "Attention heads of the transformer decoder (width must be divisible by it).")
    # Encoders with a finer stage packed into the grid (the '-fine' specs, e.g.
    # efficientnet-lite0-fine: maps at 28×28 instead of 14×14): one more residual 3×3 conv
    # block at the fine grid, on the decoder's output upsampled ×2 plus the fine stage.
    fine_width: int = option(64, "Width of the decoder's block at the fine grid ('-fine' encoders only).")

    # --- patch classifier g: z_p -> FG/BG logit --------------------------------------------
    patch_head: str = option("mlp", "Patch classifier g: mlp (one hidden layer) or linear.")
    patch_hidden: int = option(64, "Hidden units of the mlp patch classifier.")

    # --- losses ----------------------------------------------------------------------------
    # Temperature of cos(z, t_c)/τ in L_KD and of the class logits s_c.
    tau: float = option(0.07, "Temperature τ of the cosine logits (L_KD and class logits).")
    lambda_kd: float = option(1.0, "Weight of L_KD, text distillation on FG patches (0 = off).")
    lambda_p: float = option(1.0, "Weight of P_CL, FG/BG patch classification (0 = off).")
    lambda_i: float = option(1.0, "Weight of I_CL, image classification from Σ (0 = off).")

    # --- FG/BG patch sampling from the pseudo-label maps (redrawn every epoch) -------------
    n_fg: int = option(4, "FG patches sampled per image and step.")
    n_bg: int = option(4, "BG patches sampled per image and step.")
    # 0.05 of Lite0's 196 patches: at most 10 FG candidates (within fg_region); 0.2 (40) put
    # most of a small object's candidates on its surroundings (val MaxBoxAccV2 by size: RESULTS.md).
    p_fg: float = option(0.05, "FG patches are drawn among this top fraction of map values (∝ map).")
    p_bg: float = option(0.3, "BG patches are drawn among this bottom fraction of map values (∝ 1 − map).")
    # The map's own region instead of a fixed share of the grid: with p_fg = 0.2 a Lite0 map
    # offers its top 40 of 196 patches as FG whatever the object's size, most of them around
    # a small object.  The region is the one whose box is the pseudo box, against which the
    # map threshold is chosen: FG patches and threshold then agree on what the object is.
    fg_region: bool = option(True, "FG candidates: the pseudo-label map's region above the pseudo-labels' "
                                    "box_threshold (at most the top p_fg); off: the top p_fg alone.")
    # BG candidates well below the region (the bottom p_bg of a map can reach a large object).
    bg_level: float = option(0.2, "BG candidates: patches with pseudo-label value ≤ this (at most the bottom p_bg); 1 = the bottom p_bg alone.")

    # --- data ---------------------------------------------------------------------------------
    # auto: cached features when the pseudo-labels hold them, else the encoder on the fly.
    features: str = option("auto", "Feature source: auto, cache (pseudo-label shards) or encoder (on the fly).")
    # Flipped images use the cached `features_flip` (a flipped grid is not the grid of a flipped image).
    hflip: float = option(0.5, "Probability of a horizontal flip per image and epoch.")

    # --- optimization ---------------------------------------------------------------------------
    epochs: int = option(10, "Training epochs.")
    batch_size: int = option(32, "Images per step (per process under DDP).")
    lr: float = option(1e-3, "Peak learning rate of AdamW.")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    warmup_epochs: float = option(1.0, "Linear warm-up length in epochs, then cosine decay to 0.")
    seed: int = option(0, "Seed of the head's initialization, the shuffling, flips and patch sampling.")

    # --- checkpoint selection and map threshold (no GT boxes) --------------------------------
    # loss: the epoch with the lowest mean total training loss becomes best.pt.
    best_criterion: str = option("loss", "How best.pt is chosen without GT: loss (lowest mean training loss).")
    # The threshold is picked on training images against their pseudo boxes, never GT.
    threshold_criterion: str = option(
        "mean_iou", "Map threshold choice vs. pseudo boxes: mean_iou (max mean IoU) or iou50 (max share IoU≥0.5).")
    threshold_step: float = option(0.01, "Step of the threshold grid 0, step, ..., < 1.")
    threshold_size: int = option(224, "Side at which maps and pseudo boxes are compared (evaluate's eval_size).")
    threshold_normalize: bool = option(True, "Min–max normalize upsampled maps before thresholding (as evaluate).")
    threshold_images: int = option(256, "Training images used to pick the threshold (0 = all).")
    # The head is convolutional: fed a larger image, it reads a finer grid (28x28 for Lite0 at
    # 448), where a small object covers four times as many patches.  Training stays at the
    # pseudo-labels' size (the cached grids); the threshold is picked on maps at this size.
    inference_scale: int = option(
        2, "Encoder input at inference (evaluate, predict) = this × the pseudo-labels' input size; the stored "
           "threshold is picked on training maps at that size (1 = the training size).")

    # --- resources (no effect on what is learned) -------------------------------------------
    num_workers: int = option(2, "Worker processes reading shards or decoding images (0 = main process).")
    # cpu | cuda | cuda:N | auto
    device: str = option("auto", "Device: cpu, cuda, cuda:N or auto (CUDA when available).")
    amp: bool = option(True, "bf16 autocast on CUDA (ignored on CPU).")
    # Above this the features are read from the shards per batch.
    cache_memory_mb: int = option(4096, "Load cached features into memory when they fit in this many MB.")
    progress: bool = option(True, "Show progress per epoch (a bar on a terminal, else a log line every 10 %).")

    def __post_init__(self) -> None:
        self.validate()

    def inference_input_size(self, training_size: int) -> int:
        """The encoder's input size at inference for a model trained at ``training_size``."""
        return training_size * self.inference_scale

    def validate(self) -> None:
        check_fields(self, "train")
        choices = {"decoder": DECODERS, "patch_head": PATCH_HEADS, "features": FEATURE_SOURCES,
                   "best_criterion": BEST_CRITERIA, "threshold_criterion": THRESHOLD_CRITERIA}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("width", "heads", "patch_hidden", "epochs", "batch_size", "threshold_size", "fine_width",
                     "inference_scale"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train: {name} must be at least 1, got {getattr(self, name)}")
        for name in ("depth", "n_fg", "n_bg", "num_workers", "cache_memory_mb", "threshold_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train: {name} must not be negative, got {getattr(self, name)}")
        if self.decoder == "transformer" and self.width % self.heads:
            raise ConfigError(f"train: width {self.width} is not divisible by heads {self.heads}")
        for name in ("p_fg", "p_bg"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"train: {name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= self.bg_level <= 1:
            raise ConfigError(f"train: bg_level must be in [0, 1], got {self.bg_level}")
        if not 0 <= self.hflip <= 1:
            raise ConfigError(f"train: hflip must be in [0, 1], got {self.hflip}")
        if self.tau <= 0:
            raise ConfigError(f"train: tau must be positive, got {self.tau}")
        for name in ("lambda_kd", "lambda_p", "lambda_i"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train: {name} must not be negative, got {getattr(self, name)}")
        if self.lambda_kd == self.lambda_p == self.lambda_i == 0:
            raise ConfigError("train: every loss weight is 0; nothing would be learned")
        if self.lr <= 0:
            raise ConfigError(f"train: lr must be positive, got {self.lr}")
        for name in ("weight_decay", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train: {name} must not be negative, got {getattr(self, name)}")
        if not 0 < self.threshold_step < 1:
            raise ConfigError(f"train: threshold_step must be in (0, 1), got {self.threshold_step}")
