"""Every row a stage stores belongs to its own image, however the threads and processes
that hand work to each other are delayed (see ``tests/handoff_faults.py``).

Each stored row is compared with a direct computation for its image id: the encoder run on
that image alone (features and flipped features), the CAM of its own stored grid, the
pseudo box of its own map, and for evaluate the model's map of that image.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tedloc.artifacts.pseudo_labels import open_pseudo_labels
from tedloc.configs.evaluate import Config as EvaluateConfig
from tedloc.configs.pseudo_labels import Config as PseudoConfig
from tedloc.data.open import open_dataset
from tedloc.pipeline import cam as cam_ops
from tedloc.pipeline.grid_cams import cam_from_grid
from tedloc.pipeline.image_encoders import build_image_encoder
from tedloc.stages import evaluate
from tedloc.stages import pseudo_labels as pseudo_stage
from tests.handoff_faults import slow_handoffs
from tests.helpers_data import make_wsol_tree
from tests.helpers_model import make_model_workdir

INPUT_SIZE = 32


def _direct_grids(root: Path, ids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """id -> (grid, flipped grid), float32 (h, w, c): the encoder on that image alone."""
    dataset = open_dataset(str(root), "train")
    by_id = {r.image_id: r for r in dataset.records}
    encoder = build_image_encoder("tiny-cnn", input_size=INPUT_SIZE, device="cpu")
    out = {}
    for image_id in ids:
        pixels, _ = dataset.load_resized(by_id[image_id], INPUT_SIZE)
        x = encoder.normalize(torch.from_numpy(pixels[None]))
        with torch.inference_mode():
            grid = encoder(torch.cat([x, x.flip(-1)])).grid.float().numpy()
        out[image_id] = (grid[0], grid[1])
    return out


def _assert_own_rows(stored: dict[str, np.ndarray], direct: dict[str, np.ndarray], what: str) -> None:
    """Each stored float16 row equals its own image's direct row (to float16 rounding), and is
    nearer to it than to any other image's."""
    ids = sorted(direct)
    want = np.stack([direct[i] for i in ids]).reshape(len(ids), -1)
    for k, image_id in enumerate(ids):
        got = np.asarray(stored[image_id], np.float32).reshape(-1)
        distances = np.abs(want - got).max(axis=1)
        nearest = ids[int(distances.argmin())]
        assert nearest == image_id, f"{what} of {image_id} is the row of {nearest}"
        np.testing.assert_allclose(got, want[k], rtol=2e-3, atol=2e-3, err_msg=f"{what} of {image_id}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pseudo_label_rows_belong_to_their_image_under_slow_handoffs(tmp_path, monkeypatch, seed):
    root = make_wsol_tree(tmp_path, splits={"train": 64}, num_classes=3, size=(40, 32), seed=seed)
    # Batches of 4 in staging files of 8 images: a file boundary every other batch, where
    # one file's writer thread is still busy while the next file's starts.
    config = PseudoConfig(dataset=str(root), encoder="tiny-cnn", input_size=INPUT_SIZE, num_workers=0,
                          device="cpu", batch_size=4, forward_batch_size=2, shard_size=8,
                          cache_features="on", cache_flip_features=True, diagnostic_workers=2)
    with slow_handoffs(monkeypatch, seed=seed) as delays:
        pseudo_stage.run(config, workdir=tmp_path / "w")
    assert delays.count > 0
    with open_pseudo_labels(tmp_path / "w") as art:
        ids = list(art.ids)
        assert sorted(ids) == sorted(r.image_id for r in open_dataset(str(root), "train").records)
        stored = {name: dict(zip(ids, art.read_all(name), strict=True))
                  for name in ("features", "features_flip", "cam", "pseudo_box", "label")}
        weight = torch.as_tensor(art.classifier().weight)
    direct = _direct_grids(root, ids)
    _assert_own_rows(stored["features"], {i: g for i, (g, _) in direct.items()}, "features")
    _assert_own_rows(stored["features_flip"], {i: f for i, (_, f) in direct.items()}, "flipped features")
    for image_id in ids:
        grid = torch.from_numpy(np.asarray(stored["features"][image_id])[None])
        label = torch.as_tensor([int(stored["label"][image_id])])
        cam = cam_from_grid(grid, weight, label).numpy()
        np.testing.assert_array_equal(stored["cam"][image_id], cam[0].astype(np.float16),
                                      err_msg=f"CAM of {image_id}")
        box = cam_ops.pseudo_boxes_of_grid_maps(cam.astype(np.float16), INPUT_SIZE, config.box_threshold)
        np.testing.assert_array_equal(stored["pseudo_box"][image_id], box[0], err_msg=f"box of {image_id}")


@pytest.mark.slow
def test_evaluate_rows_belong_to_their_image_under_slow_handoffs(tmp_path, monkeypatch):
    from tedloc.pipeline.localizer import Localizer
    from tedloc.pipeline.metrics import evaluation_map

    root = make_wsol_tree(tmp_path, splits={"train": 8, "test": 24}, num_classes=2, size=(48, 40))
    workdir = make_model_workdir(tmp_path / "w", root)
    quiet_dir = tmp_path / "quiet"
    shutil.copytree(workdir, quiet_dir)
    config = EvaluateConfig(dataset=str(root), batch_size=4, shard_size=8, num_workers=0, num_overlays=0,
                            device="cpu")
    evaluate.run(config, workdir=quiet_dir)
    # Decoding worker processes and scoring processes, every hand-off delayed.
    with slow_handoffs(monkeypatch, seed=3) as delays:
        evaluate.run(config.replace(num_workers=2, batch_size=3, shard_size=5), workdir=workdir)
    assert delays.count > 0
    rows = _evaluate_rows(workdir)

    dataset = open_dataset(str(root), "test")
    assert sorted(rows) == sorted(r.image_id for r in dataset.records)
    localizer = Localizer.from_checkpoint(workdir / "train/model.pt", "cpu")
    direct = {}
    for record in dataset.records:
        pixels, _ = dataset.load_resized(record, localizer.encoder.input_size)
        with torch.inference_mode():
            out = localizer.predict(localizer.encoder.normalize(torch.from_numpy(pixels[None])))
        direct[record.image_id] = {"map": evaluation_map(out.maps[0].float().numpy(), config.eval_size),
                                   "class_logits": out.class_logits[0].float().numpy()}
    for name in ("map", "class_logits"):
        _assert_own_rows({i: r[name] for i, r in rows.items()}, {i: d[name] for i, d in direct.items()}, name)
    # The CAM baseline's maps and every metric: as in a run with no concurrency at all.
    quiet_rows = _evaluate_rows(quiet_dir)
    for image_id, row in rows.items():
        np.testing.assert_array_equal(row["cam_map"], quiet_rows[image_id]["cam_map"], err_msg=image_id)
    got, want = (json.loads((d / "evaluate/data-test/results.json").read_text()) for d in (workdir, quiet_dir))
    assert got["methods"] == want["methods"]


def _evaluate_rows(workdir: Path) -> dict[str, dict[str, np.ndarray]]:
    from tedloc.artifacts.evaluate import FORMAT
    from tedloc.artifacts.store import ShardedReader

    with ShardedReader(workdir / "evaluate" / "data-test", FORMAT) as reader:
        return {i: {name: reader.read(name, i) for name in ("map", "cam_map", "class_logits")}
                for i in reader.ids}
