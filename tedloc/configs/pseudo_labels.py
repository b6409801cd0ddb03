"""Compute pseudo-label maps (CAM or CLIP-ES) of the training images with a frozen encoder.

Writes ``<workdir>/pseudo_labels/``: shards with each image's map of its class (``cam``),
a pseudo box, and optionally the cached encoder grid (``features``, ``features_flip``);
``cam_classifier.h5`` with the linear classifier on pooled features.
"""

from __future__ import annotations

import dataclasses

from tedloc.config import StageConfig, check_fields, option
from tedloc.configs.common import class_names_option, keep_freed_memory_option, metadata_option
from tedloc.errors import ConfigError

CLIP_ES_BACKGROUNDS = ("ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water",
                       "river", "sea", "railway", "railroad", "keyboard", "helmet", "cloud", "house",
                       "mountain", "ocean", "road", "rock", "street", "valley", "bridge", "sign")


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    """Configuration of the pseudo-labels stage."""

    # dataset/split enter the hash by content (ids + labels), so moving the data keeps results;
    # the rest do not change the shards (diagnostic only adds a manifest entry).
    NOT_HASHED = frozenset({"dataset", "metadata", "class_names", "split", "batch_size", "num_workers", "device", "num_shards",
                            "shard_index", "on_bad_image", "diagnostic", "diagnostic_images",
                            "diagnostic_workers", "cpu_keep_freed_memory",
                            "feature_compression", "forward_batch_size"})
    SECTION = "pseudo_labels"
    PATH_FIELDS = {"dataset": "dataset", "metadata": "file", "class_names": "file", "encoder": "encoder"}

    dataset: str = option("demo", "Dataset spec ('demo' or a wsolevaluation folder).")
    metadata: str = metadata_option()
    class_names: str = class_names_option()
    split: str = option("train", "Split whose images get pseudo-labels (the training split).")
    # Presets: efficientnet-lite0 (offline, 14x14 at 224 px), efficientnet-lite2 (offline,
    # 17x17 at 260 px), open_clip:EVA02-L-14/merged2b_s4b_b131k (the paper's EVA-CLIP ViT-L/14,
    # 16x16 at 224 px), open_clip:ViT-B-16/openai (CLIP-ES's own model); also
    # clip:<hub id or folder>, open_clip:<model>/<tag or weights file>,
    # open_clip:local-dir:<folder>, open_clip:hf-hub:<id>, tiny-cnn (tests).  A CNN spec with
    # '-fine' (efficientnet-lite0-fine, ...) packs its stride-8 stage into the grid: the same
    # 14x14 grid (c = 1392 + 160) for maps at 28x28 (tedloc/pipeline/fine_grid.py).
    encoder: str = option("efficientnet-lite0", "Frozen image encoder: efficientnet-lite0 (default), efficientnet-lite2, "
                          "either with '-fine' (stride-8 stage packed in: maps twice as fine), "
                          "open_clip:EVA02-L-14/merged2b_s4b_b131k (the paper's EVA-CLIP), open_clip:ViT-B-16/openai, "
                          "clip:<hub id or folder>, open_clip:<model>/<tag or file>, open_clip:local-dir:<folder>, tiny-cnn.")
    # 0 = the encoder's native size (224 Lite0, 260 Lite2, CLIP's image size, 64 tiny-cnn).
    input_size: int = option(0, "Square input size S in pixels (0 = the encoder's native size).")
    # auto = clip-es for CLIP encoders (clip:, open_clip:; the paper's module), cam otherwise.
    method: str = option("auto", "Map method: auto, cam (any encoder) or clip-es (clip: and open_clip: encoders).")
    # Relative threshold (of the map's max) for the pseudo box; [ours].  It is the level of the
    # object region of a map: train draws FG patches inside it (fg_region) and picks the map
    # threshold against these boxes; the CAM baseline's stored threshold is it too.  On the
    # demo's val split (Lite0, seed 0) 0.3 drew boxes around the CAM's halo (pseudo box mean IoU
    # with the train split's GT boxes 28 %) and TeD-Loc's stored threshold landed at 0.30 where
    # its oracle is 0.80 (Top-1 Loc 10.0 against 22.9 at the oracle); 0.6: 39 %, and the stored
    # threshold near the oracle (benchmarks/RESULTS.md).
    box_threshold: float = option(0.6, "Threshold of the map (relative to its max) for pseudo_box.")
    # Linear classifier of the CAM (L-BFGS on standardized pooled features).
    classifier_weight_decay: float = option(1e-3, "L2 penalty λ/2‖W‖² of the CAM classifier.")
    classifier_max_iter: int = option(200, "L-BFGS iterations of the CAM classifier.")
    classifier_holdout: float = option(0.1, "Share of training images held out to measure classifier accuracy.")
    classifier_refit_all: bool = option(True, "Refit the classifier on all images after measuring accuracy.")
    seed: int = option(0, "Seed of the held-out draw.")
    # CLIP-ES
    clip_es_prompt: str = option("a clean origami {}.", "CLIP-ES class prompt ('{}' = class name).")
    clip_es_backgrounds: tuple[str, ...] = option(CLIP_ES_BACKGROUNDS, "CLIP-ES background categories.")
    # The authors' method; off = plain Grad-CAM (their step before the refinement).
    clip_es_refine: bool = option(True, "CLIP-ES attention refinement (off = plain Grad-CAM).")
    clip_es_attention_layers: int = option(8, "Last blocks whose attention is averaged for the CLIP-ES refinement.")
    clip_es_refine_threshold: float = option(0.4, "CAM level (of its max) of the regions whose boxes mask the CLIP-ES refinement.")
    # The authors' softmax runs over the image's own class prompt and the backgrounds.
    clip_es_softmax_classes: str = option("image", "Prompts of the CLIP-ES softmax: image (its class + backgrounds, the authors') or all (every class + backgrounds).")
    # The authors run CLIP-ES on the image at its own size rounded up to the patch size, one
    # image per forward; "encoder" uses the encoder's S×S input, batched (faster).
    clip_es_resolution: str = option("image", "CLIP-ES input: image (its own size rounded to the patch, the authors') or encoder (S×S).")
    # Feature cache for training: auto = on while the estimate fits cache_budget_gb.  The
    # budget also decides whether uncached grids are staged on disk for a single encoder pass
    # (else the two-pass fallback: the maps step encodes the images again).
    cache_features: str = option("auto", "Cache the encoder grid per image: auto, on or off.")
    cache_budget_gb: float = option(50.0, "Largest feature cache 'auto' allows (GB, float16, uncompressed).")
    cache_flip_features: bool = option(True, "Also cache the grid of the horizontally flipped image.")
    # none: raw float16 (1.09 MB per Lite0 image with flips), written and read at disk speed.
    # lzf: 0.42 MB per image, at 4-5 ms of CPU per image to write and as much to read (each
    # training epoch that reads the cache); benchmarks/feature_compression.py, 2-core CPU.  The
    # encoder is far faster than that on a GPU, so lzf would bound the stage.  Same values.
    feature_compression: str = option("none", "HDF5 compression of the cached grids: none or lzf.")
    shard_size: int = option(256, "Images per shard file and per staging file (whole batches; about 280 MB of Lite0 grids with flips).")
    limit: int = option(0, "Use only N images of the split, balanced over classes, in file order (0 = all), e.g. for smoke runs.")
    on_bad_image: str = option("fail", "Unreadable image: fail (stop, naming it) or skip (record it in the manifest).")
    diagnostic: bool = option(True, "Report MaxBoxAccV2 of the maps against GT boxes, if any (diagnostic only).")
    # About 3.5 ms of CPU per image (100 thresholds of contour search at 224 px): all of a
    # 1.2M-image split would take over an hour; 2000 evenly spaced images take seconds.
    diagnostic_workers: int = option(0, "Processes scoring the diagnostic (0 = one per CPU core).")
    diagnostic_images: int = option(2000, "Images with GT boxes the diagnostic scores, evenly spaced in split order (0 = all).")
    batch_size: int = option(64, "Images per decoded batch.")
    # On a CPU small forwards run much faster per image: their activations stay under the
    # 32 MB that malloc recycles (cpu_keep_freed_memory) and in cache.  Lite0 with flips on a
    # 2-core CPU: 65-75 images/s at 2 (+2 flips), 49 at 4, 46 at 8 (29 at 8 without
    # cpu_keep_freed_memory).  On a GPU the whole batch is one forward.  Outputs do not depend
    # on it (beyond float rounding).
    forward_batch_size: int = option(0, "Images per encoder forward (0 = auto: 2 on CPU, batch_size on GPU).")
    cpu_keep_freed_memory: bool = keep_freed_memory_option()
    # auto: none on a CPU (each batch is decoded between forwards, in threads: worker
    # processes decoding beside a CPU forward slowed it by ~20% on 2 cores), 8 (at most one
    # per CPU) on an accelerator.  See tedloc/pipeline/image_loader.py.
    num_workers: int = option(-1, "Image decoding worker processes (-1 = auto, 0 = decode in the main process).")
    device: str = option("auto", "Device: cpu, cuda, cuda:N or auto.")
    # 0 / -1 = from torchrun's WORLD_SIZE / RANK, else a single process.
    num_shards: int = option(0, "Processes splitting the images (0 = WORLD_SIZE or 1).")
    shard_index: int = option(-1, "This process's part, 0..num_shards-1 (-1 = RANK or 0).")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(message: str) -> None:
            raise ConfigError(f"pseudo_labels: {message}")

        check_fields(self, "pseudo_labels")
        if self.clip_es_softmax_classes not in ("image", "all"):
            bad(f"clip_es_softmax_classes must be image or all, got {self.clip_es_softmax_classes!r}")
        if self.clip_es_resolution not in ("image", "encoder"):
            bad(f"clip_es_resolution must be image or encoder, got {self.clip_es_resolution!r}")
        if self.method not in ("auto", "cam", "clip-es"):
            bad(f"method must be auto, cam or clip-es, got {self.method!r}")
        if self.cache_features not in ("auto", "on", "off"):
            bad(f"cache_features must be auto, on or off, got {self.cache_features!r}")
        if self.feature_compression not in ("none", "lzf"):
            bad(f"feature_compression must be none or lzf, got {self.feature_compression!r}")
        if self.on_bad_image not in ("fail", "skip"):
            bad(f"on_bad_image must be fail or skip, got {self.on_bad_image!r}")
        if not 0 <= self.box_threshold < 1:
            bad(f"box_threshold must be in [0, 1), got {self.box_threshold}")
        if not 0 <= self.classifier_holdout < 1:
            bad(f"classifier_holdout must be in [0, 1), got {self.classifier_holdout}")
        if not 0 <= self.clip_es_refine_threshold <= 1:
            bad(f"clip_es_refine_threshold must be in [0, 1], got {self.clip_es_refine_threshold}")
        for name in ("classifier_weight_decay", "cache_budget_gb"):
            if getattr(self, name) < 0:
                bad(f"{name} must not be negative, got {getattr(self, name)}")
        if "{}" not in self.clip_es_prompt:
            bad(f"clip_es_prompt {self.clip_es_prompt!r} has no '{{}}'")
        for name in ("batch_size", "shard_size", "classifier_max_iter", "clip_es_attention_layers"):
            if getattr(self, name) < 1:
                bad(f"{name} must be at least 1, got {getattr(self, name)}")
        if min(self.limit, self.input_size, self.forward_batch_size, self.diagnostic_images,
               self.diagnostic_workers) < 0:
            bad("limit, input_size, forward_batch_size, diagnostic_images and diagnostic_workers "
                "must not be negative")
        if self.num_workers < -1:
            bad(f"num_workers must be -1 (auto) or at least 0, got {self.num_workers}")
        if self.num_shards < 0 or (self.num_shards and not -1 <= self.shard_index < self.num_shards):
            bad(f"shard_index {self.shard_index} is outside 0..{self.num_shards - 1}")
