"""open_clip and timm in tests: importing them, and tiny random models built from open_clip's
own model configs (no download).

**torchvision stand-in.**  open_clip and timm import torchvision when they are imported
(image transforms, a frozen batch-norm class, dataset classes), but the model code tedloc
runs never calls it.  PyPI's torchvision wheels link the CUDA build of torch and do not load
beside the CPU wheel these tests run on (and an installed, unloadable torchvision breaks
``transformers``' CLIP import), so CI installs open_clip_torch and timm without it.  Where
torchvision is missing or cannot load, :func:`import_open_clip` imports open_clip and timm
with a minimal stand-in for the torchvision names they import in ``sys.modules``, and
removes it right after.  Every stand-in name is a placeholder class that raises when it is
instantiated, so no stand-in code can run: the model code that runs is open_clip's and
timm's.  Where torchvision loads, the real one is used.

**Required or skipped.**  Without open_clip_torch and timm these tests skip, unless
``TEDLOC_REQUIRE_OPTIONAL_TESTS=1`` (set by ``.ci/run``) turns the skip into a failure.
"""

from __future__ import annotations

import copy
import enum
import importlib
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest

_STAND_IN_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                     "torchvision.ops", "torchvision.ops.misc", "torchvision.datasets", "torchvision.utils")
#: Sizes of the tiny towers: width 32, 2 blocks of 2 heads, 64 px images in 8-px patches (8×8 grid).
TINY_TIMM = dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2)
#: open_clip configs the tiny models are built from (the paper's EVA-CLIP, a ViT-B/16, a timm ViT).
#: ``siglip`` and ``resnet`` are towers without a per-patch form (refused).
BASE_CONFIGS = {"eva": "EVA02-L-14", "vit": "ViT-B-16", "timm-vit": "MobileCLIP2-L-14",
                "siglip": "ViT-B-16-SigLIP", "resnet": "RN50"}


def require(*modules: str) -> None:
    """Skip the calling test when a module is missing, or fail it under
    ``TEDLOC_REQUIRE_OPTIONAL_TESTS=1`` (CI, where these tests must run)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed"
    if os.environ.get("TEDLOC_REQUIRE_OPTIONAL_TESTS") == "1":
        pytest.fail(f"{message}, and TEDLOC_REQUIRE_OPTIONAL_TESTS=1 requires these tests to run")
    pytest.skip(message)


class _Unavailable:
    """A torchvision name of the stand-in: importable, never usable."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"torchvision.{type(self).__name__} is a test stand-in and was called")


class InterpolationMode(enum.Enum):
    """torchvision's enum of the same name (timm builds lookup tables from it at import)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "InterpolationMode":
            return InterpolationMode
        placeholder = type(name, (_Unavailable,), {})
        setattr(self, name, placeholder)
        return placeholder


def _torchvision_loads() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing (ImportError) or unloadable (RuntimeError)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_open_clip():
    """``open_clip`` with ``timm`` imported (see the module docstring); skips (or fails in CI)
    when they are not installed."""
    require("open_clip", "timm")
    if "open_clip" in sys.modules and "timm" in sys.modules:
        return sys.modules["open_clip"]
    if _torchvision_loads():
        import timm  # noqa: F401

        return importlib.import_module("open_clip")
    # open_clip imports transformers, whose import asks whether torchvision is available: let it
    # find the truth (absent) before the stand-in is in place.
    import transformers  # noqa: F401

    modules = {name: _StandIn(name) for name in _STAND_IN_MODULES}
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    sys.modules.update(modules)
    try:
        import timm  # noqa: F401

        return importlib.import_module("open_clip")
    finally:
        for name in modules:
            sys.modules.pop(name, None)


def tiny_timm_model(base: str) -> str:
    """Name of a timm model registered here: timm's ``base`` architecture (its own entry
    point, so EVA-02 keeps its rotary embeddings, SwiGLU and sub-LN) at :data:`TINY_TIMM`."""
    import timm
    from timm.models import register_model
    from timm.models._registry import model_entrypoint

    name = f"tedloc_tiny_{base}"
    if not timm.is_model(name):
        entry = model_entrypoint(base)
        extra = {"ref_feat_shape": (8, 8)} if base.startswith("eva02") else {}

        def create(pretrained: bool = False, **kwargs):
            return entry(pretrained=False, **{**TINY_TIMM, **extra, **kwargs})

        create.__name__ = name
        register_model(create)
    return name


def save_tiny_open_clip(folder: Path, kind: str, *, seed: int = 0) -> Path:
    """A random tiny open_clip model in open_clip's offline layout (``open_clip_config.json``
    + ``open_clip_pytorch_model.bin``), loadable as ``open_clip:local-dir:<folder>``.

    ``kind``: ``eva`` (from ``EVA02-L-14``: a timm EVA-02 tower), ``vit`` (from ``ViT-B-16``:
    open_clip's ViT) or ``timm-vit`` (from ``MobileCLIP2-L-14``: a timm ViT), each shrunk to
    width 32 and 2 blocks at 64 px (8×8 patches of 8 px), a 1-block text tower, d = 24;
    ``siglip`` and ``resnet`` (towers tedloc refuses) likewise.  The weights are random:
    outputs mean nothing.
    """
    import torch

    open_clip = import_open_clip()
    cfg = copy.deepcopy(open_clip.get_model_config(BASE_CONFIGS[kind]))
    cfg["embed_dim"] = 24
    cfg["text_cfg"].update(width=32, heads=2, layers=1)
    vision = cfg["vision_cfg"]
    if kind == "vit":
        vision.update(image_size=64, patch_size=8, width=32, layers=2, head_width=16)
    elif kind == "resnet":
        vision.update(image_size=64, layers=[1, 1, 1, 1], width=16)
    else:
        vision.update(timm_model_name=tiny_timm_model(vision["timm_model_name"]), image_size=64)
        vision.pop("timm_drop_path", None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}")
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder
