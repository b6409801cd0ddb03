"""QR orthogonalization of class embeddings: both branches, signs, the ablation, the figures."""

import numpy as np
import pytest

from tedloc.pipeline.orthogonalize import (
    l2_normalize,
    mean_abs_offdiag_cosine,
    orthogonalize,
    qr_anchors,
    qr_whiten,
)


def _correlated(c: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit rows sharing a common direction (like text embeddings: mean |cos| well above 0)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=d)
    return l2_normalize(common + 0.8 * rng.normal(size=(c, d))).astype(np.float32)


@pytest.mark.parametrize(("c", "d"), [(8, 384), (5, 5), (1, 16)])
def test_c_le_d_gives_orthonormal_anchors_close_to_their_text(c, d):
    t = _correlated(c, d)
    result = orthogonalize(t)
    a = result.anchors
    assert result.branch == "qr" and a.dtype == np.float32 and a.shape == (c, d)
    np.testing.assert_allclose(a @ a.T, np.eye(c), atol=1e-5)
    own = np.sum(a * t, axis=1)
    assert np.all(own > 0), own
    assert result.mean_abs_cos_after < 1e-5


def test_sign_fix_is_needed_and_applied():
    # Without the fix, LAPACK's Householder QR gives R[0, 0] = -||t_0|| < 0 for a positive t_0.
    t = l2_normalize(np.array([[1.0, 0.2, 0.0], [0.3, 1.0, 0.1]]))
    q, r = np.linalg.qr(t.T)
    assert np.any(np.diag(r) < 0), "test premise: the raw QR has a negative diagonal"
    a = qr_anchors(t)
    np.testing.assert_allclose(np.sum(a * t, axis=1), np.abs(np.diag(r)), atol=1e-12)
    # The first anchor is the first class text itself (Gram-Schmidt starts there).
    np.testing.assert_allclose(a[0], t[0], atol=1e-12)


def test_c_gt_d_whitens_columns_then_normalizes_rows():
    t = _correlated(40, 8, seed=1)
    q = qr_whiten(t, renormalize=False)
    np.testing.assert_allclose(q.T @ q, np.eye(8), atol=1e-10)
    # Q spans the same columns as T: T = Q R with R upper triangular, diag(R) > 0.
    r = q.T @ t.astype(np.float64)
    np.testing.assert_allclose(np.tril(r, -1), 0, atol=1e-6)
    assert np.all(np.diag(r) > 0)
    result = orthogonalize(t)
    assert result.branch == "qr-whiten" and result.anchors.shape == (40, 8)
    np.testing.assert_allclose(np.linalg.norm(result.anchors, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(result.anchors, l2_normalize(q), atol=1e-6)
    # Whitening spreads the classes out, although 40 vectors in 8-d cannot be orthogonal.
    assert result.mean_abs_cos_after < result.mean_abs_cos_before
    assert result.mean_abs_cos_after > 0.01


def test_disabled_is_the_normalized_input():
    t = _correlated(4, 6)
    result = orthogonalize(2.0 * t, enabled=False)
    assert result.branch == "none"
    np.testing.assert_allclose(result.anchors, t, atol=1e-6)
    assert result.mean_abs_cos_after == pytest.approx(result.mean_abs_cos_before)


def test_mean_abs_offdiag_cosine_by_hand():
    x = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
    # |cos| pairs: (0,1) 0, (0,2) 1/sqrt2, (1,2) 1/sqrt2 -> mean sqrt2/3
    assert mean_abs_offdiag_cosine(x) == pytest.approx(np.sqrt(2) / 3)
    assert mean_abs_offdiag_cosine(x[:1]) == 0.0


def test_duplicate_classes_and_bad_values_are_refused():
    t = _correlated(3, 8)
    with pytest.raises(ValueError, match="linearly dependent"):
        orthogonalize(np.vstack([t, t[1:2]]))
    bad = t.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        orthogonalize(bad)
