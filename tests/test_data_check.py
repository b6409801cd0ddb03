"""`tedloc data check` lists every problem of a dataset with its file and line (exit code 1)."""

from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from tedloc.cli import app
from tedloc.data.check import check_dataset

runner = CliRunner()


def write_image(path: Path, width: int = 8, height: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, np.full((height, width, 3), 90, np.uint8))
    path.write_bytes(data.tobytes())
    return path


def write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_clean(root: Path) -> Path:
    for name in ("a.png", "b.png", "c.png"):
        write_image(root / "img" / name)
    meta = root / "metadata" / "test"
    write_text(root / "metadata" / "class_names.txt", ["cat", "dog"])
    write_text(meta / "image_ids.txt", ["img/a.png", "img/b.png", "img/c.png"])
    write_text(meta / "class_labels.txt", ["img/a.png,0", "img/b.png,1", "img/c.png,1"])
    write_text(meta / "localization.txt", ["img/a.png,1,1,7,5", "img/b.png,0,0,3,3", "img/c.png,2,2,4,4"])
    return root


def check(root: Path, *args: str):
    result = runner.invoke(app, ["data", "check", str(root), "--split", "test", *args])
    return result.exit_code, result.output


def test_clean_dataset_passes(tmp_path):
    code, out = check(make_clean(tmp_path / "ds"), "--decode")
    assert code == 0, out
    assert "no problems found" in out
    assert "cat" in out and "dog" in out and "3 images" in out


def test_every_kind_of_problem_with_file_and_line(tmp_path):
    root = make_clean(tmp_path / "ds")
    meta = root / "metadata" / "test"
    (root / "img" / "c.png").write_bytes(b"")  # unreadable (found only with --decode)
    write_image(root / "img" / "e.png")
    write_image(root / "img" / "f.png")
    write_text(meta / "image_ids.txt", [
        "img/a.png", "img/b.png", "img/c.png",
        "img/d.png",  # line 4: missing file
        "img/a.png",  # line 5: duplicate id
        "img/e.png",  # line 6: no label line
        "img/f.png",  # line 7
    ])
    write_text(meta / "class_labels.txt", [
        "img/a.png,0", "img/b.png,1", "img/c.png,1", "img/d.png,0",
        "img/f.png,5",  # line 5: label out of range
        "img/zzz.png,0",  # line 6: id not in image_ids.txt
    ])
    write_text(meta / "localization.txt", [
        "img/a.png,1,1,7,5",
        "img/b.png,0,0,30,3",  # line 2: outside the 8x6 image
        "img/b.png,5,1,2,4",  # line 3: inverted
    ])
    code, out = check(root, "--decode")
    assert code == 1, out
    ids, labels, loc = (str(meta / n) for n in ("image_ids.txt", "class_labels.txt", "localization.txt"))
    expected = [
        f"{ids}:4: image file not found",
        f"{ids}:5: duplicate image id 'img/a.png'",
        f"{ids}:6: image id 'img/e.png' has no line in class_labels.txt",
        f"{labels}:5: label 5 of 'img/f.png' is outside 0..1",
        f"{labels}:6: image id 'img/zzz.png' is not in image_ids.txt",
        f"{loc}:2: box [0.0, 0.0, 30.0, 3.0] of img/b.png is outside the 8x6 image",
        f"{loc}:3: inverted box",
        f"{ids}:3: unreadable image",
    ]
    for fragment in expected:
        assert fragment in out, f"{fragment!r} not in:\n{out}"
    assert "empty (0 bytes)" in out

    # Without --decode the empty file is not opened; the other problems are still found.
    code, out = check(root, "--no-decode")
    assert code == 1 and "unreadable image" not in out and f"{ids}:4: image file not found" in out


def test_cub_index_mismatch(tmp_path):
    root = tmp_path / "CUB_200_2011"
    write_image(root / "images" / "001.A/x.jpg", 10, 10)
    write_text(root / "classes.txt", ["1 001.A"])
    write_text(root / "images.txt", ["1 001.A/x.jpg", "2 001.A/y.jpg"])
    write_text(root / "image_class_labels.txt", ["1 1", "2 1", "3 1"])
    write_text(root / "train_test_split.txt", ["1 0"])
    write_text(root / "bounding_boxes.txt", ["1 2 2 20 3"])
    report = check_dataset(str(root), "test", decode=False)
    rendered = report.render()
    assert f"{root / 'image_class_labels.txt'}:3: image number 3 is not in images.txt" in rendered
    assert "image number 2 (001.A/y.jpg) has no train/test flag" in rendered
    assert f"{root / 'bounding_boxes.txt'}:1: box [2.0, 2.0, 22.0, 5.0]" in rendered  # outside 10x10
    assert len(report.problems) == 3
    assert all(len(p) == 3 for p in report.problems)  # (file, line, problem)


def test_unopenable_dataset_is_a_problem_not_a_crash(tmp_path):
    code, out = check(tmp_path / "nothing-here")
    assert code == 1 and "dataset not found" in out


def test_imagefolder_and_hf_problems(tmp_path):
    root = tmp_path / "folder"
    write_image(root / "cat" / "1.png", 8, 6)
    write_image(root / "cat" / "2.png", 8, 6)
    write_text(root / "boxes.csv", ["relative_path,x0,y0,x1,y1", "cat/1.png,0,0,9,5",
                                    "cat/9.png,0,0,1,1", "cat/2.png,3,3,1,1"])
    code, out = check(root)
    assert code == 1
    boxes = root / "boxes.csv"
    assert f"{boxes}:2: box [0.0, 0.0, 9.0, 5.0] of cat/1.png is outside the 8x6 image" in out
    assert f"{boxes}:3: image 'cat/9.png' is not in the folder tree" in out
    assert f"{boxes}:4: invalid or inverted box" in out

    import datasets

    ok, png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    test = datasets.Dataset.from_dict({"image": [{"bytes": png.tobytes(), "path": None},
                                                 {"bytes": b"\xff\xd8\xff broken", "path": None}],
                                       "label": [-1, 1]}, features=features)
    datasets.DatasetDict({"test": test}).save_to_disk(str(tmp_path / "hf"))
    report = check_dataset(f"hf:{tmp_path / 'hf'}", "test", decode=True)
    problems = [p.problem for p in report.problems]
    assert any("row 0" in p and "label -1 is outside 0..1" in p for p in problems), problems
    assert any("row 1" in p and "truncated or corrupt JPEG" in p for p in problems), problems


def test_dataset_given_as_option_or_argument_once(tmp_path):
    """`--dataset` (the stages' spelling) checks the same dataset as the positional
    argument; giving both, or neither, is a usage error (exit 2)."""
    root = make_clean(tmp_path / "ds")
    positional = runner.invoke(app, ["data", "check", str(root), "--split", "test"])
    option = runner.invoke(app, ["data", "check", "--dataset", str(root), "--split", "test"])
    assert positional.exit_code == option.exit_code == 0, (positional.output, option.output)
    assert positional.stdout == option.stdout  # the report (the log on stderr has timings)
    both = runner.invoke(app, ["data", "check", str(root), "--dataset", str(root), "--split", "test"])
    neither = runner.invoke(app, ["data", "check", "--split", "test"])
    assert both.exit_code == neither.exit_code == 2
    assert "give the dataset once" in both.output
