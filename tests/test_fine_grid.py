"""A finer stage packed into the encoder grid: packing, the fine decoder's shapes, '-fine' encoders."""

import json

import numpy as np
import pytest
import torch

from tedloc.pipeline import fine_grid
from tedloc.pipeline.image_encoders import build_image_encoder
from tedloc.pipeline.model import HeadConfig, TedLocHead


def test_pack_and_unpack_are_inverse_and_keep_each_fine_cell_under_its_coarse_cell():
    grid = torch.randn(2, 3, 4, 5)
    fine = torch.randn(2, 6, 8, 7)
    packed = fine_grid.pack(grid, fine)
    assert packed.shape == (2, 3, 4, 5 + 4 * 7)
    coarse, back = fine_grid.unpack(packed, 7)
    assert torch.equal(coarse, grid.permute(0, 3, 1, 2)) and torch.equal(back, fine.permute(0, 3, 1, 2))
    # fine cell (y, x) = (5, 2) lies under coarse cell (2, 1), at offset (1, 0) of its block:
    # channel k of it is packed channel 5 + 4k + 2
    assert torch.equal(packed[1, 2, 1, 5 + 4 * 3 + 2], fine[1, 5, 2, 3])
    with pytest.raises(ValueError, match="not 2× the grid"):
        fine_grid.pack(grid, torch.randn(2, 6, 6, 7))
    with pytest.raises(ValueError, match="cannot hold"):
        fine_grid.unpack(torch.randn(1, 2, 2, 8), 2)


@pytest.mark.parametrize("decoder", ["conv", "transformer", "linear"])
def test_fine_head_maps_are_twice_the_grid(decoder):
    config = HeadConfig(in_dim=16 + 4 * 6, embed_dim=8, num_classes=3, decoder=decoder, width=16, heads=2,
                        fine_dim=6, fine_width=8)
    torch.manual_seed(0)
    head = TedLocHead(config, torch.randn(3, 8))
    out = head(torch.randn(2, 5, 7, 40))
    assert out.z.shape == (2, 10, 14, 8) and out.patch_logits.shape == (2, 10, 14)
    assert out.class_logits.shape == (2, 3) and head.map_grid((5, 7)) == (10, 14)
    # the fine stage reaches the maps cell by cell: poke the fine channels packed in coarse
    # cell (2, 3), i.e. fine cells (4..5, 6..7); a far corner moves less (only through the
    # normalization, whose statistics span the grid)
    grid = torch.randn(1, 5, 7, 40, generator=torch.Generator().manual_seed(1))
    poked = grid.clone()
    poked[0, 2, 3, 16:] += 5.0
    with torch.no_grad():
        diff = (head(poked).z - head(grid).z).norm(dim=-1)[0]
    assert diff[4:6, 6:8].min() > 3 * diff[0:2, 0:2].max()


def test_plain_head_is_unchanged_by_the_fine_fields():
    config = HeadConfig(in_dim=12, embed_dim=8, num_classes=3)
    assert config.fine_dim == 0 and TedLocHead(config, torch.randn(3, 8)).map_grid((4, 4)) == (4, 4)
    # checkpoints written before the fields existed still load
    values = config.to_dict()
    del values["fine_dim"], values["fine_width"]
    assert HeadConfig.from_dict(values) == config


def test_upsample_maps_to_the_fine_grid():
    maps = torch.zeros(2, 3, 3)
    maps[0, 1, 1] = 1.0
    up = fine_grid.upsample_maps(maps, (6, 6))
    assert up.shape == (2, 6, 6) and up[0].max() == 1.0 and up[0].min() == 0.0
    assert torch.equal(up[1], torch.zeros(6, 6))  # a constant map stays constant
    assert torch.equal(fine_grid.upsample_maps(maps, (3, 3)), maps)  # already at the grid


def test_tiny_cnn_fine_packs_its_stride_2_layer():
    plain = build_image_encoder("tiny-cnn", input_size=32)
    fine = build_image_encoder("tiny-cnn-fine", input_size=32)
    assert fine.spec == "tiny-cnn-fine" and fine.grid == plain.grid == (8, 8)
    assert fine.fine_dim == 16 and plain.fine_dim == 0
    assert fine.feature_dim == plain.feature_dim + 4 * 16
    assert fine.fingerprint != plain.fingerprint
    pixels = torch.rand(1, 3, 32, 32)
    a, b = plain(pixels), fine(pixels)
    assert torch.equal(b.grid[..., :32], a.grid)  # the coarse part is the plain grid
    _, early = fine_grid.unpack(b.grid, 16)
    assert torch.allclose(early[0], fine.net[:2](pixels)[0])


def test_efficientnet_lite0_fine_grid():
    plain = build_image_encoder("efficientnet-lite0")
    fine = build_image_encoder("efficientnet-lite0-fine")
    assert fine.grid == (14, 14) and fine.fine_dim == 40 and fine.feature_dim == 1392 + 160
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (1, 224, 224, 3), dtype=np.uint8))
    with torch.inference_mode():
        a, b = plain(plain.normalize(pixels)), fine(fine.normalize(pixels))
    assert torch.allclose(b.grid[..., :1392], a.grid, atol=1e-5)
    coarse, early = fine_grid.unpack(b.grid, 40)
    assert early.shape == (1, 40, 28, 28)
    assert torch.allclose(b.pooled, b.grid.mean(dim=(1, 2)))


def test_the_stages_run_on_a_fine_encoder_and_give_maps_twice_as_fine(tmp_path):
    from tedloc.artifacts.checkpoint import load_checkpoint
    from tedloc.configs.evaluate import Config as EvaluateConfig
    from tedloc.stages import evaluate
    from tedloc.stages.predict import predict_images
    from tests.helpers_data import make_wsol_tree, save_tiny_clip
    from tests.helpers_model import train_real_pipeline

    root = make_wsol_tree(tmp_path, splits={"train": 8, "test": 4}, num_classes=2)
    workdir = tmp_path / "work"
    model = train_real_pipeline(workdir, root, save_tiny_clip(tmp_path / "clip"), encoder="tiny-cnn-fine")
    manifest = json.loads((workdir / "pseudo_labels" / "manifest.json").read_text())
    assert manifest["encoder"] == "tiny-cnn-fine" and manifest["grid"] == [16, 16]
    assert manifest["fine_dim"] == 16 and manifest["feature_dim"] == 32 + 4 * 16
    state = load_checkpoint(model)
    assert state["head_config"]["fine_dim"] == 16 and state["encoder"] == "tiny-cnn-fine"
    evaluate.run(EvaluateConfig(num_workers=0, device="cpu", num_overlays=0), workdir=workdir)
    results = json.loads((workdir / "evaluate" / "data-test" / "results.json").read_text())
    assert results["num_images"] == 4
    (pred,) = predict_images([root / "images" / "test" / "0001.png"], checkpoint=model, device="cpu",
                             maps=True)["predictions"]
    # The coarse grid 16×16 at 64 px; twice as fine (32×32), and read at twice the size (inference_scale 2).
    assert state["inference_input_size"] == 128 and pred["map_size"] == [64, 64]
