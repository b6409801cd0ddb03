"""Evaluate the trained localizer on a labelled split with the field's metrics (wsolevaluation).

Writes ``<workdir>/evaluate/<name>/`` (one folder per named evaluation): shards of the
224×224 maps (TeD-Loc and the CAM baseline), ``results.json`` / ``results.md``
(MaxBoxAccV1/V2, PxAP, Top-1/Top-5/GT-known Loc at the stored and the oracle threshold,
Top-1/Top-5 Cls; overall and per class), ``predictions.jsonl``, ``overlays/*.png``,
``boxacc_curve.png`` and ``index.html``.

Every evaluation convention is a field below; the defaults are wsolevaluation's (Choe et
al., CVPR 2020), so that numbers are comparable with published ones.
"""

from __future__ import annotations

import dataclasses

from tedloc.config import StageConfig, check_fields, option
from tedloc.configs.common import class_names_option, keep_freed_memory_option, metadata_option
from tedloc.errors import ConfigError

ON_BAD_IMAGE = ("fail", "skip")


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    """Configuration of the evaluate stage."""

    # The dataset enters the identity by content (ids, labels, boxes, masks: see
    # stages/evaluate.py), so moving its folder keeps the results.  The maps do not depend
    # on the rest: resources, outputs, and report-only choices (groups, the centre prior),
    # which the manifest records; a finished run asked for other values rewrites its
    # report from the shards.
    NOT_HASHED = frozenset({"dataset", "metadata", "class_names", "name", "batch_size", "num_workers", "device",
                            "shard_size", "cpu_keep_freed_memory", "num_overlays", "html", "html_max_images",
                            "html_image_size", "export_scoremaps", "box_fraction_bins", "centre_prior",
                            "centre_prior_sigma"})
    #: The NOT_HASHED fields that change results.json (compared with the manifest's).
    REPORT_FIELDS = ("box_fraction_bins", "centre_prior", "centre_prior_sigma")
    SECTION = "evaluate"
    PATH_FIELDS = {"dataset": "dataset", "metadata": "file", "class_names": "file"}

    # --- what is evaluated -------------------------------------------------------------
    # '' = the dataset recorded in the pseudo-labels manifest (the one trained on).
    dataset: str = option("", "Dataset spec ('demo' or a folder); '' = the one in the pseudo-labels manifest.")
    metadata: str = metadata_option()
    class_names: str = class_names_option()
    # The split scored; wsolevaluation's 'test' is the held-out one.
    split: str = option("test", "Split to evaluate.")
    # Where the results go: <workdir>/evaluate/<name>/.  A name per dataset and split keeps
    # every evaluation of a workdir; the same name resumes (or, with other inputs, refuses).
    name: str = option("", "Name of the evaluation: results in <workdir>/evaluate/<NAME>/ ('' = <dataset>-<split>).")
    # Any dataset with boxes or masks, whatever its classes: the map is scored alone (the
    # label metrics and the CAM baseline need the model's classes and are left out).
    class_agnostic: bool = option(
        False, "Score the class-agnostic map on a dataset of any classes (MaxBoxAcc, GT-known Loc, PxAP only).")
    # Checkpoint file inside <workdir>/train/ (model.pt is the final model).
    checkpoint: str = option("model.pt", "Checkpoint file name inside <workdir>/train/.")
    # 0 = every image of the split; N = the first N in index order (smoke runs).
    limit: int = option(0, "Evaluate only N images of the split, balanced over classes, in file order (0 = all).")
    # fail: stop at the first unreadable image, naming it; skip: record it and go on.
    on_bad_image: str = option("fail", "What to do with an unreadable image: fail or skip.")
    # Adds the CAM of the pseudo-label classifier for the GT class as a labelled baseline.
    baseline: bool = option(True, "Also evaluate the CAM baseline (GT-known map of the pseudo-label classifier).")
    # The CAM baseline has no threshold of its own; None = the pseudo-label box threshold.
    baseline_threshold: float | None = option(
        None, "Non-oracle threshold of the CAM baseline (default: the pseudo-labels' box threshold, else 0.5).")
    # The CAM is what the pseudo-labels are made of, at their size; at the model's (larger)
    # inference size it is the like-for-like comparison.
    baseline_input_size: int = option(
        0, "Encoder input size of the CAM baseline (0 = the pseudo-labels' input size).")

    # --- wsolevaluation conventions --------------------------------------------------
    # Maps and boxes are compared at eval_size×eval_size; GT boxes are rescaled to it.
    eval_size: int = option(224, "Side of the square on which maps and boxes are compared (wsolevaluation: 224).")
    # Threshold grid τ = 0, i, 2i, ... < 1 (cam_curve_interval; 0.01 gives 0 .. 0.99).
    cam_curve_interval: float = option(0.01, "Step of the map-threshold grid (wsolevaluation: 0.01).")
    # IoU thresholds δ (percent) averaged by MaxBoxAccV2.
    iou_thresholds: tuple[int, ...] = option((30, 50, 70), "IoU thresholds (%) averaged by MaxBoxAccV2.")
    # MaxBoxAccV1 is at one δ with the largest contour.
    v1_iou: int = option(50, "IoU threshold (%) of MaxBoxAccV1 (largest contour).")
    # δ of Top-1 / Top-5 / GT-known Loc.
    loc_iou: int = option(50, "IoU threshold (%) of Top-1, Top-5 and GT-known Loc.")
    # Loc metrics with the largest contour (the classic single box) or every contour.
    loc_multi_contour: bool = option(False, "Top-1/Top-5/GT-known Loc use every contour instead of the largest.")
    # Min-max normalize each upsampled map (wsolevaluation's normalize_scoremap).
    normalize_maps: bool = option(True, "Min-max normalize each map after bicubic upsampling (constant -> zeros).")

    # --- results by group and the centre prior (report only: the maps do not change) ----
    # Images grouped by the share of the image's area its largest GT box covers (original
    # pixels, "+1" areas); bins [0, e1), [e1, e2), ..., [en, ∞), lower edge included.  The
    # defaults: small (< 5% of the image), medium, large and dominant (≥ 30%) objects.
    box_fraction_bins: tuple[float, ...] = option(
        (0.05, 0.15, 0.30), "Edges of the by-box-fraction groups (largest GT box area / image area).")
    # A centred Gaussian as a method without learning: what a centred guess already scores.
    centre_prior: bool = option(True, "Also evaluate the centre prior (a centred Gaussian map, no learning).")
    # σ in units of the side.  At 224 px, 0.25 makes the 100 thresholds give 82 distinct
    # centred boxes, from 15 px (τ = 0.99) to the whole image (τ ≤ 0.11), so every object
    # size has a box near it; σ = 0.1 never reaches boxes above 45% of the image, σ = 0.4
    # spends a third of the thresholds on the whole image (the range 0.18-0.27 is as good).
    centre_prior_sigma: float = option(0.25, "Standard deviation of the centre prior, in units of the image side.")

    # --- outputs -----------------------------------------------------------------------
    # Overlays (map, predicted box green, GT box red) of a sample spread over the split.
    num_overlays: int = option(16, "Number of overlay PNGs written to evaluate/<name>/overlays/.")
    # One float .npy per image id under evaluate/<name>/scoremaps/ (wsolevaluation's layout).
    export_scoremaps: bool = option(False, "Also write each map as scoremaps/<image id>.npy (wsolevaluation layout).")

    # A self-contained page (no server, no network) to browse the results and every image.
    html: bool = option(True, "Write index.html: the results, the curves and every image's map with its boxes.")
    # About 10-15 kB per image at 240 px; a larger split shows this many, spread over the
    # IoU ranking (worst and best included).
    html_max_images: int = option(2000, "Images shown in index.html at most (beyond: spread over the IoU ranking).")
    html_image_size: int = option(240, "Long side of each picture in index.html, in pixels.")

    # --- resources (no effect on the numbers) -----------------------------------------
    batch_size: int = option(32, "Images per forward pass.")
    num_workers: int = option(2, "Image-decoding worker processes (0 = in the main process).")
    cpu_keep_freed_memory: bool = keep_freed_memory_option()
    shard_size: int = option(256, "Images per result shard (the unit of resume).")
    # cpu | cuda | cuda:N | auto
    device: str = option("auto", "Device: cpu, cuda, cuda:N or auto.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_fields(self, "evaluate")
        if self.name:
            from tedloc.artifacts.evaluations import check_name

            check_name(self.name)
        if self.on_bad_image not in ON_BAD_IMAGE:
            raise ConfigError(f"evaluate: on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, "
                              f"got {self.on_bad_image!r}")
        if not 0 < self.cam_curve_interval < 1:
            raise ConfigError(f"evaluate: cam_curve_interval must be in (0, 1), got {self.cam_curve_interval}")
        if not self.iou_thresholds or any(not 0 < d <= 100 for d in self.iou_thresholds):
            raise ConfigError(f"evaluate: iou_thresholds must be percentages in (0, 100], got {self.iou_thresholds}")
        for name in ("v1_iou", "loc_iou"):
            if not 0 < getattr(self, name) <= 100:
                raise ConfigError(f"evaluate: {name} must be a percentage in (0, 100]")
        edges = self.box_fraction_bins
        if not edges or edges[0] <= 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ConfigError(f"evaluate: box_fraction_bins must be increasing and above 0, got {edges}")
        if self.centre_prior_sigma <= 0:
            raise ConfigError(f"evaluate: centre_prior_sigma must be above 0, got {self.centre_prior_sigma}")
        if self.baseline_input_size and self.baseline_input_size < 32:
            raise ConfigError(f"evaluate: baseline_input_size must be 0 or at least 32, got {self.baseline_input_size}")
        if self.baseline_threshold is not None and not 0 <= self.baseline_threshold < 1:
            raise ConfigError(f"evaluate: baseline_threshold must be in [0, 1), got {self.baseline_threshold}")
        for name in ("eval_size", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evaluate: {name} must be at least 1, got {getattr(self, name)}")
        if self.html_image_size < 16:
            raise ConfigError(f"evaluate: html_image_size must be at least 16, got {self.html_image_size}")
        for name in ("limit", "num_workers", "num_overlays", "html_max_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"evaluate: {name} must not be negative")
