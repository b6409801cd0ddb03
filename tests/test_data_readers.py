"""Dataset readers on tiny trees made here: wsolevaluation (boxes, masks), CUB, ImageFolder, HF."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from tedloc.data.open import dataset_kind, open_dataset
from tedloc.data.records import Problems
from tedloc.errors import InputError


def write_image(path: Path, width: int = 8, height: int = 6, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, np.full((height, width, 3), value, np.uint8))
    assert ok
    path.write_bytes(data.tobytes())
    return path


def write_text(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return path


# ---------------------------------------------------------------- wsolevaluation layout

def make_wsol_boxes(root: Path, newline: str = "\n") -> Path:
    meta = root / "metadata"
    write_image(root / "imgs" / "a.jpg", 10, 8)
    write_image(root / "imgs" / "bé.png", 12, 9)
    write_text(meta / "class_names.txt", ["cat", "dog"], newline)
    write_text(meta / "test" / "image_ids.txt", ["imgs/a.jpg", "imgs/bé.png"], newline)
    write_text(meta / "test" / "class_labels.txt", ["imgs/a.jpg,0", "imgs/bé.png,1"], newline)
    write_text(meta / "test" / "image_sizes.txt", ["imgs/a.jpg,10,8", "imgs/bé.png,12,9"], newline)
    write_text(meta / "test" / "localization.txt",
               ["imgs/a.jpg,1,2,5,6", "imgs/a.jpg,0,0,3,3", "imgs/bé.png,2,2,11,8"], newline)
    return root


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_wsol_boxes_multiple_per_image(tmp_path, newline):
    root = make_wsol_boxes(tmp_path / "ds", newline)
    assert dataset_kind(str(root)) == "wsol"
    ds = open_dataset(str(root), "test")
    assert ds.class_names == ["cat", "dog"]
    assert ds.image_ids == ["imgs/a.jpg", "imgs/bé.png"]
    a, b = ds.records
    assert (a.label, b.label) == (0, 1)
    np.testing.assert_array_equal(a.boxes, [[1, 2, 5, 6], [0, 0, 3, 3]])
    assert a.boxes.dtype == np.float32
    assert b.size == (12, 9)
    assert ds.load_image(b).shape == (9, 12, 3)  # non-ASCII file name
    assert ds.box_where["imgs/a.jpg"][1].line == 2


def test_wsol_masks_union_and_ignore(tmp_path):
    root = tmp_path / "oi"
    write_image(root / "img" / "x.png", 6, 4)
    m1 = np.zeros((4, 6), np.uint8)
    m1[0, 0] = 255
    m2 = np.zeros((4, 6), np.uint8)
    m2[3, 5] = 255
    ign = np.zeros((4, 6), np.uint8)
    ign[2, 2] = 255
    (root / "mask").mkdir(parents=True)
    for name, mask in (("x_1.png", m1), ("x_2.png", m2), ("x_ig.png", ign)):
        cv2.imwrite(str(root / "mask" / name), mask)
    meta = root / "metadata" / "test"
    write_text(meta / "image_ids.txt", ["img/x.png"])
    write_text(meta / "class_labels.txt", ["img/x.png,0"])
    write_text(meta / "localization.txt", ["img/x.png,mask/x_1.png,mask/x_ig.png",
                                           "img/x.png,mask/x_2.png,mask/x_ig.png"])
    ds = open_dataset(str(root), "test")
    (record,) = ds.records
    assert ds.class_names == ["class_0"]
    assert len(record.boxes) == 0
    assert [p.name for p in record.mask_paths] == ["x_1.png", "x_2.png"]
    assert record.mask_path.name == "x_1.png" and record.ignore_path.name == "x_ig.png"
    foreground, ignore = ds.load_mask(record)
    assert foreground.shape == (4, 6) and foreground.dtype == bool
    assert foreground.sum() == 2 and foreground[0, 0] and foreground[3, 5]
    assert ignore.sum() == 1 and ignore[2, 2]


def test_wsol_strict_one_line_error(tmp_path):
    root = make_wsol_boxes(tmp_path / "ds")
    write_text(root / "metadata" / "test" / "class_labels.txt", ["imgs/a.jpg,0", "imgs/bé.png,7"])
    with pytest.raises(InputError) as info:
        open_dataset(str(root), "test")
    message = str(info.value)
    assert "class_labels.txt:2" in message and "outside 0..1" in message and "\n" not in message


def test_wsol_collecting_mode_gets_all(tmp_path):
    root = make_wsol_boxes(tmp_path / "ds")
    write_text(root / "metadata" / "test" / "class_labels.txt", ["imgs/a.jpg,x", "imgs/bé.png,7"])
    problems = Problems(collect=True)
    ds = open_dataset(str(root), "test", problems=problems)
    assert len(ds) == 0
    assert [(Path(p.file).name, p.line) for p in problems.items] == [
        ("class_labels.txt", 1),  # not an integer
        ("image_ids.txt", 1),  # hence a.jpg has no label
        ("class_labels.txt", 2),  # label 7 out of range
    ]


def test_unknown_split(tmp_path):
    root = make_wsol_boxes(tmp_path / "ds")
    with pytest.raises(InputError, match="split 'train' not found"):
        open_dataset(str(root), "train")


# ---------------------------------------------------------------- CUB-200-2011

def make_cub(root: Path, newline: str = "\n") -> Path:
    files = ["001.Black_footed_Albatross/Black_Footed_Albatross_0001.jpg",
             "001.Black_footed_Albatross/Black_Footed_Albatross_0002.jpg",
             "002.Laysan_Albatross/Laysan_Albatross_0001.jpg"]
    for rel in files:
        write_image(root / "images" / rel, 20, 10)
    write_text(root / "classes.txt", ["1 001.Black_footed_Albatross", "2 002.Laysan_Albatross"], newline)
    write_text(root / "images.txt", [f"{i} {rel}" for i, rel in enumerate(files, 1)], newline)
    write_text(root / "image_class_labels.txt", ["1 1", "2 1", "3 2"], newline)
    write_text(root / "train_test_split.txt", ["1 1", "2 0", "3 0"], newline)
    write_text(root / "bounding_boxes.txt", ["1 1.0 2.0 5.0 4.0", "2 0.0 0.0 20.0 10.0", "3 3 1 4 5"], newline)
    return root


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_cub(tmp_path, newline):
    root = make_cub(tmp_path / "CUB_200_2011", newline)
    assert dataset_kind(str(root)) == "cub"
    train = open_dataset(str(root), "train")
    test = open_dataset(str(root), "test")
    assert train.class_names == ["Black footed Albatross", "Laysan Albatross"]
    assert train.image_ids == ["001.Black_footed_Albatross/Black_Footed_Albatross_0001.jpg"]
    assert [r.label for r in test] == [0, 1]  # 1-based in the files
    np.testing.assert_array_equal(train.records[0].boxes, [[1, 2, 6, 6]])  # x,y,w,h -> x0,y0,x+w,y+h
    np.testing.assert_array_equal(test.records[1].boxes, [[3, 1, 7, 6]])
    assert test.load_image(test.records[0]).shape == (10, 20, 3)
    with pytest.raises(InputError, match="'train' and 'test'"):
        open_dataset(str(root), "val")


# ---------------------------------------------------------------- ImageFolder

def test_imagefolder_with_splits_and_boxes(tmp_path):
    root = tmp_path / "folder"
    write_image(root / "train" / "zebra" / "z1.png")
    write_image(root / "train" / "ant" / "sub" / "a1.jpg")
    write_image(root / "train" / "ant" / "a2.png")
    (root / "train" / "ant" / "readme.txt").write_text("not an image")
    write_image(root / "test" / "ant" / "ä.png")
    write_text(root / "train" / "boxes.csv", ["relative_path,x0,y0,x1,y1", "ant/a2.png,1,1,4,4",
                                              "ant/a2.png,0,0,2,2"], "\r\n")
    assert dataset_kind(str(root)) == "imagefolder"
    train = open_dataset(str(root), "train")
    assert train.class_names == ["ant", "zebra"]
    assert train.image_ids == ["ant/a2.png", "ant/sub/a1.jpg", "zebra/z1.png"]
    assert [r.label for r in train] == [0, 0, 1]
    np.testing.assert_array_equal(train.records[0].boxes, [[1, 1, 4, 4], [0, 0, 2, 2]])
    assert train.records[1].boxes.shape == (0, 4)
    test = open_dataset(str(root), "test")
    assert test.image_ids == ["ant/ä.png"] and test.load_image(test.records[0]).shape == (6, 8, 3)
    with pytest.raises(InputError, match="split 'val' not found"):
        open_dataset(str(root), "val")


def test_imagefolder_without_split_folders(tmp_path):
    root = tmp_path / "flat"
    write_image(root / "b" / "1.png")
    write_image(root / "a" / "2.png")
    assert open_dataset(str(root), "test").class_names == ["a", "b"]


# ---------------------------------------------------------------- Hugging Face datasets

def _encoded(value: int, width: int, height: int) -> bytes:
    ok, data = cv2.imencode(".png", np.full((height, width, 3), value, np.uint8))
    return data.tobytes()


def make_hf(path: Path) -> Path:
    import datasets

    features = datasets.Features({
        "img": datasets.Image(),
        "lbl": datasets.ClassLabel(names=["apple", "pear"]),
        "objects": {"bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4))},
    })
    train = datasets.Dataset.from_dict({
        "img": [{"bytes": _encoded(10, 8, 6), "path": None}, {"bytes": _encoded(20, 5, 4), "path": None}],
        "lbl": [1, 0],
        "objects": [{"bbox": [[1, 1, 2, 3]]}, {"bbox": [[0, 0, 1, 1], [2, 1, 2, 2]]}],
    }, features=features)
    test = datasets.Dataset.from_dict({
        "img": [{"bytes": _encoded(30, 4, 4), "path": None}], "lbl": [0], "objects": [{"bbox": []}],
    }, features=features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(path))
    return path


def test_hf_save_to_disk(tmp_path):
    path = make_hf(tmp_path / "hfds")
    spec = f"hf:{path}?image=img&label=lbl&boxes=objects.bbox&box_format=xywh"
    assert dataset_kind(spec) == "hf"
    train = open_dataset(spec, "train")
    assert train.class_names == ["apple", "pear"]
    assert [r.label for r in train] == [1, 0]
    assert all(r.path is None for r in train)
    np.testing.assert_array_equal(train.records[0].boxes, [[1, 1, 3, 4]])
    np.testing.assert_array_equal(train.records[1].boxes, [[0, 0, 1, 1], [2, 1, 4, 3]])
    image = train.load_image(train.records[1])
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8 and int(image[0, 0, 0]) == 20
    sub = train.subset([train.records[1].image_id])
    assert sub.load_image(sub.records[0]).shape == (4, 5, 3)  # the image source survives subset
    test = open_dataset(spec, "test")
    assert len(test) == 1 and test.records[0].boxes.shape == (0, 4)
    # The split of the source can be renamed.
    renamed = open_dataset(f"hf:{path}?image=img&label=lbl&split=test", "validation")
    assert len(renamed) == 1


def test_hf_dataset_picklable(tmp_path):
    import pickle

    path = make_hf(tmp_path / "hfds")
    ds = open_dataset(f"hf:{path}?image=img&label=lbl", "train")
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.load_image(clone.records[0]).shape == (6, 8, 3)


def test_hf_bad_spec(tmp_path):
    path = make_hf(tmp_path / "hfds")
    with pytest.raises(InputError, match="unknown key 'colour'"):
        open_dataset(f"hf:{path}?colour=red", "train")
    with pytest.raises(InputError, match="no image column 'image'"):
        open_dataset(f"hf:{path}?label=lbl", "train")
    with pytest.raises(InputError, match="split 'val' not found"):
        open_dataset(f"hf:{path}?image=img&label=lbl", "val")


def test_hf_parquet_and_plain_labels(tmp_path):
    import datasets

    folder = tmp_path / "pq"
    folder.mkdir()
    for split, names in (("train", ["b", "a", "b"]), ("test", ["c"])):
        datasets.Dataset.from_dict({
            "picture": [_encoded(40, 3, 2)] * len(names), "kind": names,
            "box": [[0, 0, 2, 1]] * len(names), "name": [f"{split}{i}" for i in range(len(names))],
        }).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    spec = f"hf:{folder}?image=picture&label=kind&boxes=box&id=name"
    train = open_dataset(spec, "train")
    assert train.class_names == ["a", "b", "c"]  # sorted over every split
    assert [r.label for r in train] == [1, 0, 1]
    assert train.image_ids == ["train0", "train1", "train2"]
    np.testing.assert_array_equal(train.records[0].boxes, [[0, 0, 2, 1]])
    assert train.load_image(train.records[2]).shape == (2, 3, 3)
    pattern = open_dataset(f"hf:{folder}/{{split}}-*.parquet?image=picture&label=kind", "test")
    assert pattern.image_ids == ["0000000"] and pattern.records[0].label == 2
    assert pattern.class_names == ["a", "b", "c"]


def test_head_is_class_balanced_and_in_file_order():
    from tedloc.data.open import open_dataset

    dataset = open_dataset("demo", "train")
    head = dataset.head(16)
    assert len(head) == 16
    assert sorted({r.label for r in head}) == list(range(8))
    positions = [dataset.records.index(r) for r in head]
    assert positions == sorted(positions)
    assert dataset.head(0) == list(dataset.records)
