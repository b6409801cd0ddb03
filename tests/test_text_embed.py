"""Stage text-embed: encoders (tiny random CLIP, real MiniLM), prompts, artifact, reruns, CLI."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tedloc.artifacts.text_embed import read_text_embed
from tedloc.configs.text_embed import Config
from tedloc.errors import ArtifactError, ConfigError, ConfigMismatchError, InputError
from tedloc.pipeline import text_encoders
from tedloc.stages import text_embed as stage

DEMO_CLASSES = ["bird", "mammal", "fish", "insect", "fruit", "vegetable", "flower", "tool"]


def make_wsol_tree(root: Path, class_names: list[str]) -> Path:
    """A wsolevaluation index (no pixels needed to read class names), two images per class."""
    split = root / "metadata" / "train"
    split.mkdir(parents=True)
    ids = [f"train/{name}_{k}.png" for name in class_names for k in range(2)]
    (split / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (split / "class_labels.txt").write_text("".join(f"{i},{n // 2}\n" for n, i in enumerate(ids)))
    (split / "image_sizes.txt").write_text("".join(f"{i},32,32\n" for i in ids))
    (split / "localization.txt").write_text("".join(f"{i},1,1,20,20\n" for i in ids))
    (root / "metadata" / "class_names.txt").write_text("\n".join(class_names) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A randomly initialized CLIP with its tokenizer, saved like a hub checkpoint."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    chars = "abcdefghijklmnopqrstuvwxyz."
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab[ch] = len(vocab)
    for ch in chars:
        vocab[ch + "</w>"] = len(vocab)
    vocab["of</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\no f</w>\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=40,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=16),
        projection_dim=24,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def wsol(tmp_path) -> Path:
    return make_wsol_tree(tmp_path / "data", ["bird", "fish", "flower"])


def _config(dataset: Path, clip: Path, **kw) -> Config:
    return Config(dataset=str(dataset), text_encoder=f"clip:{clip}", device="cpu", **kw)


# ----------------------------------------------------------------------------- encoders

def test_clip_text_features_match_clip_forward(tiny_clip):
    from transformers import AutoTokenizer, CLIPModel

    encoder = text_encoders.build_text_encoder(f"clip:{tiny_clip}")
    assert isinstance(encoder, text_encoders.CLIPTextEncoder)
    assert encoder.id == f"clip:{tiny_clip}" and encoder.dim == 24
    texts = ["Image of a bird.", "Image of a fish.", "a flower"]
    got = encoder.encode(texts, batch_size=2)
    assert got.dtype == np.float32 and got.shape == (3, 24)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    # CLIP's own forward pass: its text_embeds are the normalized projected text features.
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    batch = AutoTokenizer.from_pretrained(tiny_clip)(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(**batch, pixel_values=torch.zeros(1, 3, 32, 32))
    np.testing.assert_allclose(got, out.text_embeds.numpy(), atol=1e-5)


def test_hub_id_goes_through_the_same_code(tiny_clip, monkeypatch):
    """A hub id is handed verbatim to from_pretrained; only the download is replaced here."""
    from transformers import AutoTokenizer, CLIPModel

    hub_id = "openai/clip-vit-base-patch16"
    asked = []

    def redirect(original):
        def load(source, *args, **kwargs):
            asked.append(source)
            return original(tiny_clip if source == hub_id else source, *args, **kwargs)
        return load

    monkeypatch.setattr(CLIPModel, "from_pretrained", redirect(CLIPModel.from_pretrained))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", redirect(AutoTokenizer.from_pretrained))
    monkeypatch.setattr(text_encoders, "_hub_snapshot", lambda repo_id: None)
    via_hub = text_encoders.build_text_encoder(f"clip:{hub_id}")
    assert asked == [hub_id, hub_id] and via_hub.id == f"clip:{hub_id}"
    local = text_encoders.build_text_encoder(f"clip:{tiny_clip}")
    np.testing.assert_array_equal(via_hub.encode(["Image of a bird."]), local.encode(["Image of a bird."]))
    assert text_encoders.text_encoder_fingerprint(f"clip:{hub_id}") is None  # not cached: load first


def test_fingerprint_is_cheap_and_tracks_the_weights(tiny_clip, tmp_path):
    import shutil

    fp = text_encoders.text_encoder_fingerprint(f"clip:{tiny_clip}")
    assert fp == text_encoders.build_text_encoder(f"clip:{tiny_clip}").fingerprint
    other = tmp_path / "other"
    shutil.copytree(tiny_clip, other)
    assert text_encoders.text_encoder_fingerprint(f"clip:{other}") == fp  # same weights elsewhere
    from safetensors.torch import load_file, save_file

    weights = load_file(other / "model.safetensors")
    name = next(k for k in weights if "text_projection" in k)
    weights[name] = weights[name] + 1e-3
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    assert text_encoders.text_encoder_fingerprint(f"clip:{other}") != fp


def test_unknown_and_unavailable_encoders_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown text encoder"):
        text_encoders.build_text_encoder("bert")
    with pytest.raises(ConfigError, match="cannot load"):
        text_encoders.build_text_encoder(f"clip:{tmp_path}")
    with pytest.raises(ConfigError, match="open_clip:<model>/<pretrained>"):
        text_encoders.text_encoder_fingerprint("open_clip:ViT-B-32")
    import importlib.util

    if importlib.util.find_spec("open_clip") is None:
        with pytest.raises(ConfigError, match=r"tedloc\[open_clip\]"):
            text_encoders.build_text_encoder("open_clip:ViT-B-32/laion2b_s34b_b79k")


def test_template_ensemble_averages_normalized_embeddings(tiny_clip):
    encoder = text_encoders.build_text_encoder(f"clip:{tiny_clip}")
    templates = ["Image of a {}.", "a {}"]
    got = text_encoders.class_embeddings(encoder, ["bird", "fish", "tool"], templates,
                                         batch_size=3, progress=False)
    for row, name in zip(got, ["bird", "fish", "tool"], strict=True):
        each = encoder.encode([t.replace("{}", name) for t in templates])
        mean = each.mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-6)


# ----------------------------------------------------------------------------- stage

def test_stage_writes_the_contract(wsol, tiny_clip, tmp_path):
    workdir = tmp_path / "work"
    manifest = stage.run(_config(wsol, tiny_clip), workdir=workdir)
    assert manifest == workdir / "text_embed" / "manifest.json"
    art = read_text_embed(workdir)
    assert art.class_names == art.prompt_names == ["bird", "fish", "flower"]
    assert art.templates == ["Image of a {}."]
    assert art.raw.shape == art.anchors.shape == (3, 24) and art.anchors.dtype == np.float32
    np.testing.assert_allclose(art.anchors @ art.anchors.T, np.eye(3), atol=1e-5)
    assert np.all(np.sum(art.anchors * art.raw, axis=1) > 0)
    assert art.attrs["orthogonalization"] == "qr" and art.attrs["text_encoder"] == f"clip:{tiny_clip}"
    assert art.attrs["mean_abs_cos_after"] < 1e-5 < art.attrs["mean_abs_cos_before"]
    assert art.attrs["format"] == "tedloc.text_embed" and art.attrs["upstream_hash"] == ""
    assert art.identity == f"{art.attrs['config_hash']}/"
    assert read_text_embed(workdir / "text_embed").identity == art.identity
    with h5py.File(workdir / "text_embed" / "text_embed.h5") as handle:
        assert set(handle) >= {"class_names", "templates", "raw", "anchors"}
        assert handle.attrs["encoder_fingerprint"] == text_encoders.text_encoder_fingerprint(
            f"clip:{tiny_clip}")


def test_rerun_is_a_no_op_without_loading_the_encoder(wsol, tiny_clip, tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    config = _config(wsol, tiny_clip)
    stage.run(config, workdir=workdir)
    h5 = workdir / "text_embed" / "text_embed.h5"
    before = h5.stat().st_mtime_ns

    def no_load(*args, **kwargs):
        raise AssertionError("the encoder must not be loaded for a finished stage")

    monkeypatch.setattr(text_encoders, "build_text_encoder", no_load)
    # batch_size and device are not hashed: still the same results.
    assert stage.run(config.replace(batch_size=1), workdir=workdir) == workdir / "text_embed" / "manifest.json"
    assert h5.stat().st_mtime_ns == before


def test_changed_template_is_refused_unless_overwrite(wsol, tiny_clip, tmp_path):
    workdir = tmp_path / "work"
    stage.run(_config(wsol, tiny_clip), workdir=workdir)
    first = read_text_embed(workdir)
    changed = _config(wsol, tiny_clip, templates=("A photo of a {}.",))
    with pytest.raises(ConfigMismatchError, match="--overwrite"):
        stage.run(changed, workdir=workdir)
    assert read_text_embed(workdir).identity == first.identity  # untouched
    stage.run(changed, workdir=workdir, overwrite=True)
    second = read_text_embed(workdir)
    assert second.templates == ["A photo of a {}."] and second.identity != first.identity
    assert not np.allclose(second.raw, first.raw)


def test_changed_class_names_invalidate(wsol, tiny_clip, tmp_path):
    workdir = tmp_path / "work"
    stage.run(_config(wsol, tiny_clip), workdir=workdir)
    (wsol / "metadata" / "class_names.txt").write_text("bird\nfish\ntool\n")
    with pytest.raises(ConfigMismatchError):
        stage.run(_config(wsol, tiny_clip), workdir=workdir)


def test_class_name_map_and_templates_file(wsol, tiny_clip, tmp_path):
    names_map = tmp_path / "names.tsv"
    names_map.write_text("original\tnicer\nfish\tgoldfish\nunknown\tx\n")
    templates = tmp_path / "templates.txt"
    templates.write_text("# ensemble\nImage of a {}.\n\na photo of the {}\n")
    workdir = tmp_path / "work"
    stage.run(_config(wsol, tiny_clip, class_name_map=str(names_map), templates_file=str(templates)),
              workdir=workdir)
    art = read_text_embed(workdir)
    assert art.class_names == ["bird", "fish", "flower"]
    assert art.prompt_names == ["bird", "goldfish", "flower"]
    assert art.templates == ["Image of a {}.", "a photo of the {}"]
    # The map's content is hashed: changing it (same path) invalidates.
    names_map.write_text("fish,shark\n")
    with pytest.raises(ConfigMismatchError):
        stage.run(_config(wsol, tiny_clip, class_name_map=str(names_map), templates_file=str(templates)),
                  workdir=workdir)


def test_bad_inputs_are_reported_with_their_file(wsol, tiny_clip, tmp_path):
    bad_map = tmp_path / "bad.csv"
    bad_map.write_text("bird,small bird\nfish\n")
    with pytest.raises(InputError, match=r"bad.csv:2"):
        stage.run(_config(wsol, tiny_clip, class_name_map=str(bad_map)), workdir=tmp_path / "w")
    dup = tmp_path / "dup.csv"
    dup.write_text("fish,bird\n")
    with pytest.raises(ConfigError, match="both named 'bird'"):
        stage.run(_config(wsol, tiny_clip, class_name_map=str(dup)), workdir=tmp_path / "w")
    with pytest.raises(ConfigError, match="no '{}'"):
        _config(wsol, tiny_clip, templates=("a photo",))
    with pytest.raises(ConfigError, match="either"):
        _config(wsol, tiny_clip, templates=("a {}",), templates_file=str(bad_map))
    with pytest.raises(ArtifactError, match="not found"):
        read_text_embed(tmp_path / "nowhere")


def test_cli_runs_the_stage_with_an_ensemble_and_no_orthogonalization(wsol, tiny_clip, tmp_path):
    from tedloc.cli import app

    workdir = tmp_path / "work"
    args = ["--workdir", str(workdir), "stage", "text-embed", "--dataset", str(wsol),
            "--text-encoder", f"clip:{tiny_clip}", "--templates", "Image of a {}.",
            "--templates", "a {}", "--no-orthogonalize", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "text-embed: done" in result.output
    art = read_text_embed(workdir)
    assert art.templates == ["Image of a {}.", "a {}"] and art.attrs["orthogonalization"] == "none"
    np.testing.assert_array_equal(art.anchors, art.raw)
    # The same config reruns at once; a changed one is a one-line error, exit 1.
    assert CliRunner().invoke(app, args).exit_code == 0
    result = CliRunner().invoke(app, args[:-3] + ["--device", "cpu"])
    assert result.exit_code == 1 and "--overwrite" in result.output


def test_minilm_on_the_demo_classes(tmp_path):
    data = make_wsol_tree(tmp_path / "data", DEMO_CLASSES)
    stage.run(Config(dataset=str(data), device="cpu"), workdir=tmp_path / "work")
    art = read_text_embed(tmp_path / "work")
    assert art.attrs["text_encoder"] == "minilm" and art.raw.shape == (8, 384)
    assert art.attrs["orthogonalization"] == "qr"
    # Text embeddings of related words share a lot: far from orthogonal before the QR.
    assert art.attrs["mean_abs_cos_before"] > 0.3
    assert art.attrs["mean_abs_cos_after"] < 1e-5
    assert np.all(np.sum(art.anchors * art.raw, axis=1) > 0.5)
