"""Class rankings from one image's class scores: top-k hits and the ranked top-k list."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def topk_hits(logits: np.ndarray, label: int, ks: Sequence[int] = (1, 5)) -> dict[int, bool]:
    """Whether ``label`` is among the ``k`` highest of float (C,) ``logits``, for each k
    (k is capped at C).  Ties are broken by lower class index, like ``np.argsort``."""
    order = np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")
    return {k: bool(label in order[:min(k, len(order))]) for k in ks}


def ranked_classes(logits: np.ndarray, names: Sequence[str], k: int = 5) -> tuple[np.ndarray, list[dict]]:
    """Softmax of one image's class logits (C,) and its top-``k`` classes, best first.

    Returns ``(probs float64 (C,), [{"class", "class_name", "score"}, ...])``; scores are
    rounded to 6 decimals; ties keep class order.
    """
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max())
    probs = z / z.sum()
    order = np.argsort(-probs, kind="stable")[:k]
    return probs, [{"class": int(c), "class_name": names[int(c)], "score": round(float(probs[c]), 6)}
                   for c in order]
