"""Decoding image files into uint8 RGB arrays, with one-line errors for bad files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tedloc.errors import InputError


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB, shape (H, W, 3).

    Grayscale is replicated to 3 channels, alpha is dropped (composited on black), 16-bit
    is scaled to 8 bits.  Raises :class:`InputError` naming the file for a missing, empty
    or undecodable file.  Reads bytes first so that non-ASCII paths work everywhere.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(path, "image file not found") from None
    except OSError as exc:
        raise InputError(path, f"cannot read image file ({exc.strerror or exc})") from None
    if data.size == 0:
        raise InputError(path, "image file is empty (0 bytes)")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(path, "cannot decode image (corrupt or unsupported format)")
    return to_rgb_uint8(image, path)


def to_rgb_uint8(image: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
    """Convert a decoded OpenCV image (BGR/BGRA/gray, 8 or 16 bit) to uint8 RGB (H, W, 3)."""
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(path, f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        rgb = cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2RGB).astype(np.float32)
        return (rgb * alpha).round().astype(np.uint8)
    raise InputError(path, f"unsupported number of channels: {channels}")
