"""open_clip image and text encoders on tiny random models built from open_clip's own model
configs (EVA02-L-14's timm EVA-02 tower, ViT-B-16's open_clip ViT, MobileCLIP2-L-14's timm
ViT), loaded as ``open_clip:local-dir:<folder>`` like any offline checkpoint.  The model
code that runs is open_clip's and timm's (see ``tests/helpers_open_clip.py`` for the
torchvision stand-in used at import where torchvision cannot load)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

import pytest
import torch

from tedloc.errors import ConfigError
from tedloc.pipeline.image_encoders import build_image_encoder, image_encoder_fingerprint
from tedloc.pipeline.vit_towers import record_attention, resize_position_grid
from tests.helpers_open_clip import import_open_clip, save_tiny_open_clip, tiny_timm_model

KINDS = ("vit", "eva", "timm-vit")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import_open_clip()
    root = tmp_path_factory.mktemp("open_clip")
    return {kind: save_tiny_open_clip(root / kind, kind) for kind in KINDS}


def _spec(folder) -> str:
    return f"open_clip:local-dir:{folder}"


def _library_patch_tokens(encoder, pixels):
    """Patch tokens in the joint space as open_clip / timm compute them at the native size."""
    visual = encoder.visual
    if hasattr(visual, "trunk"):
        trunk = visual.trunk
        tokens = trunk.forward_features(pixels)[:, trunk.num_prefix_tokens:]
        return visual.head(trunk.head(trunk.fc_norm(tokens)))
    visual.output_tokens = True
    try:
        _, tokens = visual(pixels)  # after ln_post, before proj
    finally:
        visual.output_tokens = False
    return tokens @ visual.proj


@pytest.mark.parametrize("kind", KINDS)
def test_grid_is_the_libraries_patch_tokens_through_the_head(folders, kind):
    encoder = build_image_encoder(_spec(folders[kind]))
    assert encoder.grid == (8, 8) and encoder.feature_dim == 24 and encoder.input_size == 64
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not any(m.training for m in encoder.modules())
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = encoder(pixels)
        expected = _library_patch_tokens(encoder, pixels)
    torch.testing.assert_close(out.grid.reshape(2, 64, 24), expected.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.pooled, out.grid.mean(dim=(1, 2)))
    if kind == "eva":  # the EVA-02 architecture itself runs: timm's Eva with rotary embeddings
        from timm.models.eva import Eva

        assert isinstance(encoder.visual.trunk, Eva) and encoder.visual.trunk.rope is not None


@pytest.mark.parametrize("kind", ["vit", "eva"])
def test_other_input_sizes_resize_positions_and_rebuild_rope(folders, kind):
    encoder = build_image_encoder(_spec(folders[kind]), input_size=96)
    assert encoder.grid == (12, 12)
    with torch.inference_mode():
        out = encoder(encoder.preprocess([torch.zeros(50, 70, 3, dtype=torch.uint8).numpy()]))
    assert out.grid.shape == (1, 12, 12, 24) and torch.isfinite(out.grid).all()
    tower = encoder.tower()
    if kind == "eva":  # the rope of a 12×12 grid is what timm builds for a model of that grid
        import timm

        dynamic = timm.create_model(tiny_timm_model("eva02_large_patch14_clip_224"), dynamic_img_size=True,
                                    num_classes=0)
        torch.testing.assert_close(tower._rope((12, 12)), dynamic.rope.get_embed(shape=[12, 12]))
    with pytest.raises(ConfigError, match="multiple of the patch size 8"):
        build_image_encoder(_spec(folders[kind]), input_size=100)


def test_position_grids_resize_bilinearly():
    positions = torch.arange(4 * 2, dtype=torch.float32).reshape(4, 2)  # a 2×2 grid, D = 2
    assert resize_position_grid(positions, (2, 2), (2, 2)) is positions
    bigger = resize_position_grid(positions, (2, 2), (4, 4))
    # align_corners=False: the corner cells keep the corner values, the centre is their mean
    torch.testing.assert_close(bigger[0], positions[0])
    torch.testing.assert_close(bigger[15], positions[3])
    torch.testing.assert_close(resize_position_grid(positions, (2, 2), (1, 1))[0], positions.mean(0))


def test_recorded_attention_is_the_attention_that_ran(folders):
    """open_clip's nn.MultiheadAttention: the record equals softmax(q kᵀ / √d) computed here.
    timm's EVA attention: the record times v, through the module's norm and projection,
    gives the module's own output."""
    vit = build_image_encoder(_spec(folders["vit"])).tower()
    x = torch.randn(1, 9, 32, generator=torch.Generator().manual_seed(1))
    attn = vit.blocks[0].attn
    with torch.no_grad(), record_attention([attn]) as store:
        attn(x, x, x, need_weights=False)
    q, k, _ = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    heads = attn.num_heads
    q = q.reshape(1, 9, heads, -1).transpose(1, 2)
    k = k.reshape(1, 9, heads, -1).transpose(1, 2)
    expected = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    torch.testing.assert_close(store[0], expected, rtol=1e-5, atol=1e-6)

    eva = build_image_encoder(_spec(folders["eva"])).tower()
    seen = {}
    attn = eva.blocks[0].attn
    fused = attn.fused_attn
    handle = attn.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    with torch.no_grad(), record_attention([b.attn for b in eva.blocks]) as store:
        eva.run(torch.randn(1, 3, 64, 64))
    handle.remove()
    assert attn.fused_attn == fused  # restored
    _, last = eva.run(torch.randn(1, 3, 64, 64), attention=1)  # only the last block's is kept
    assert len(last) == 1 and last[0].shape == (1, 2, 65, 65)
    probs = store[0]
    assert probs.shape == (1, 2, 65, 65)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2, 65))
    v = attn.v_proj(seen["x"]).reshape(1, 65, 2, -1).transpose(1, 2)
    mixed = (probs @ v).transpose(1, 2).reshape(1, 65, -1)
    torch.testing.assert_close(attn.proj(attn.norm(mixed)), seen["y"], rtol=1e-5, atol=1e-6)


def test_text_encoder_gives_anchors_in_the_image_space(folders):
    from tedloc.pipeline.text_encoders import build_text_encoder

    open_clip = import_open_clip()
    spec = _spec(folders["eva"])
    text = build_text_encoder(spec)
    assert text.dim == build_image_encoder(spec).feature_dim == 24
    prompts = ["a clean origami bird.", "a clean origami fish."]
    ours = torch.as_tensor(text.encode(prompts))
    model = open_clip.create_model(f"local-dir:{folders['eva']}").eval()
    with torch.no_grad():
        expected = model.encode_text(open_clip.get_tokenizer(f"local-dir:{folders['eva']}")(prompts))
    torch.testing.assert_close(ours, torch.nn.functional.normalize(expected, dim=-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kind", "words"), [("siglip", "pooling 'map' has no per-patch embedding"),
                                             ("resnet", "the image tower is a ModifiedResNet")])
def test_towers_without_patch_tokens_are_refused_naming_what_works(tmp_path, kind, words):
    folder = save_tiny_open_clip(tmp_path / kind, kind) if kind == "resnet" else _tiny_siglip(tmp_path)
    with pytest.raises(ConfigError, match=words) as caught:
        build_image_encoder(_spec(folder))
    assert "EVA02-L-14" in str(caught.value) and "ViT-B-16" in str(caught.value)


def _tiny_siglip(tmp_path):
    tiny_timm_model("vit_base_patch16_siglip_224")
    return save_tiny_open_clip(tmp_path / "siglip", "siglip")


def test_bad_specs_and_missing_packages_are_config_errors(tmp_path, monkeypatch):
    import_open_clip()
    for spec, words in [("open_clip:ViT-B-16", "open_clip:<model>/<pretrained>"),
                        (f"open_clip:local-dir:{tmp_path / 'missing'}", "cannot create the model"),
                        ("open_clip:No-Such-Model/x", "cannot create the model")]:
        with pytest.raises(ConfigError, match=words):
            build_image_encoder(spec)
    # installed, but its import fails as it does beside a torchvision that cannot load
    monkeypatch.delitem(sys.modules, "open_clip")
    monkeypatch.setattr(sys, "meta_path", [_BrokenOpenCLIP(), *sys.meta_path])
    with pytest.raises(ConfigError, match="cannot be imported .operator torchvision::nms.*needs a torchvision"):
        build_image_encoder("open_clip:ViT-B-16/openai")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install 'tedloc\\[open_clip\\]'"):
        build_image_encoder("open_clip:ViT-B-16/openai")


class _BrokenOpenCLIP(importlib.abc.Loader):
    """A finder and loader of an ``open_clip`` whose import raises."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "open_clip" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise RuntimeError("operator torchvision::nms does not exist")


def test_local_dir_identity_and_stored_path(folders, tmp_path, monkeypatch):
    from tedloc.paths import absolute_encoder_spec

    a = image_encoder_fingerprint(_spec(folders["vit"]))
    assert a == image_encoder_fingerprint(_spec(folders["vit"]))
    other = save_tiny_open_clip(tmp_path / "vit2", "vit", seed=3)
    assert image_encoder_fingerprint(_spec(other)) != a  # other weights, other identity
    monkeypatch.chdir(tmp_path)
    assert absolute_encoder_spec("open_clip:local-dir:vit2") == f"open_clip:local-dir:{other}"
    assert absolute_encoder_spec("open_clip:EVA02-L-14/merged2b_s4b_b131k") == "open_clip:EVA02-L-14/merged2b_s4b_b131k"
