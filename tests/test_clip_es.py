"""CLIP-ES: each step against a plain implementation written here from the equations (loops
over entries), a hand-made attention matrix whose refined map is known, and the whole
method against a reference assembled from those plain steps on tiny random CLIPs; a
deliberately broken step must make that comparison fail."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from tedloc.pipeline import clip_es
from tedloc.pipeline.image_encoders import build_image_encoder
from tests.helpers_data import save_tiny_clip
from tests.helpers_open_clip import save_tiny_open_clip

RNG = np.random.default_rng(7)


# ----------------------------------------------------------------------------- plain steps

def plain_scale(x: np.ndarray) -> np.ndarray:
    shifted = x - x.min()
    return shifted / (1e-7 + shifted.max())


def plain_gradcam_map(act: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """act, grad (N, D) of one image -> (N,)."""
    n, d = act.shape
    weights = [sum(grad[k, c] for k in range(n)) / n for c in range(d)]
    raw = np.array([sum(weights[c] * act[k, c] for c in range(d)) for k in range(n)])
    return plain_scale(np.maximum(plain_scale(np.maximum(raw, 0)), 0))


def plain_sinkhorn(a: np.ndarray, rounds: int = 3) -> np.ndarray:
    t = a.astype(np.float64).copy()
    n = len(t)
    for _ in range(rounds):
        for j in range(n):
            column = sum(t[i, j] for i in range(n))
            for i in range(n):
                t[i, j] /= column
        for i in range(n):
            row = sum(t[i, j] for j in range(n))
            for j in range(n):
                t[i, j] /= row
    return t


def plain_symmetrize(t: np.ndarray) -> np.ndarray:
    n = len(t)
    return np.array([[(t[i, j] + t[j, i]) / 2 for j in range(n)] for i in range(n)])


def plain_square(t: np.ndarray) -> np.ndarray:
    n = len(t)
    return np.array([[sum(t[i, k] * t[k, j] for k in range(n)) for j in range(n)] for i in range(n)])


def plain_box_mask(cam: np.ndarray, threshold: float) -> np.ndarray:
    """Boxes of the 8-connected regions of ``uint8(cam·255) > int(threshold·max)``; each box's
    end is one past its last pixel, clipped to the last row/column, then excluded."""
    u8 = (cam * 255).astype(np.uint8)
    regions, count = ndimage.label(u8 > int(threshold * u8.max()), structure=np.ones((3, 3)))
    mask = np.zeros(cam.shape, np.float32)
    h, w = cam.shape
    for ys, xs in ndimage.find_objects(regions)[:count]:
        y1, x1 = min(ys.stop, h - 1), min(xs.stop, w - 1)
        mask[ys.start:y1, xs.start:x1] = 1
    return mask


def plain_refine(cam: np.ndarray, t: np.ndarray, mask: np.ndarray) -> np.ndarray:
    n = len(cam)
    return np.array([sum(t[i, j] * mask[j] * cam[j] for j in range(n)) for i in range(n)])


def plain_probability(embedding: np.ndarray, text: np.ndarray, label: int, num_classes: int,
                      scale: float) -> float:
    """The image's class against every background: softmax over [class, backgrounds]."""
    e = embedding / math.sqrt(sum(v * v for v in embedding))
    rows = [label, *range(num_classes, len(text))]
    logits = [scale * sum(e[c] * text[r, c] for c in range(len(e))) for r in rows]
    top = max(logits)
    return math.exp(logits[0] - top) / sum(math.exp(v - top) for v in logits)


# ----------------------------------------------------------------------------- steps

def test_gradcam_map_matches_the_equations():
    act = RNG.normal(size=(2, 6, 4))
    grad = RNG.normal(size=(2, 6, 4))
    ours = clip_es.gradcam_map(torch.as_tensor(act), torch.as_tensor(grad)).numpy()
    for b in range(2):
        np.testing.assert_allclose(ours[b], plain_gradcam_map(act[b], grad[b]), rtol=1e-6, atol=1e-9)
    # the channel weights are the gradient's mean over patches: a constant gradient per
    # channel gives the map Σ_c g_c A_c
    const = np.ones((1, 6, 4)) * [[[1.0, -2.0, 0.0, 0.5]]]
    raw = clip_es.gradcam(torch.as_tensor(act[:1]), torch.as_tensor(const)).numpy()[0]
    np.testing.assert_allclose(raw, act[0] @ [1.0, -2.0, 0.0, 0.5])


def test_sinkhorn_symmetrize_square_match_the_equations():
    a = RNG.uniform(0.01, 1.0, size=(5, 5))
    t = clip_es.sinkhorn(torch.as_tensor(a)[None]).numpy()[0]
    np.testing.assert_allclose(t, plain_sinkhorn(a), rtol=1e-10)
    np.testing.assert_allclose(t.sum(1), 1, rtol=1e-10)  # the last division is by the rows
    s = clip_es.symmetrize(torch.as_tensor(t)[None]).numpy()[0]
    np.testing.assert_allclose(s, plain_symmetrize(t), rtol=1e-12)
    np.testing.assert_allclose(clip_es.square(torch.as_tensor(s)[None]).numpy()[0], plain_square(s), rtol=1e-10)


def test_mean_attention_matches_the_equations():
    attentions = [torch.as_tensor(RNG.uniform(size=(1, 3, 5, 5))) for _ in range(4)]  # 4 blocks, 3 heads, P=1
    ours = clip_es.mean_attention(attentions, num_prefix=1, layers=2).numpy()[0]
    plain = np.zeros((4, 4))
    for block in (2, 3):
        for head in range(3):
            plain += attentions[block][0, head, 1:, 1:].numpy() / 6
    np.testing.assert_allclose(ours, plain, rtol=1e-6)


def test_box_mask_matches_the_equations():
    cam = np.zeros((6, 7), np.float32)
    cam[1:3, 1:4] = 0.9          # a region inside the map
    cam[3:6, 5:7] = 0.6          # a region touching the bottom and right edges: its end is clipped
    cam[0, 6] = 0.2              # below 0.4 of the max: no box
    cam[4, 0] = 1.0
    ours = clip_es.box_mask(cam, 0.4)
    np.testing.assert_array_equal(ours, plain_box_mask(cam, 0.4))
    expected = np.zeros_like(cam)
    expected[1:3, 1:4] = 1
    expected[3:5, 5:6] = 1       # rows 3..5, columns 5..6 -> [3:5, 5:6] after the clipped end
    expected[4:5, 0:1] = 1       # one pixel: [4:5, 0:1]
    np.testing.assert_array_equal(ours, expected)
    cams = RNG.uniform(size=(5, 4, 6)).astype(np.float32)
    for c in cams:
        np.testing.assert_array_equal(clip_es.box_mask(c, 0.4), plain_box_mask(c, 0.4))


def test_refine_uses_only_cam_values_inside_the_boxes():
    n = 6
    t = RNG.uniform(size=(n, n))
    cam = RNG.uniform(size=n)
    mask = np.array([1, 1, 0, 1, 0, 0], np.float64)
    ours = clip_es.refine(torch.as_tensor(cam)[None], torch.as_tensor(t)[None], torch.as_tensor(mask)[None])[0]
    np.testing.assert_allclose(ours.numpy(), plain_refine(cam, t, mask), rtol=1e-12)
    changed = cam.copy()
    changed[mask == 0] = RNG.uniform(size=3)  # the CAM outside the boxes never reaches the result
    again = clip_es.refine(torch.as_tensor(changed)[None], torch.as_tensor(t)[None], torch.as_tensor(mask)[None])[0]
    np.testing.assert_allclose(again.numpy(), ours.numpy(), rtol=1e-12)


def test_hand_made_attention_gives_the_known_refined_map():
    """A 3×4 grid whose attention links the patches of the left half among themselves and
    those of the right half among themselves, each uniformly.  Sinkhorn, symmetrization and
    squaring leave each block J/6; the CAM is high on the left half only, so its box is the
    left half ([0:2, 0:2] after the authors' clipped end); the refined map is the mean CAM
    over the box's 4 patches on the left half, zero on the right: after scaling, 1 and 0."""
    h, w = 3, 4
    left = np.array([[x < 2 for x in range(w)] for _ in range(h)]).ravel()
    attention = np.where(left[:, None] == left[None, :], 1.0, 0.0)
    cam = np.where(left, 0.5, 0.05).reshape(h, w)
    cam[0, 0] = 1.0
    transition = clip_es.square(clip_es.symmetrize(clip_es.sinkhorn(torch.as_tensor(attention)[None])))
    np.testing.assert_allclose(transition[0].numpy(), attention / 6, rtol=1e-12)
    mask = clip_es.box_mask(cam.astype(np.float32), 0.4)
    expected_mask = np.zeros((h, w))
    expected_mask[0:2, 0:2] = 1
    np.testing.assert_array_equal(mask, expected_mask)
    refined = clip_es.refine(torch.as_tensor(cam.ravel())[None], transition,
                             torch.as_tensor(mask.ravel(), dtype=torch.float64)[None])[0].numpy()
    known = (1.0 + 0.5 + 0.5 + 0.5) / 6
    np.testing.assert_allclose(refined, np.where(left, known, 0.0), rtol=1e-12)
    scaled = clip_es.scale_cam(torch.as_tensor(refined)[None])[0].numpy()
    np.testing.assert_allclose(scaled, np.where(left, 1.0, 0.0), atol=1e-6)


def test_softmax_rows_probability_and_input_size():
    assert clip_es.softmax_rows(2, 4, 3) == ([2, 4, 5, 6], 0)
    assert clip_es.softmax_rows(2, 4, 3, "all") == ([0, 1, 2, 3, 4, 5, 6], 2)
    text = RNG.normal(size=(7, 5))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    e = RNG.normal(size=5)
    rows, target = clip_es.softmax_rows(2, 4, 3)
    ours = clip_es.class_probability(torch.as_tensor(e)[None], torch.as_tensor(text), torch.tensor([rows]),
                                     torch.tensor([target]), 30.0)
    assert float(ours[0]) == pytest.approx(plain_probability(e, text, 2, 4, 30.0), rel=1e-9)
    assert clip_es.own_resolution(375, 500, 16) == (384, 512)
    assert clip_es.own_resolution(224, 224, 14) == (224, 224) and clip_es.own_resolution(225, 100, 14) == (238, 112)


# ----------------------------------------------------------------------------- the whole method

def _sharpen_attention(encoder, factor: float = 6.0) -> None:
    """Scale the query and key weights of every block so that random attention is far from
    uniform (a near-uniform matrix would hide a wrong Sinkhorn or symmetrization)."""
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if "in_proj_weight" in name:  # nn.MultiheadAttention: rows of q, k, v
                param[: 2 * param.shape[0] // 3] *= factor
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                param *= factor


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    specs = {"transformers": f"clip:{save_tiny_clip(root / 'hf')}",
             "open_clip-vit": f"open_clip:local-dir:{save_tiny_open_clip(root / 'vit', 'vit')}",
             "eva": f"open_clip:local-dir:{save_tiny_open_clip(root / 'eva', 'eva')}"}
    encoders = {}
    for kind, spec in specs.items():
        encoder = build_image_encoder(spec)
        _sharpen_attention(encoder)
        encoders[kind] = encoder
    return encoders


def reference_maps(encoder, pixels, labels, text, num_classes, layers, threshold):
    """CLIP-ES from the plain steps above.  Gradients are taken as the authors' Grad-CAM takes
    them (a hook on the norm's output tensor, the pixels requiring grad so that the graph
    exists), not by the method's leaf tensor."""
    tower = encoder.tower()
    seen = {}

    def hook(module, args, output):
        seen["act"] = output
        output.register_hook(lambda g: seen.__setitem__("grad", g))

    handle = tower.last_norm1.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            tokens, attentions = tower.run(pixels.clone().requires_grad_(True), attention=layers)
            projected = tower.head(tokens)[:, tower.num_prefix:]
            e = projected.mean(dim=1)
            unit = e / e.norm(dim=-1, keepdim=True)
            scores = []
            for b, y in enumerate(labels):
                logits = encoder.logit_scale * (unit[b] @ text[[y, *range(num_classes, len(text))]].T)
                scores.append(logits.softmax(-1)[0])
            torch.stack(scores).sum().backward()
    finally:
        handle.remove()
    p = tower.num_prefix
    h, w = tower.grid_of(pixels)
    out = []
    for b in range(len(labels)):
        act = seen["act"][b, p:].detach().double().numpy()
        grad = seen["grad"][b, p:].double().numpy()
        cam = plain_gradcam_map(act, grad)
        heads = [a[b].double().mean(0)[p:, p:].numpy() for a in attentions[-layers:]]
        affinity = sum(heads) / len(heads)
        t = plain_square(plain_symmetrize(plain_sinkhorn(affinity)))
        mask = plain_box_mask(cam.reshape(h, w).astype(np.float32), threshold).ravel()
        out.append(plain_scale(plain_refine(cam, t, mask)).reshape(h, w))
    return np.stack(out)


def _inputs(encoder, sizes=((40, 48), (56, 32))):
    """Two random images at their own sizes, normalized one by one (each its own grid)."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    method = clip_es.ClipES(encoder, ["cat", "dog", "fish"], backgrounds=("sky", "road"), attention_layers=2,
                            text_features=torch.as_tensor(rng.normal(size=(5, encoder.feature_dim)),
                                                          dtype=torch.float32))
    return method, images


@pytest.mark.parametrize("kind", ["transformers", "open_clip-vit", "eva"])
def test_clip_es_matches_the_reference(towers, kind):
    encoder = towers[kind]
    method, images = _inputs(encoder)
    for image, label in zip(images, (1, 2), strict=True):
        pixels = method._own_size_pixels(image)
        assert tuple(pixels.shape[-2:]) == clip_es.own_resolution(*image.shape[:2], encoder.tower().patch_size)
        ours = method.maps(pixels, torch.tensor([label])).numpy()
        expected = reference_maps(encoder, pixels, [label], method.text, 3, 2, 0.4)
        np.testing.assert_allclose(ours, expected, atol=1e-4)  # float32 here, float64 in the reference
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())


def _rows_first_sinkhorn(affinity, rounds=3):
    out = affinity
    for _ in range(rounds):
        out = out / out.sum(dim=-1, keepdim=True)
        out = out / out.sum(dim=-2, keepdim=True)
    return out


_softmax_rows, _box_mask = clip_es.softmax_rows, clip_es.box_mask
BROKEN = {
    "sinkhorn: rows before columns": ("sinkhorn", _rows_first_sinkhorn),
    "no symmetrization": ("symmetrize", lambda m: m),
    "transition not squared": ("square", lambda m: m),
    "box mask on rows": ("refine", lambda cam, t, mask: torch.einsum("bij,bj->bi", t * mask[:, :, None], cam)),
    "no box mask": ("refine", lambda cam, t, mask: torch.einsum("bij,bj->bi", t, cam)),
    "softmax over every class": ("softmax_rows", lambda y, c, k, mode="image": _softmax_rows(y, c, k, "all")),
    "class token as the image embedding": ("image_embedding", lambda tokens, p: tokens[:, 0]),
    "gradient x activation per patch instead of channel weights":
        ("gradcam_map", lambda a, g: clip_es.scale_cam(torch.relu((a * g).sum(-1)))),
    "attention: max over heads instead of mean":
        ("mean_attention", lambda att, p, layers=8: torch.stack([a.float().amax(1)[:, p:, p:] for a in att]).mean(0)),
    "box threshold 0.6": ("box_mask", lambda cam, threshold=0.4: _box_mask(cam, 0.6)),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_step_fails_the_comparison(towers, monkeypatch, broken):
    encoder = towers["open_clip-vit"]
    method, images = _inputs(encoder, sizes=((48, 64),))
    pixels = method._own_size_pixels(images[0])
    expected = reference_maps(encoder, pixels, [1], method.text, 3, 2, 0.4)
    name, wrong = BROKEN[broken]
    monkeypatch.setattr(clip_es, name, wrong)
    ours = method.maps(pixels, torch.tensor([1])).numpy()
    assert np.abs(ours - expected).max() > 1e-3, broken
