"""The pseudo-labels stage: artifact contents, resume after interruption, two processes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import h5py
import numpy as np
import pytest

from tedloc.artifacts.pseudo_labels import CLASSIFIER_FILE, open_pseudo_labels, read_classifier
from tedloc.configs.pseudo_labels import Config
from tedloc.errors import ConfigMismatchError
from tedloc.pipeline import forwards, grid_cams
from tedloc.pipeline.box_diagnostic import diagnostic_sample
from tedloc.stages import pseudo_labels as stage
from tests.helpers_data import make_wsol_tree, save_tiny_clip


def _config(root: Path, **kw) -> Config:
    # One forward per batch ([4 images; 4 flipped]) unless a test asks for another split.
    values = dict(dataset=str(root), encoder="tiny-cnn", input_size=32, num_workers=0, device="cpu",
                  batch_size=4, forward_batch_size=4, shard_size=8)
    values.update(kw)
    return Config(**values)


def _arrays(workdir: Path) -> dict[str, dict[str, np.ndarray]]:
    with open_pseudo_labels(workdir) as art:
        return {name: dict(zip(art.ids, art.read_all(name), strict=True))
                for name in ("cam", "pseudo_box", "label", "image_size", "features", "features_flip")
                if art.has(name)}


@pytest.fixture
def data(tmp_path) -> Path:
    return make_wsol_tree(tmp_path, splits={"train": 20}, num_classes=2, size=(40, 32))


def test_artifact_contents(data, tmp_path):
    manifest_path = stage.run(_config(data), workdir=tmp_path / "w")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["complete"] and manifest["num_images"] == 20
    assert manifest["method"] == "cam" and manifest["grid"] == [8, 8] and manifest["feature_dim"] == 32
    assert manifest["has_features"] and manifest["has_flip_features"]
    assert manifest["diagnostic"]["num_images"] == 20 and "diagnostic" in manifest["diagnostic"]["note"]
    assert 0 <= manifest["classifier_accuracy"] <= 1
    with open_pseudo_labels(tmp_path / "w") as art:
        assert len(art) == 20 and art.grid == (8, 8) and art.has_features
        cam = art.read_all("cam")
        assert cam.dtype == np.float16 and cam.shape == (20, 8, 8)
        assert cam.min() >= 0 and cam.max() <= 1
        assert art.read_all("features").shape == (20, 8, 8, 32)
        assert art.read_all("pseudo_box").dtype == np.float32
        assert art.read_all("image_size")[0].tolist() == [40, 32]
        clf = art.classifier()
        assert clf.weight.shape == (2, 32) and clf.bias.shape == (2,)
    # rerun: up to date, nothing recomputed
    assert stage.run(_config(data), workdir=tmp_path / "w", on_progress=_fail_hook) == manifest_path
    with pytest.raises(ConfigMismatchError):  # another box threshold than the default's
        stage.run(_config(data, box_threshold=0.45), workdir=tmp_path / "w")


def _fail_hook(step: str, done: int) -> None:
    raise AssertionError("nothing should be computed")


class _Interrupt(Exception):
    pass


def _run_interrupted(config: Config, workdir: Path, *, step: str, after: int) -> None:
    """Run the stage, interrupted once ``after`` images of ``step`` (encode, maps) are done."""

    def interrupt(at: str, done: int) -> None:
        if at == step and done >= after:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        stage.run(config, workdir=workdir, on_progress=interrupt)


def test_resume_computes_only_the_rest(data, tmp_path):
    reference = stage.run(_config(data), workdir=tmp_path / "ref")
    counts: list[int] = []

    def interrupt_after_12(step: str, done: int) -> None:
        if step == "maps":
            counts.append(done)
            if done >= 12:
                raise _Interrupt

    with pytest.raises(_Interrupt):
        stage.run(_config(data), workdir=tmp_path / "w", on_progress=interrupt_after_12)
    classifier_before = (tmp_path / "w/pseudo_labels" / CLASSIFIER_FILE).read_bytes()
    assert not (tmp_path / "w/pseudo_labels/manifest.json").exists()
    counts.clear()
    stage.run(_config(data), workdir=tmp_path / "w",
              on_progress=lambda step, done: counts.append(done) if step == "maps" else None)
    # shards of 8 images (one per staging file of shard_size images): the interruption came
    # after the second, so 16 images survived and only the other 4 were computed
    assert counts[-1] == 4
    assert (tmp_path / "w/pseudo_labels" / CLASSIFIER_FILE).read_bytes() == classifier_before
    got, want = _arrays(tmp_path / "w"), _arrays(reference.parent.parent)
    for name in want:
        assert got[name].keys() == want[name].keys()
        for image_id in want[name]:
            np.testing.assert_array_equal(got[name][image_id], want[name][image_id])


def _run_part(root: str, workdir: str, index: int) -> None:
    import torch

    torch.set_num_threads(1)
    stage.run(_config(Path(root), num_shards=2, shard_index=index), workdir=Path(workdir))


def test_two_processes_make_one_artifact(data, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_run_part, args=(str(data), str(tmp_path / "w"), i)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    manifest = json.loads((tmp_path / "w/pseudo_labels/manifest.json").read_text())
    assert manifest["complete"] and manifest["num_images"] == 20
    names = {Path(f).name[:13] for f in manifest["files"]}
    assert names == {"part000of002-", "part001of002-"}
    single = stage.run(_config(data), workdir=tmp_path / "single")
    got, want = _arrays(tmp_path / "w"), _arrays(single.parent.parent)
    for image_id, value in want["cam"].items():
        np.testing.assert_array_equal(got["cam"][image_id], value)


def test_bad_image_skipped_and_limit(data, tmp_path):
    (data / "images/train/0002.png").write_bytes(b"")
    manifest = json.loads(stage.run(_config(data, on_bad_image="skip", limit=10),
                                    workdir=tmp_path / "w").read_text())
    assert list(manifest["skipped"]) == ["images/train/0002.png"]
    assert manifest["num_images"] == 9
    with open_pseudo_labels(tmp_path / "w") as art:
        assert len(art) == 9 and "images/train/0002.png" not in art


def test_clip_es_stage_on_tiny_clip(data, tmp_path):
    folder = save_tiny_clip(tmp_path / "clip")
    config = _config(data, encoder=f"clip:{folder}", input_size=0, limit=6, cache_features="off",
                     clip_es_attention_layers=2)
    manifest = json.loads(stage.run(config, workdir=tmp_path / "w").read_text())
    assert manifest["method"] == "clip-es" and manifest["grid"] == [8, 8] and not manifest["has_features"]
    assert read_classifier(tmp_path / "w").weight.shape == (2, 24)
    with h5py.File(tmp_path / "w/pseudo_labels" / manifest["files"][0]) as handle:
        assert "features" not in handle and handle["cam"].shape[1:] == (8, 8)


def test_inspect_renders_a_map_overlay(data, tmp_path):
    inspect = pytest.importorskip("tedloc.artifacts.inspect_image")
    stage.run(_config(data, limit=4), workdir=tmp_path / "w")
    out = inspect.render_image(tmp_path / "w/pseudo_labels", "images/train/0001.png", tmp_path / "o.png")
    import cv2

    image = cv2.imread(str(out))
    assert image is not None and image.size > 0


# ----------------------------------------------------------------------------- one encoder pass

@pytest.fixture
def forward_calls(monkeypatch) -> list[int]:
    """Batch sizes of every encoder forward the stage makes (after the encoder's own probe)."""
    calls: list[int] = []
    real_build = stage.build_image_encoder

    def build(*args, **kwargs):
        encoder = real_build(*args, **kwargs)
        real_forward = encoder.forward

        def counted(pixels):
            calls.append(len(pixels))
            return real_forward(pixels)

        encoder.forward = counted
        return encoder

    monkeypatch.setattr(stage, "build_image_encoder", build)
    return calls


def test_encoder_runs_once_per_image_and_flip(data, tmp_path, forward_calls):
    stage.run(_config(data), workdir=tmp_path / "w")
    # 20 images in batches of 4: one forward of [4 images; 4 flipped] per batch, nothing else
    assert forward_calls == [8] * 5
    assert not (tmp_path / "w/pseudo_labels/encoded").exists()
    forward_calls.clear()
    stage.run(_config(data, cache_flip_features=False), workdir=tmp_path / "noflip")
    assert forward_calls == [4] * 5
    forward_calls.clear()
    stage.run(_config(data, forward_batch_size=0), workdir=tmp_path / "auto")  # CPU: [2 images; 2 flipped]
    assert forward_calls == [4] * 10


def test_forward_batch_splits_forwards_not_results(data, tmp_path, forward_calls):
    """forward_batch_size=3 over batches of 4: forwards of [3; 3 flipped] and [1; 1 flipped],
    and the same artifact as whole-batch forwards (up to float rounding of the encoder)."""
    stage.run(_config(data, forward_batch_size=4), workdir=tmp_path / "whole")
    assert forward_calls == [8] * 5
    forward_calls.clear()
    stage.run(_config(data, forward_batch_size=3), workdir=tmp_path / "split")
    assert forward_calls == [6, 2] * 5
    whole, split = _arrays(tmp_path / "whole"), _arrays(tmp_path / "split")
    for name in ("features", "features_flip", "cam"):
        for image_id, value in whole[name].items():
            np.testing.assert_allclose(split[name][image_id].astype(np.float32), value.astype(np.float32),
                                       rtol=2e-3, atol=2e-3)
    for image_id, value in whole["label"].items():
        assert split["label"][image_id] == value


def test_grids_rounded_into_reused_buffers_equal_the_returned_grids():
    import torch

    from tedloc.pipeline.image_encoders import build_image_encoder

    encoder = build_image_encoder("tiny-cnn", input_size=32, device=torch.device("cpu"))
    pixels = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pooled, grid, flip = forwards.encode_batch(encoder, pixels, with_flip=True, forward_batch=2)
    h, w = encoder.grid
    grid_out = np.full((7, h, w, encoder.feature_dim), np.nan, np.float16)  # more rows than the batch
    flip_out = grid_out.copy()
    pooled_b, grid_b, flip_b = forwards.encode_batch(encoder, pixels, with_flip=True, forward_batch=2,
                                                  grid_out=grid_out, flip_out=flip_out)
    assert grid_b.dtype == torch.float16 and grid_b.shape == (5, h, w, encoder.feature_dim)
    assert np.shares_memory(grid_b.numpy(), grid_out) and np.shares_memory(flip_b.numpy(), flip_out)
    torch.testing.assert_close(pooled_b, pooled)
    assert torch.equal(grid_b, grid.to(torch.float16)) and torch.equal(flip_b, flip.to(torch.float16))
    assert np.isnan(grid_out[5:].astype(np.float32)).all()  # rows past the batch untouched
    with pytest.raises(ValueError, match="flip_out"):
        forwards.encode_batch(encoder, pixels, with_flip=True, grid_out=grid_out)


def test_grid_cams_are_the_cams_of_the_rounded_grid():
    import torch

    from tedloc.pipeline import cam as cam_ops

    generator = torch.Generator().manual_seed(0)
    grid = torch.randn(37, 3, 4, 9, generator=generator)
    weight = torch.randn(5, 9, generator=generator)
    labels = torch.randint(0, 5, (37,), generator=generator)
    reference = cam_ops.minmax_normalize(cam_ops.class_activation_maps(grid.to(torch.float16).float(), weight, labels))
    for given in (grid, grid.to(torch.float16)):  # a fresh float32 grid, or a staged float16 one
        torch.testing.assert_close(grid_cams.cam_from_grid(given, weight, labels), reference, rtol=1e-5, atol=1e-5)
    assert grid_cams.cam_from_grid(grid[:0], weight, labels[:0]).shape == (0, 3, 4)


def test_two_pass_fallback_over_budget(data, tmp_path, forward_calls):
    """Grids over cache_budget_gb: pooled pass then map pass, same maps as one pass."""
    one = stage.run(_config(data, cache_features="off"), workdir=tmp_path / "one")
    assert forward_calls == [4] * 5
    forward_calls.clear()
    two = stage.run(_config(data, cache_features="off", cache_budget_gb=1e-9), workdir=tmp_path / "two")
    assert forward_calls == [4] * 10
    assert not json.loads(two.read_text())["has_features"]
    got, want = _arrays(tmp_path / "two"), _arrays(one.parent.parent)
    for name in ("cam", "pseudo_box"):
        for image_id, value in want[name].items():
            np.testing.assert_allclose(got[name][image_id], value, atol=1e-3)


def _assert_same_artifact(workdir: Path, reference: Path) -> None:
    got, want = _arrays(workdir), _arrays(reference)
    for name in want:
        assert got[name].keys() == want[name].keys()
        for image_id in want[name]:
            np.testing.assert_array_equal(got[name][image_id], want[name][image_id])


def test_resume_after_interruption_while_encoding(data, tmp_path, forward_calls):
    reference = stage.run(_config(data), workdir=tmp_path / "ref").parent.parent
    classifier_ref = read_classifier(reference)

    # after the first staging file (shard_size = 8 images)
    _run_interrupted(_config(data), tmp_path / "w", step="encode", after=8)
    staged = sorted(p.name for p in (tmp_path / "w/pseudo_labels/encoded").glob("*.h5"))
    assert staged == ["part000of001-00000.h5"]
    assert not (tmp_path / "w/pseudo_labels" / CLASSIFIER_FILE).exists()
    forward_calls.clear()
    stage.run(_config(data), workdir=tmp_path / "w")
    assert forward_calls == [8] * 3  # only the 12 images not staged
    np.testing.assert_array_equal(read_classifier(tmp_path / "w").weight, classifier_ref.weight)
    _assert_same_artifact(tmp_path / "w", reference)
    assert not (tmp_path / "w/pseudo_labels/encoded").exists()


def test_resume_after_interruption_while_writing_maps(data, tmp_path, forward_calls):
    reference = stage.run(_config(data), workdir=tmp_path / "ref").parent.parent

    _run_interrupted(_config(data), tmp_path / "w", step="maps", after=12)
    # staging files of 8 images each became a shard and its grid file (moved, not copied)
    # until the interruption after the second: the third (4 images) is still staged
    folder = tmp_path / "w/pseudo_labels"
    assert sorted(p.name for p in (folder / "shards").glob("*.h5")) == [
        "part000of001-00000.grids.h5", "part000of001-00000.h5",
        "part000of001-00001.grids.h5", "part000of001-00001.h5"]
    assert [p.name for p in (folder / "encoded").glob("*.h5")] == ["part000of001-00002.h5"]
    forward_calls.clear()
    stage.run(_config(data), workdir=tmp_path / "w")
    assert forward_calls == []  # maps of the other 12 come from their staged grids
    _assert_same_artifact(tmp_path / "w", reference)
    assert not (folder / "encoded").exists()


def test_kill_between_moving_a_grid_file_and_writing_its_shard(data, tmp_path, forward_calls, monkeypatch):
    """A staging file moved into shards/ as a grid file whose shard never got written is
    staged again by the next run, which then equals an uninterrupted run."""
    from tedloc.artifacts.store import ShardedWriter

    reference = stage.run(_config(data), workdir=tmp_path / "ref").parent.parent
    real_write = ShardedWriter.write_shard
    calls = []

    def dies_before_the_second_shard(self, image_ids, arrays, **kwargs):
        calls.append(kwargs.get("links"))
        if len(calls) == 2:
            raise _Interrupt  # the grid file is in shards/ already, its shard is not
        return real_write(self, image_ids, arrays, **kwargs)

    monkeypatch.setattr(ShardedWriter, "write_shard", dies_before_the_second_shard)
    with pytest.raises(_Interrupt):
        stage.run(_config(data), workdir=tmp_path / "w")
    monkeypatch.setattr(ShardedWriter, "write_shard", real_write)
    assert calls[0] == {"features": "part000of001-00000.grids.h5", "features_flip": "part000of001-00000.grids.h5"}
    shards = tmp_path / "w/pseudo_labels/shards"
    assert sorted(p.name for p in shards.iterdir()) == [
        "part000of001-00000.grids.h5", "part000of001-00000.h5", "part000of001-00001.grids.h5"]
    forward_calls.clear()
    stage.run(_config(data), workdir=tmp_path / "w")
    assert forward_calls == []  # the orphan's grids were staged again, not recomputed
    _assert_same_artifact(tmp_path / "w", reference)
    assert not (tmp_path / "w/pseudo_labels/encoded").exists()


def test_grids_are_written_once_and_the_artifact_can_be_moved(data, tmp_path):
    import shutil

    stage.run(_config(data), workdir=tmp_path / "w")
    shards = tmp_path / "w/pseudo_labels/shards"
    for shard in sorted(p for p in shards.glob("*.h5") if not p.name.endswith(".grids.h5")):
        with h5py.File(shard, "r") as handle:
            for name in ("features", "features_flip"):
                link = handle.get(name, getlink=True)
                assert isinstance(link, h5py.ExternalLink)
                assert link.filename == shard.name[:-len(".h5")] + ".grids.h5"  # a name, not a path
            assert "cam" in handle and not isinstance(handle.get("cam", getlink=True), h5py.ExternalLink)
    want = _arrays(tmp_path / "w")
    shutil.move(str(tmp_path / "w"), str(tmp_path / "moved"))
    got = _arrays(tmp_path / "moved")
    for name in ("features", "features_flip"):
        for image_id, value in want[name].items():
            np.testing.assert_array_equal(got[name][image_id], value)


def _feature_filters(workdir: Path) -> set[str | None]:
    filters = set()
    for path in sorted((workdir / stage.STAGE_DIR).rglob("*.h5")):
        with h5py.File(path, "r") as handle:
            for name in ("features", "features_flip"):
                if name in handle:
                    filters.add(handle[name].compression)
    return filters


def test_feature_compression_changes_storage_not_values(data, tmp_path):
    stage.run(_config(data), workdir=tmp_path / "raw")
    stage.run(_config(data, feature_compression="lzf"), workdir=tmp_path / "lzf")
    assert _feature_filters(tmp_path / "raw") == {None}
    assert _feature_filters(tmp_path / "lzf") == {"lzf"}
    raw, lzf = _arrays(tmp_path / "raw"), _arrays(tmp_path / "lzf")
    assert raw.keys() == lzf.keys()
    for name in raw:
        for image_id, value in raw[name].items():
            np.testing.assert_array_equal(lzf[name][image_id], value)


def test_diagnostic_scores_an_even_sample_when_capped(data, tmp_path):
    assert diagnostic_sample(list("abcdefghij"), 4) == list("adgj")
    assert diagnostic_sample(list("abc"), 0) == list("abc")
    full = json.loads(stage.run(_config(data), workdir=tmp_path / "all").read_text())["diagnostic"]
    capped = json.loads(stage.run(_config(data, diagnostic_images=5),
                                  workdir=tmp_path / "five").read_text())["diagnostic"]
    assert (full["num_images"], full["num_images_with_boxes"]) == (20, 20)
    assert (capped["num_images"], capped["num_images_with_boxes"]) == (5, 20)


def test_diagnostic_is_the_same_in_worker_processes_and_in_any_chunks(data, tmp_path, monkeypatch):
    from tedloc.data.open import open_dataset
    from tedloc.pipeline import box_diagnostic
    from tedloc.pipeline.metrics import threshold_grid

    stage.run(_config(data), workdir=tmp_path / "w")
    by_id = open_dataset(str(data), "train").by_id()
    with open_pseudo_labels(tmp_path / "w") as art:
        ids = art.ids
        cams, sizes = art.read_many("cam", ids), art.read_many("image_size", ids)
    boxes = [by_id[i].boxes for i in ids]
    thresholds = threshold_grid(0.01)
    serial = box_diagnostic.maxboxacc_v2(cams, boxes, sizes, ids, thresholds, workers=1)
    monkeypatch.setattr(box_diagnostic, "CHUNK", 3)  # 7 tasks over 20 images
    parallel = box_diagnostic.maxboxacc_v2(cams, boxes, sizes, ids, thresholds, workers=2)
    assert serial is not None and parallel == serial
    with box_diagnostic.BoxDiagnostic(thresholds, workers=2) as pieces:  # as the stage adds them
        for part in (slice(0, 5), slice(5, 6), slice(6, 20)):
            pieces.add(ids[part], cams[part], boxes[part], sizes[part])
        with pytest.raises(ValueError, match="scored twice"):
            pieces.add(ids[:1], cams[:1], boxes[:1], sizes[:1])
        assert pieces.value() == serial
    manifest = json.loads((tmp_path / "w/pseudo_labels/manifest.json").read_text())
    assert manifest["diagnostic"]["maxboxacc_v2"] == round(serial, 2)


def test_diagnostic_of_a_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    """Maps of the first run are scored from the shards, those of the second as made."""
    reference = json.loads(stage.run(_config(data), workdir=tmp_path / "ref").read_text())["diagnostic"]

    _run_interrupted(_config(data), tmp_path / "w", step="maps", after=8)
    resumed = json.loads(stage.run(_config(data), workdir=tmp_path / "w").read_text())["diagnostic"]
    assert resumed == reference


def test_disk_and_memory_strategies_change_speed_not_values(data, tmp_path, monkeypatch):
    """Every switch of IOStrategy off (plain h5py, no page-cache drop, writes in the encoder's
    thread, grids copied into the shards, malloc left alone): the same values, the grids
    stored in the shards themselves."""
    import dataclasses

    from tedloc.artifacts import io_strategy

    stage.run(_config(data), workdir=tmp_path / "on")
    plain = io_strategy.IOStrategy(**{f.name: False for f in dataclasses.fields(io_strategy.IOStrategy)})
    monkeypatch.setattr(io_strategy, "DEFAULT", plain)
    stage.run(_config(data, cpu_keep_freed_memory=False), workdir=tmp_path / "off")
    _assert_same_artifact(tmp_path / "off", tmp_path / "on")
    shards = tmp_path / "off/pseudo_labels/shards"
    assert not list(shards.glob("*.grids.h5"))
    for shard in shards.glob("*.h5"):
        with h5py.File(shard, "r") as handle:
            assert isinstance(handle.get("features", getlink=True), h5py.HardLink)
