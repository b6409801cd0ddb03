"""Bad inputs through the command line: one ``error: ...`` line naming the file, exit code
non-zero, no traceback, and finished work left intact; odd-but-valid inputs just work.

Every run is tiny: the ``tiny-cnn`` encoder at 32 px on 12 images of 40×32.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers_cli import assert_one_line_error, invoke
from tests.helpers_data import make_wsol_tree

NUM_IMAGES = 12
BAD = "images/train/0009.png"  # third batch of 4: two batches (one shard) come before it


# ----------------------------------------------------------------------------- helpers

def pseudo_labels_args(root: Path, workdir: Path, *extra: str) -> list[str]:
    return ["--workdir", str(workdir), "stage", "pseudo-labels", "--dataset", str(root),
            "--encoder", "tiny-cnn", "--input-size", "32", "--batch-size", "4", "--shard-size", "4",
            "--num-workers", "0", "--device", "cpu", *extra]


def finished_files(stage_dir: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha1 of the bytes, mtime_ns) of every finished HDF5 file."""
    return {str(p.relative_to(stage_dir)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(stage_dir.rglob("*.h5"))}


def tmp_files(stage_dir: Path) -> list[Path]:
    return sorted(stage_dir.rglob("*.tmp"))


def rename_image(root: Path, old_id: str, new_id: str) -> None:
    """Give an image a new id (file and every metadata line)."""
    (root / new_id).parent.mkdir(parents=True, exist_ok=True)
    os.replace(root / old_id, root / new_id)
    for meta in (root / "metadata").rglob("*.txt"):
        text = meta.read_text(encoding="utf-8")
        meta.write_text(text.replace(old_id, new_id), encoding="utf-8")


def edit_line(path: Path, line_no: int, new_text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_no - 1] = new_text
    path.write_text("\n".join(lines) + "\n")


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_wsol_tree(tmp_path, splits={"train": NUM_IMAGES}, num_classes=2, size=(40, 32))


def _stage_arrays(workdir: Path) -> dict[str, dict[str, np.ndarray]]:
    from tedloc.artifacts.pseudo_labels import open_pseudo_labels

    with open_pseudo_labels(workdir) as art:
        names = [n for n in ("cam", "pseudo_box", "label", "image_size", "features", "features_flip")
                 if art.has(n)]
        return {name: dict(zip(art.ids, art.read_all(name), strict=True)) for name in names}


# ----------------------------------------------------------------------------- bad image files

def _corrupt_jpeg(root: Path) -> tuple[str, str]:
    new_id = BAD.replace(".png", ".jpg")
    rename_image(root, BAD, new_id)
    # A JPEG start-of-image marker followed by garbage: the decoder gives up on it.
    (root / new_id).write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    return new_id, "corrupt JPEG"


def _truncated_png(root: Path) -> tuple[str, str]:
    data = (root / BAD).read_bytes()
    (root / BAD).write_bytes(data[: len(data) // 2])
    return BAD, "truncated or corrupt PNG"


def _corrupt_png(root: Path) -> tuple[str, str]:
    (root / BAD).write_bytes(b"\x89PNG\r\n\x1a\n" + b"not the IHDR chunk" * 8)
    return BAD, "truncated or corrupt PNG"


def _zero_bytes(root: Path) -> tuple[str, str]:
    (root / BAD).write_bytes(b"")
    return BAD, "empty (0 bytes)"


def _missing(root: Path) -> tuple[str, str]:
    (root / BAD).unlink()
    return BAD, "not found"


@pytest.mark.parametrize("spoil", [_corrupt_jpeg, _truncated_png, _corrupt_png, _zero_bytes, _missing],
                         ids=["corrupt-jpeg", "truncated-png", "corrupt-png", "zero-bytes", "missing"])
def test_bad_image_fails_naming_it_and_keeps_finished_shards(tree, tmp_path, spoil, capfd):
    good = (tree / BAD).read_bytes()
    image_id, problem = spoil(tree)
    workdir = tmp_path / "w"
    stage_dir = workdir / "pseudo_labels"
    result = invoke(*pseudo_labels_args(tree, workdir))
    assert_one_line_error(result, image_id, problem)
    # OpenCV's own warning lines about the file would make the message more than one line.
    assert "[ERROR:" not in capfd.readouterr().err
    assert not tmp_files(stage_dir)
    assert not (stage_dir / "manifest.json").exists()
    finished = finished_files(stage_dir)
    assert finished, "the batches before the bad image should be on disk as finished files"
    # A second failing run resumes: it neither rewrites nor deletes what is finished.
    assert_one_line_error(invoke(*pseudo_labels_args(tree, workdir)), image_id, problem)
    after = finished_files(stage_dir)
    assert {k: after.get(k) for k in finished} == finished
    # Repaired, the run resumes and completes.
    (tree / image_id).write_bytes(good)
    result = invoke(*pseudo_labels_args(tree, workdir))
    assert result.exit_code == 0, result.output
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["num_images"] == NUM_IMAGES and manifest["skipped"] == {}


def test_skip_lists_bad_images_in_manifest_and_inspect(tree, tmp_path):
    (tree / BAD).write_bytes(b"")
    workdir = tmp_path / "w"
    result = invoke(*pseudo_labels_args(tree, workdir, "--on-bad-image", "skip"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((workdir / "pseudo_labels" / "manifest.json").read_text())
    assert list(manifest["skipped"]) == [BAD] and "empty (0 bytes)" in manifest["skipped"][BAD]
    assert manifest["num_images"] == NUM_IMAGES - 1
    shown = invoke("inspect", workdir / "pseudo_labels")
    assert shown.exit_code == 0, shown.output
    assert f"skipped {BAD}: " in shown.output and "skipped: 1" in shown.output


# ----------------------------------------------------------------------------- odd but valid images

def test_16bit_cmyk_gray_and_rgba_images_work(tree, tmp_path):
    from PIL import Image

    from tedloc.data.images import load_rgb

    originals = {i: read_rgb(tree / f"images/train/{i:04d}.png") for i in range(4, 8)}
    # 16 bit: v * 257 maps back to exactly v.
    cv2.imwrite(str(tree / "images/train/0004.png"),
                cv2.cvtColor(originals[4], cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    rename_image(tree, "images/train/0005.png", "images/train/0005.jpg")
    Image.fromarray(originals[5]).convert("CMYK").save(tree / "images/train/0005.jpg", quality=95)
    gray = cv2.cvtColor(originals[6], cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tree / "images/train/0006.png"), gray)
    bgra = cv2.cvtColor(originals[7], cv2.COLOR_RGB2BGRA)  # alpha 255 everywhere
    cv2.imwrite(str(tree / "images/train/0007.png"), bgra)
    assert Image.open(tree / "images/train/0005.jpg").mode == "CMYK"

    np.testing.assert_array_equal(load_rgb(tree / "images/train/0004.png"), originals[4])
    cmyk = load_rgb(tree / "images/train/0005.jpg").astype(int)
    assert cmyk.shape == originals[5].shape and np.abs(cmyk - originals[5]).mean() < 12
    np.testing.assert_array_equal(load_rgb(tree / "images/train/0006.png"), np.repeat(gray[..., None], 3, 2))
    np.testing.assert_array_equal(load_rgb(tree / "images/train/0007.png"), originals[7])

    workdir = tmp_path / "w"
    result = invoke(*pseudo_labels_args(tree, workdir))
    assert result.exit_code == 0, result.output
    manifest = json.loads((workdir / "pseudo_labels" / "manifest.json").read_text())
    assert manifest["num_images"] == NUM_IMAGES and manifest["skipped"] == {}
    sizes = _stage_arrays(workdir)["image_size"]
    assert sizes["images/train/0005.jpg"].tolist() == [40, 32]


def test_crlf_metadata_works(tree, tmp_path):
    for meta in (tree / "metadata").rglob("*.txt"):
        meta.write_bytes(meta.read_bytes().replace(b"\n", b"\r\n"))
    workdir = tmp_path / "w"
    result = invoke(*pseudo_labels_args(tree, workdir))
    assert result.exit_code == 0, result.output
    manifest = json.loads((workdir / "pseudo_labels" / "manifest.json").read_text())
    assert manifest["num_images"] == NUM_IMAGES
    assert manifest["diagnostic"]["num_images"] == NUM_IMAGES  # the boxes were read too
    assert all("\r" not in i for i in _stage_arrays(workdir)["label"])


def test_non_ascii_file_names_work(tree, tmp_path):
    names = {"images/train/0001.png": "images/train/ünïcødé 0001.png",
             "images/train/0002.png": "images/train/图像_0002.png"}
    for old, new in names.items():
        rename_image(tree, old, new)
    workdir = tmp_path / "w"
    result = invoke(*pseudo_labels_args(tree, workdir))
    assert result.exit_code == 0, result.output
    labels = _stage_arrays(workdir)["label"]
    assert set(names.values()) <= set(labels) and len(labels) == NUM_IMAGES


# ----------------------------------------------------------------------------- bad metadata

def _duplicate_id(root: Path) -> tuple[str, str]:
    ids = root / "metadata/train/image_ids.txt"
    ids.write_text(ids.read_text() + "images/train/0003.png\n")
    return f"image_ids.txt:{NUM_IMAGES + 1}", "duplicate image id"


def _label_out_of_range(root: Path) -> tuple[str, str]:
    edit_line(root / "metadata/train/class_labels.txt", 3, "images/train/0002.png,7")
    return "class_labels.txt:3", "outside 0..1"


def _inverted_box(root: Path) -> tuple[str, str]:
    edit_line(root / "metadata/train/localization.txt", 2, "images/train/0001.png,30,5,10,20")
    return "localization.txt:2", "inverted box"


def _box_outside_image(root: Path) -> tuple[str, str]:
    edit_line(root / "metadata/train/localization.txt", 2, "images/train/0001.png,5,5,90,20")
    return "localization.txt:2", "outside the 40x32 image"


@pytest.mark.parametrize("spoil", [_duplicate_id, _label_out_of_range, _inverted_box, _box_outside_image],
                         ids=["duplicate-id", "label-out-of-range", "inverted-box", "box-outside-image"])
def test_bad_metadata_line_is_named(tree, tmp_path, spoil):
    where, problem = spoil(tree)
    result = invoke(*pseudo_labels_args(tree, tmp_path / "w"))
    assert_one_line_error(result, where, problem)


# ----------------------------------------------------------------------------- evaluate

@pytest.fixture
def model_workdir(tmp_path):
    from tests.helpers_model import make_model_workdir

    root = make_wsol_tree(tmp_path, splits={"train": 6, "test": 6}, num_classes=2, size=(48, 40))
    return make_model_workdir(tmp_path / "work", root), root


def _evaluate_args(workdir: Path, *extra: str) -> list[str]:
    return ["--workdir", str(workdir), "stage", "evaluate", "--num-workers", "0", "--device", "cpu",
            "--batch-size", "4", "--shard-size", "4", "--num-overlays", "0", *extra]


def test_evaluate_nan_map_is_refused_naming_the_image(model_workdir, monkeypatch):
    from tedloc.pipeline.localizer import Localizer

    workdir, _ = model_workdir
    original = Localizer.predict_features

    def nan_maps(self, grid):
        out = original(self, grid)
        out.maps[:] = float("nan")
        return out

    monkeypatch.setattr(Localizer, "predict_features", nan_maps)
    assert_one_line_error(invoke(*_evaluate_args(workdir)), "images/test/0000.png", "NaN")


def test_evaluate_skip_lists_bad_images_in_manifest_and_inspect(model_workdir):
    workdir, root = model_workdir
    (root / "images/test/0002.png").write_bytes(b"not a png")
    assert_one_line_error(invoke(*_evaluate_args(workdir)), "images/test/0002.png", "not a recognized image")
    result = invoke(*_evaluate_args(workdir, "--on-bad-image", "skip"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((workdir / "evaluate" / "data-test" / "manifest.json").read_text())
    assert list(manifest["skipped"]) == ["images/test/0002.png"]
    shown = invoke("inspect", workdir / "evaluate" / "data-test")
    assert shown.exit_code == 0, shown.output
    assert "skipped images/test/0002.png: " in shown.output


# ----------------------------------------------------------------------------- artifacts and workdir

def test_text_embed_and_dataset_class_counts_differ(tmp_path):
    from tests.helpers_data import save_tiny_clip

    three = make_wsol_tree(tmp_path, splits={"train": 6}, num_classes=3, name="three")
    four = make_wsol_tree(tmp_path, splits={"train": 8}, num_classes=4, name="four")
    clip = save_tiny_clip(tmp_path / "clip")
    workdir = tmp_path / "w"
    result = invoke("--workdir", workdir, "stage", "text-embed", "--dataset", three,
                    "--text-encoder", f"clip:{clip}", "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = invoke(*pseudo_labels_args(four, workdir))
    assert result.exit_code == 0, result.output
    result = invoke("--workdir", workdir, "stage", "train", "--epochs", "1", "--num-workers", "0",
                    "--device", "cpu", "--batch-size", "4")
    assert_one_line_error(result, "text_embed.h5", "3 classes", str(workdir / "pseudo_labels" / "manifest.json"),
                          "has 4")


def test_unknown_artifact_version_is_refused(tree, tmp_path):
    workdir = tmp_path / "w"
    args = pseudo_labels_args(tree, workdir)
    assert invoke(*args).exit_code == 0
    manifest_path = workdir / "pseudo_labels" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    assert_one_line_error(invoke(*args), str(manifest_path), "format_version 99 is not supported")
    assert_one_line_error(invoke("inspect", workdir / "pseudo_labels"), str(manifest_path),
                          "format_version 99 is not supported")
    assert_one_line_error(invoke("inspect", workdir), str(manifest_path), "format_version 99")


def test_read_only_workdir(tree, tmp_path, monkeypatch):
    workdir = tmp_path / "w"
    workdir.mkdir()
    if os.geteuid() != 0:
        workdir.chmod(0o555)
    else:  # root ignores permissions: refuse every write below the workdir as the OS would
        real_mkdir, real_open, real_replace = os.mkdir, os.open, os.replace
        inside = str(workdir)

        def refuse(path):
            if str(path).startswith(inside):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

        def mkdir(path, *a, **k):
            refuse(path)
            return real_mkdir(path, *a, **k)

        def open_(path, flags, *a, **k):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                refuse(path)
            return real_open(path, flags, *a, **k)

        def replace(src, dst, *a, **k):
            refuse(dst)
            return real_replace(src, dst, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "replace", replace)
    try:
        line = assert_one_line_error(invoke(*pseudo_labels_args(tree, workdir)), str(workdir), "Permission denied")
    finally:
        workdir.chmod(0o755)
    assert "writable" in line


def test_second_run_on_a_locked_stage_is_refused(tree, tmp_path):
    workdir = tmp_path / "w"
    lock = workdir / "pseudo_labels" / ".lock"
    code = ("import sys, time\n"
            "from tedloc.artifacts.lock import StageLock\n"
            "StageLock(sys.argv[1]).acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = invoke(*pseudo_labels_args(tree, workdir))
        assert_one_line_error(result, str(lock), f"in use by pid {holder.pid}")
        assert not (workdir / "pseudo_labels" / "shards").exists() or not any(
            (workdir / "pseudo_labels" / "shards").iterdir())
    finally:
        holder.kill()
        holder.wait()
    result = invoke(*pseudo_labels_args(tree, workdir))  # the holder is gone: its lock is stale
    assert result.exit_code == 0, result.output


def test_full_disk_keeps_the_first_shard_and_a_rerun_completes(tree, tmp_path, monkeypatch):
    from tedloc.artifacts import atomic

    workdir = tmp_path / "w"
    shards = workdir / "pseudo_labels" / "shards"
    opened: list[str] = []

    def full_after_first_shard(file, mode="r", *args, **kwargs):
        if "w" in mode and Path(file).parent == shards:
            opened.append(str(file))
            if len(opened) > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write to a full disk
        return open(file, mode, *args, **kwargs)

    # atomic_h5 writes each HDF5 file's bytes with the built-in open (HDF5 never writes to disk).
    monkeypatch.setattr(atomic, "open", full_after_first_shard, raising=False)
    result = invoke(*pseudo_labels_args(tree, workdir))
    assert result.exit_code == 1
    assert_one_line_error(result, str(shards), "No space left on device")
    assert not tmp_files(workdir / "pseudo_labels")
    # the first shard and its grid file (a staging file moved into place, never written in
    # shards/) stay; the second shard's grid file, moved before the write failed, is staged
    # again by the rerun
    first = {k: v for k, v in finished_files(workdir / "pseudo_labels").items()
             if k.startswith("shards/part000of001-00000.")}
    assert sorted(first) == ["shards/part000of001-00000.grids.h5", "shards/part000of001-00000.h5"]
    assert not (shards / "part000of001-00001.h5").exists()
    monkeypatch.undo()

    result = invoke(*pseudo_labels_args(tree, workdir))
    assert result.exit_code == 0, result.output
    after = finished_files(workdir / "pseudo_labels")
    assert {k: after[k] for k in first} == first  # kept as it was, not redone
    result = invoke(*pseudo_labels_args(tree, tmp_path / "uninterrupted"))
    assert result.exit_code == 0, result.output
    got, want = _stage_arrays(workdir), _stage_arrays(tmp_path / "uninterrupted")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].keys() == want[name].keys()
        for image_id, value in want[name].items():
            np.testing.assert_array_equal(got[name][image_id], value, err_msg=f"{name} {image_id}")


def test_full_disk_while_writing_json_names_the_file(tmp_path, monkeypatch):
    from tedloc.artifacts.atomic import write_json_atomic

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a write on a full disk raises

    monkeypatch.setattr(Path, "write_text", no_space)
    target = tmp_path / "manifest.json"
    with pytest.raises(OSError) as info:
        write_json_atomic(target, {"a": 1})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert not target.exists() and not list(tmp_path.glob("*.tmp"))


def test_evaluate_refuses_a_box_outside_the_decoded_image(model_workdir):
    workdir, root = model_workdir
    (root / "metadata/test/image_sizes.txt").unlink()  # the reader cannot check it then
    edit_line(root / "metadata/test/localization.txt", 3, "images/test/0002.png,5,5,60,20")
    assert_one_line_error(invoke(*_evaluate_args(workdir)), "localization.txt:3", "outside the 48x40 image")


def test_unknown_shard_version_is_refused(tree, tmp_path):
    import h5py

    workdir = tmp_path / "w"
    args = pseudo_labels_args(tree, workdir)
    assert invoke(*args).exit_code == 0
    stage_dir = workdir / "pseudo_labels"
    (stage_dir / "manifest.json").unlink()  # an unfinished run: its shards are resumed
    shard = sorted(p for p in (stage_dir / "shards").glob("*.h5") if not p.name.endswith(".grids.h5"))[0]
    with h5py.File(shard, "r+") as handle:
        handle.attrs["format_version"] = 99
    before = finished_files(stage_dir)
    assert_one_line_error(invoke(*args), str(shard), "format_version 99 is not supported")
    assert finished_files(stage_dir) == before  # refused, nothing deleted
    assert_one_line_error(invoke("inspect", stage_dir), str(shard), "format_version 99")


def _can_mount_tmpfs() -> bool:
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    try:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1k tmpfs /mnt"],
                               capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and mount namespaces (unshare -m)")
def test_real_full_then_read_only_disk(tree, tmp_path):
    """A real 100 kB tmpfs (HDF5's own errors on a full disk: no traceback, no crash), then
    grown (the rerun completes), then remounted read-only (refused in one line)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    command = shlex.join([sys.executable, "-m", "tedloc.cli", "--log-level", "WARNING",
                          *pseudo_labels_args(tree, mount / "w")])
    script = (f"mount -t tmpfs -o size=100k tmpfs {mount} && "
              f"{{ {command} 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.rc; }}; "
              f"mount -o remount,size=20M {mount} && "
              f"{{ {command} 2> {tmp_path}/grown.err; echo $? > {tmp_path}/grown.rc; }}; "
              f"mount -o remount,ro {mount} && "
              f"{{ {command} 2> {tmp_path}/ro.err; echo $? > {tmp_path}/ro.rc; }}")
    subprocess.run(["unshare", "-m", "sh", "-c", script], check=True, timeout=300,
                   cwd=Path(__file__).resolve().parent.parent)

    def outcome(name: str) -> tuple[int, list[str], str]:
        err = (tmp_path / f"{name}.err").read_text()
        return int((tmp_path / f"{name}.rc").read_text()), [x for x in err.splitlines() if x.startswith("error:")], err

    rc, errors, err = outcome("full")
    assert rc == 1 and len(errors) == 1 and "No space left on device" in errors[0], err
    assert str(mount / "w" / "pseudo_labels") in errors[0]
    assert "Traceback" not in err and "Exception ignored" not in err
    rc, errors, err = outcome("grown")
    assert rc == 0 and not errors, err
    rc, errors, err = outcome("ro")
    assert rc == 1 and len(errors) == 1 and "Read-only file system" in errors[0], err
    assert "Traceback" not in err
