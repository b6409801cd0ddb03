"""QR orthogonalization of class text embeddings (METHOD.md, "QR orthogonalization").

``T`` is the (C, d) matrix of L2-normalized class embeddings, one row per class in label
order.  Two branches, chosen by the shape:

* ``"qr"`` (C ≤ d): QR of Tᵀ (d×C) = Q R.  Anchors A = Qᵀ (C, d) with row c negated where
  ``R[c, c] < 0``.  Then A·Aᵀ = I exactly (up to float error) and, since Tᵀ[:, c] = Q R[:, c],
  ``cos(a_c, t_c) = |R[c, c]| > 0``: every anchor keeps a positive cosine with its own class
  text.  Needs T of full row rank (no two identical class texts).
* ``"qr-whiten"`` (C > d): C vectors cannot be mutually orthogonal in d dimensions.  Reduced
  QR of T (C×d) = Q R with Q (C, d), columns signed so that ``diag(R) > 0`` (the unique QR,
  so the result does not depend on the LAPACK build).  Q's *columns* are orthonormal,
  Qᵀ·Q = I_d (a whitening of T: Q = T R⁻¹); its rows are then re-normalized to unit length
  to give the anchors, after which Qᵀ·Q = I no longer holds exactly.

Pure numpy, computed in float64 and returned as float32.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

log = logging.getLogger(__name__)

BRANCH_QR = "qr"
BRANCH_WHITEN = "qr-whiten"
BRANCH_NONE = "none"

#: |R[c, c]| below this means class text c is (nearly) a combination of the earlier ones.
_RANK_TOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Orthogonalized:
    """Anchors and how they were made.

    Attributes:
        anchors: float32 (C, d), unit rows.
        branch: ``"qr"``, ``"qr-whiten"`` or ``"none"``.
        mean_abs_cos_before: mean |cosine| over ordered pairs of different rows of the input.
        mean_abs_cos_after: the same for ``anchors``.
    """

    anchors: np.ndarray
    branch: str
    mean_abs_cos_before: float
    mean_abs_cos_after: float


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x`` divided by its L2 norm along ``axis`` (zero vectors stay zero)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def mean_abs_offdiag_cosine(x: np.ndarray) -> float:
    """Mean |cos(x_i, x_j)| over i ≠ j for the rows of ``x`` (N, d); 0.0 when N < 2."""
    n = len(x)
    if n < 2:
        return 0.0
    unit = l2_normalize(np.asarray(x, dtype=np.float64))
    cos = np.abs(unit @ unit.T)
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


def _check_input(t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"expected a non-empty (C, d) matrix, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("class embeddings contain NaN or inf")
    return t


def qr_anchors(t: np.ndarray) -> np.ndarray:
    """Branch ``"qr"``: orthonormal anchors (C, d) float64 from T (C, d) with C ≤ d.

    A = Qᵀ of Tᵀ = Q R, rows sign-fixed so that ``A[c] · T[c] = |R[c, c]| > 0``; A·Aᵀ = I.

    Raises:
        ValueError: C > d, or T rank-deficient (e.g. two classes with the same text).
    """
    t = _check_input(t)
    c, d = t.shape
    if c > d:
        raise ValueError(f"{c} classes in {d} dimensions: use qr_whiten")
    q, r = np.linalg.qr(t.T, mode="reduced")  # q (d, C), r (C, C)
    diag = np.diag(r)
    weak = np.flatnonzero(np.abs(diag) < _RANK_TOL)
    if len(weak):
        raise ValueError(
            f"class embeddings are linearly dependent (rows {weak.tolist()} are combinations of "
            "earlier rows; duplicate class names or prompts?)")
    return q.T * np.sign(diag)[:, None]


def qr_whiten(t: np.ndarray, *, renormalize: bool = True) -> np.ndarray:
    """Branch ``"qr-whiten"``: Q (C, d) float64 of the reduced QR T = Q R, diag(R) > 0.

    With ``renormalize=False`` the result has orthonormal columns (Qᵀ·Q = I_d); with
    ``renormalize=True`` (the anchors) each row is then scaled to unit length.
    Works for any C ≥ d; T must have rank d.
    """
    t = _check_input(t)
    c, d = t.shape
    if c < d:
        raise ValueError(f"{c} classes in {d} dimensions: use qr_anchors (exact orthogonality)")
    q, r = np.linalg.qr(t, mode="reduced")  # q (C, d), r (d, d)
    diag = np.diag(r)
    if np.any(np.abs(diag) < _RANK_TOL):
        raise ValueError("class embeddings do not span the embedding space (rank < d)")
    q = q * np.sign(diag)[None, :]
    return l2_normalize(q) if renormalize else q


def orthogonalize(t: np.ndarray, *, enabled: bool = True) -> Orthogonalized:
    """Anchors from class embeddings T (C, d), by the branch the shape calls for.

    Args:
        t: float (C, d) class embeddings (normalized here again, to be safe).
        enabled: False gives the ablation: anchors = normalized T, branch ``"none"``.
    """
    t = l2_normalize(_check_input(t))
    c, d = t.shape
    if not enabled:
        anchors, branch = t, BRANCH_NONE
    elif c <= d:
        anchors, branch = qr_anchors(t), BRANCH_QR
    else:
        anchors, branch = qr_whiten(t), BRANCH_WHITEN
    anchors = anchors.astype(np.float32)
    result = Orthogonalized(
        anchors=anchors,
        branch=branch,
        mean_abs_cos_before=mean_abs_offdiag_cosine(t),
        # Measured on the float32 anchors that are stored and used, not the float64 ones.
        mean_abs_cos_after=mean_abs_offdiag_cosine(anchors),
    )
    log.info("orthogonalization %s (C=%d, d=%d): mean |cos| between classes %.4g -> %.4g",
             branch, c, d, result.mean_abs_cos_before, result.mean_abs_cos_after)
    return result
