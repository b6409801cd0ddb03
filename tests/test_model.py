"""The head (D, g, Σ, class logits), the threshold choice and the Localizer."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tedloc.artifacts.checkpoint import save_checkpoint
from tedloc.errors import ArtifactError
from tedloc.pipeline.model import HeadConfig, TedLocHead
from tedloc.pipeline.threshold import choose_threshold


def _head(decoder="conv", patch_head="mlp", in_dim=12, d=8, c=3):
    torch.manual_seed(0)
    anchors = F.normalize(torch.randn(c, d), dim=1)
    config = HeadConfig(in_dim=in_dim, embed_dim=d, num_classes=c, decoder=decoder, width=16, depth=2,
                        heads=2, patch_head=patch_head, patch_hidden=8)
    return TedLocHead(config, anchors)


@pytest.mark.parametrize("decoder", ["conv", "transformer", "linear"])
@pytest.mark.parametrize("patch_head", ["mlp", "linear"])
def test_head_shapes_and_definitions(decoder, patch_head):
    head = _head(decoder, patch_head)
    grid = torch.randn(2, 5, 7, 12)
    out = head(grid)
    assert out.z.shape == (2, 5, 7, 8)
    assert out.patch_logits.shape == (2, 5, 7)
    assert out.class_logits.shape == (2, 3)
    assert ((out.maps >= 0) & (out.maps <= 1)).all()
    m = torch.sigmoid(out.patch_logits).unsqueeze(-1)
    e = (m * out.z).sum(dim=(1, 2)) / m.sum(dim=(1, 2))
    expected = F.cosine_similarity(e.unsqueeze(1), head.anchors.unsqueeze(0), dim=-1) / 0.07
    assert torch.allclose(out.class_logits, expected, atol=1e-4)
    # anchors are frozen: a buffer, not a parameter
    assert "anchors" not in dict(head.named_parameters())
    assert "anchors" in head.state_dict()


def test_decoder_sees_context_except_linear():
    grid = torch.zeros(1, 5, 5, 12)
    poked = grid.clone()
    poked[0, 0, 0] = 5.0
    for decoder, changes in (("conv", True), ("transformer", True), ("linear", False)):
        head = _head(decoder)
        z0, z1 = head(grid).z, head(poked).z
        assert (not torch.allclose(z0[0, 1, 1], z1[0, 1, 1])) == changes, decoder


def test_threshold_choice_against_pseudo_boxes():
    maps = np.zeros((4, 8, 8), np.float32)
    boxes = []
    for n in range(4):
        maps[n, 2:6, 1 + n // 2:5 + n // 2] = 1.0
        maps[n] += np.linspace(0, 0.3, 64, dtype=np.float32).reshape(8, 8)  # a ramp: low τ boxes everything
        x0, y0 = (1 + n // 2) * 8, 2 * 8
        boxes.append([x0, y0, x0 + 31, y0 + 31])
    choice = choose_threshold(maps, np.array(boxes), input_size=64, size=64, criterion="mean_iou")
    i = int(round(choice.threshold * 100))
    assert choice.mean_iou[i] > 0.8 > choice.mean_iou[0]
    assert 0.3 < choice.threshold < 0.95
    share = choose_threshold(maps, np.array(boxes), input_size=64, size=64, criterion="iou50")
    assert share.iou50.max() == 1.0 and share.summary()["iou50"] == 1.0


def test_localizer_from_checkpoint(tmp_path):
    from tedloc.pipeline.image_encoders import build_image_encoder
    from tedloc.pipeline.localizer import Localizer

    encoder = build_image_encoder("tiny-cnn", input_size=32)
    head = _head(in_dim=encoder.feature_dim)
    state = {"head_state": head.state_dict(), "head_config": head.config.to_dict(), "anchors": head.anchors,
             "class_names": ["a", "b", "c"], "encoder": "tiny-cnn", "input_size": 32, "threshold": 0.37}
    path = save_checkpoint(tmp_path / "model.pt", state)
    localizer = Localizer.from_checkpoint(path, "cpu")
    assert localizer.class_names == ["a", "b", "c"] and localizer.threshold == 0.37
    pixels = localizer.encoder.preprocess([np.zeros((20, 30, 3), np.uint8), np.full((40, 40, 3), 200, np.uint8)])
    out = localizer.predict(pixels)
    assert out.class_logits.shape == (2, 3) and out.maps.shape == (2, *encoder.grid)
    with torch.no_grad():
        expected = head(encoder(pixels).grid)
    assert torch.allclose(out.maps, expected.maps, atol=1e-6)
    assert torch.allclose(localizer.predict_features(encoder(pixels).grid).class_logits, expected.class_logits)
    bad = save_checkpoint(tmp_path / "bad.pt", {**state, "head_config": {"in_dim": 1}})
    with pytest.raises(ArtifactError, match="bad.pt"):
        Localizer.from_checkpoint(bad, "cpu")
