"""Image decoding: every stored form becomes uint8 RGB (H, W, 3); bad files name the problem."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tedloc.data.images import (
    decode_rgb,
    load_gray,
    load_rgb,
    load_rgb_resized,
    read_size,
    resize_whole,
)
from tedloc.errors import InputError


def _write(path: Path, image: np.ndarray) -> Path:
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def test_rgb_png_keeps_channel_order(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    out = load_rgb(_write(tmp_path / "red.png", bgr))
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [200, 0, 0]


def test_16bit_is_scaled_to_8bit(tmp_path):
    gray16 = np.full((5, 7), 65535, np.uint16)
    gray16[0, 0] = 257 * 10
    out = load_rgb(_write(tmp_path / "deep.png", gray16))
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert out[1, 1].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [10, 10, 10]


def test_16bit_color(tmp_path):
    bgr16 = np.zeros((3, 3, 3), np.uint16)
    bgr16[..., 0] = 257 * 100  # blue
    out = load_rgb(_write(tmp_path / "c16.png", bgr16))
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [0, 0, 100]


def test_grayscale_replicated(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = load_rgb(_write(tmp_path / "gray.png", gray))
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 2], gray)


def test_rgba_composited_on_black(tmp_path):
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 1] = 200  # green
    bgra[0, 0, 3] = 255
    bgra[0, 1, 3] = 0
    out = load_rgb(_write(tmp_path / "alpha.png", bgra))
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [0, 200, 0]
    assert out[0, 1].tolist() == [0, 0, 0]


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(path)  # C=0 M=max Y=max K=0: red
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = load_rgb(path)
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8
    r, g, b = out[5, 10].tolist()
    assert r > 200 and g < 40 and b < 40


def test_non_ascii_file_name(tmp_path):
    path = _write(tmp_path / "mésange_鳥.png", np.full((3, 3, 3), 7, np.uint8))
    assert load_rgb(path).shape == (3, 3, 3)
    assert read_size(path) == (3, 3)


def _expect(path: Path, fragment: str):
    with pytest.raises(InputError) as info:
        load_rgb(path)
    message = str(info.value)
    assert str(path) in message and fragment in message, message


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.jpg", "not found")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _expect(path, "empty (0 bytes)")


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    path = _write(tmp_path / "full.png", (rng.random((32, 32, 3)) * 255).astype(np.uint8))
    data = path.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    _expect(cut, "truncated or corrupt PNG")


def test_corrupt_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    path = _write(tmp_path / "full.jpg", (rng.random((32, 32, 3)) * 255).astype(np.uint8))
    data = path.read_bytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[:200] + b"\x00garbage" * 40)
    _expect(bad, "truncated or corrupt JPEG")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    _expect(path, "not a recognized image format")


def test_decode_bytes_names_the_source():
    with pytest.raises(InputError, match="row 3"):
        decode_rgb(b"\x89PNG\r\n\x1a\n broken", "hf:x row 3")


def test_load_gray_mask(tmp_path):
    mask = np.zeros((4, 5), np.uint8)
    mask[1:3, 2:4] = 255
    out = load_gray(_write(tmp_path / "m.png", mask))
    assert out.shape == (4, 5) and int((out > 0).sum()) == 4


@pytest.mark.parametrize("name, shape, dtype", [
    ("photo.jpg", (375, 500, 3), np.uint8),     # shrunk: area interpolation
    ("small.png", (50, 70, 3), np.uint8),       # enlarged: bilinear
    ("exact.png", (32, 32, 3), np.uint8),       # already the size
    ("gray.png", (90, 60), np.uint8),
    ("rgba.png", (80, 100, 4), np.uint8),
    ("deep.png", (64, 48, 3), np.uint16),
])
def test_resized_decoding_equals_decode_then_resize(tmp_path, name, shape, dtype):
    """The loaders' path (resize before the channel swap when it can) gives exactly the
    pixels of decoding to RGB and resizing that, and the original (width, height)."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, shape).astype(np.uint8), (0, 0), 2).astype(dtype)
    if dtype == np.uint16:
        image = image * 257
    path = _write(tmp_path / name, image)
    resized, size = load_rgb_resized(path, 32)
    expected = resize_whole(load_rgb(path), 32)
    assert resized.shape == (32, 32, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized, expected)
    assert size == (shape[1], shape[0])


def test_resized_decoding_names_a_bad_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(InputError, match="notes.jpg.*not a recognized image format"):
        load_rgb_resized(path, 32)
