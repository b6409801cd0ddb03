"""``tedloc predict`` through the CLI, as a new user runs it on image files."""

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from tedloc.cli import app
from tests.helpers_data import draw_image, make_wsol_tree
from tests.helpers_model import THRESHOLD, make_model_workdir


@pytest.fixture
def trained(tmp_path):
    root = make_wsol_tree(tmp_path, splits={"train": 4}, num_classes=2)
    workdir = make_model_workdir(tmp_path / "work", root, pseudo_labels=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i, size in enumerate([(80, 60), (50, 90)]):
        image, _ = draw_image(rng, i % 2, size)
        cv2.imwrite(str(photos / f"p{i}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return workdir, photos


def _run(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def test_predict_one_file_prints_json(trained):
    workdir, photos = trained
    result = _run("--workdir", workdir, "predict", photos / "p0.jpg", "--maps")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["threshold"] == THRESHOLD  # the checkpoint's stored threshold
    (pred,) = out["predictions"]
    assert pred["image"].endswith("p0.jpg")
    assert pred["image_size"] == [80, 60]
    assert pred["class_name"] in ("class0", "class1")
    assert len(pred["top5"]) == 2 and pred["top5"][0]["class"] == pred["class"]
    assert sum(t["score"] for t in pred["top5"]) == pytest.approx(1.0, abs=1e-5)
    assert np.asarray(pred["map"]).shape == tuple(pred["map_size"])
    for x0, y0, x1, y1 in pred["boxes"]:
        assert 0 <= x0 <= x1 <= 80 and 0 <= y0 <= y1 <= 60
    assert pred["box"] is None or pred["box"] in pred["boxes"]


def test_predict_prints_class_score_and_boxes_and_maps_only_when_asked(trained):
    workdir, photos = trained
    result = _run("--workdir", workdir, "predict", photos / "p0.jpg")
    assert result.exit_code == 0, result.output
    (pred,) = json.loads(result.stdout)["predictions"]
    assert {"class_name", "score", "boxes", "box", "top5"} <= set(pred)
    assert "map" not in pred and "map_size" not in pred  # no grid of numbers unless --maps


def test_predict_folder_to_file_with_overlays_and_threshold(trained, tmp_path):
    workdir, photos = trained
    out_json = tmp_path / "out.json"
    overlays = tmp_path / "ov"
    result = _run("--workdir", workdir, "predict", photos, "--out-json", out_json,
                  "--overlays", overlays, "--threshold", "0.8",
                  "--checkpoint", workdir / "train" / "model.pt")
    assert result.exit_code == 0, result.output
    out = json.loads(out_json.read_text())
    assert out["threshold"] == 0.8
    assert [p["image"].rsplit("/", 1)[-1] for p in out["predictions"]] == ["p0.jpg", "p1.jpg"]
    pngs = sorted(overlays.glob("*.png"))
    assert len(pngs) == 2
    assert cv2.imread(str(pngs[1])).shape[:2] == (90, 50)  # drawn on the original image


def test_bad_image_is_one_line_error_or_skipped(trained):
    workdir, photos = trained
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    result = _run("--workdir", workdir, "predict", photos / "p0.jpg", photos / "broken.png")
    assert result.exit_code == 1
    assert "broken.png" in result.output and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]

    result = _run("--workdir", workdir, "predict", photos, "--on-bad-image", "skip")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out["predictions"]) == 2
    assert [k.rsplit("/", 1)[-1] for k in out["skipped"]] == ["broken.png"]


def test_missing_file_or_checkpoint_is_one_line_error(trained, tmp_path):
    workdir, photos = trained
    result = _run("--workdir", workdir, "predict", photos / "nope.jpg")
    assert result.exit_code == 1 and "nope.jpg" in result.output
    result = _run("--workdir", tmp_path / "empty", "predict", photos / "p0.jpg")
    assert result.exit_code == 1 and "model.pt" in result.output


def test_predict_after_the_real_pipeline(tmp_path):
    """A new user's path: text-embed -> pseudo-labels -> train -> evaluate, then predict."""
    from tedloc.configs.evaluate import Config as EvaluateConfig
    from tedloc.stages import evaluate
    from tests.helpers_data import save_tiny_clip
    from tests.helpers_model import train_real_pipeline

    root = make_wsol_tree(tmp_path, splits={"train": 8, "test": 4}, num_classes=2)
    workdir = tmp_path / "work"
    model = train_real_pipeline(workdir, root, save_tiny_clip(tmp_path / "clip"))
    evaluate.run(EvaluateConfig(num_workers=0, device="cpu", num_overlays=1), workdir=workdir)
    results = json.loads((workdir / "evaluate" / "data-test" / "results.json").read_text())
    assert results["num_images"] == 4 and set(results["methods"]) == {"tedloc", "cam_baseline", "centre_prior"}

    image = root / "images" / "test" / "0001.png"
    result = _run("--workdir", workdir, "predict", image)
    assert result.exit_code == 0, result.output
    (pred,) = json.loads(result.stdout)["predictions"]
    assert pred["class_name"] in ("class0", "class1") and pred["image_size"] == [48, 40]
    # The same image through evaluate gives the same class and boxes (same map processing;
    # evaluate stores maps as float16, which may move a box edge by one 224-grid pixel).
    line = next(json.loads(x) for x in (workdir / "evaluate" / "data-test" / "predictions.jsonl").read_text().splitlines()
                if json.loads(x)["image_id"] == "images/test/0001.png")
    assert line["class"] == pred["class"]
    assert len(line["boxes"]) == len(pred["boxes"])
    for ours, theirs in zip(line["boxes"], pred["boxes"], strict=True):
        assert ours == pytest.approx(theirs, abs=0.5)
    assert model.is_file()
