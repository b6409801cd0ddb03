"""`tedloc --help`, `tedloc stage --help` and `tedloc inspect` on a small artifact."""

from pathlib import Path

import cv2
import h5py
import numpy as np
from typer.testing import CliRunner

from tedloc.artifacts.inspect import describe
from tedloc.artifacts.inspect_image import render_image
from tedloc.artifacts.store import ArtifactHeader, ShardedWriter
from tedloc.cli import app

runner = CliRunner()


def make_dataset(root: Path) -> Path:
    (root / "img").mkdir(parents=True)
    meta = root / "metadata" / "train"
    meta.mkdir(parents=True)
    for name in ("p.png", "q.png"):
        ok, data = cv2.imencode(".png", np.full((40, 80, 3), 120, np.uint8))
        (root / "img" / name).write_bytes(data.tobytes())
    (meta / "image_ids.txt").write_text("img/p.png\nimg/q.png\n")
    (meta / "class_labels.txt").write_text("img/p.png,0\nimg/q.png,0\n")
    return root


def make_artifact(workdir: Path, dataset: Path | None, *, finish: bool = True) -> Path:
    stage = workdir / "pseudo_labels"
    head = ArtifactHeader(format="tedloc.pseudo_labels", format_version=1,
                          config={"threshold": 0.2, "encoder": "tiny-cnn"}, config_hash="cafe01")
    cam = np.zeros((2, 7, 7), np.float16)
    cam[0, 2:5, 2:5] = 1.0
    cam[1, 0, 0] = 1.0
    with ShardedWriter(stage, head) as writer:
        writer.open()
        writer.write_shard(["img/p.png"], {"cam": cam[:1], "label": np.array([0]),
                                           "pseudo_box": np.array([[1, 2, 3, 4]], np.float32)},
                           dataset_attrs={"pseudo_box": {"box_format": "x0y0x1y1"}})
        writer.write_shard(["img/q.png"], {"cam": cam[1:], "label": np.array([0]),
                                           "pseudo_box": np.array([[0, 0, 1, 1]], np.float32)},
                           skipped={"img/r.png": "cannot decode image"})
        if finish:
            extra = {"dataset": str(dataset), "split": "train"} if dataset else {}
            writer.finish(["img/p.png", "img/q.png", "img/r.png"],
                          extra={"grid": [7, 7], "input_size": 7, **extra})
    return stage


def test_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "stage" in result.output and "inspect" in result.output
    assert "data" in result.output
    result = runner.invoke(app, ["stage", "--help"])
    assert result.exit_code == 0 and "Run one stage" in result.output
    result = runner.invoke(app, ["data", "check", "--help"])
    assert result.exit_code == 0 and "--decode" in result.output


def test_inspect_stage_dir(tmp_path):
    stage = make_artifact(tmp_path / "work", make_dataset(tmp_path / "ds"))
    result = runner.invoke(app, ["inspect", str(stage)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "finished: yes" in out
    assert "format: tedloc.pseudo_labels" in out and "config_hash: cafe01" in out
    assert "threshold = 0.2" in out  # the config
    assert "images done: 2 in 2 shard(s); skipped: 1" in out
    assert "skipped img/r.png: cannot decode image" in out
    assert "cam: float16 (1, 7, 7)" in out and "pseudo_box: float32 (1, 4)" in out
    assert "@box_format = x0y0x1y1" in out


def test_inspect_unfinished_workdir_and_file(tmp_path):
    work = tmp_path / "work"
    stage = make_artifact(work, None, finish=False)
    (stage / "shards" / "part000of001-00002.h5.123.tmp").write_bytes(b"half")
    text = describe(work)
    assert text.startswith(f"workdir {work}: 1 stage(s): pseudo_labels")
    assert "finished: no" in text and "images done: 2" in text
    assert "unfinished temporary files (removed by the next run): 1" in text

    shard = sorted((stage / "shards").glob("*.h5"))[0]
    result = runner.invoke(app, ["inspect", str(shard)])
    assert result.exit_code == 0, result.output
    assert "@format = tedloc.pseudo_labels" in result.output and "image_ids: object (1,)" in result.output

    # A plain HDF5 file with one group per image is described too.
    other = tmp_path / "groups.h5"
    with h5py.File(other, "w") as handle:
        handle.create_dataset("x/map", data=np.zeros((3, 3), np.float32))
    assert "x/map: float32 (3, 3)" in describe(other)


def test_inspect_missing_path_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "not found" in result.output


def test_render_overlay_and_map_alone(tmp_path):
    stage = make_artifact(tmp_path / "work", make_dataset(tmp_path / "ds"))
    out = tmp_path / "p.png"
    result = runner.invoke(app, ["inspect", str(stage), "--image", "img/p.png", "--out", str(out)])
    assert result.exit_code == 0, result.output
    picture = cv2.imread(str(out))
    # The image (80x40 scaled to 512x256) and one overlay tile for `cam`.
    assert picture.shape == (256, 1024, 3)
    overlay = picture[:, 512:]
    centre, corner = overlay[128, 256].astype(int), overlay[240, 20].astype(int)
    assert centre[2] > centre[0]  # hot (red in BGR) where the map is 1
    assert corner[0] > corner[2]  # cold (blue) where it is 0
    # pseudo_box [1, 2, 3, 4] in the 7x7 input frame: its top edge at y = 2/7 * 256 = 73.
    assert (overlay[73, 100] > 230).all()

    # Without a dataset in the manifest: the map alone, square like the 7x7 grid.
    bare = make_artifact(tmp_path / "work2", None)
    written = render_image(bare, "img/q.png", tmp_path / "q.png")
    assert cv2.imread(str(written)).shape == (256, 256, 3)

    result = runner.invoke(app, ["inspect", str(stage), "--image", "img/zzz.png", "--out", str(out)])
    assert result.exit_code == 1 and "no image 'img/zzz.png'" in result.output
