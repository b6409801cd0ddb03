"""The L-BFGS minimizer and the CAM classifier's closed-form gradient."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tedloc.pipeline import lbfgs
from tedloc.pipeline.cam import fit_linear_classifier


def test_minimize_finds_the_minimum_of_a_quadratic():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    hessian = torch.as_tensor(q @ np.diag(np.logspace(-1, 1, 30)) @ q.T)
    target = torch.as_tensor(rng.normal(size=30))

    def fun(x):
        d = x - target
        return 0.5 * d @ hessian @ d, hessian @ d

    x = lbfgs.minimize(fun, torch.zeros(30, dtype=torch.float64), max_iter=200)
    np.testing.assert_allclose(x.numpy(), target.numpy(), atol=1e-5)


def test_minimize_stops_at_max_iter():
    calls = []

    def fun(x):
        calls.append(1)
        return (x * x).sum() + x.sum() ** 4, 2 * x + 4 * x.sum() ** 3

    lbfgs.minimize(fun, torch.ones(5, dtype=torch.float64), max_iter=2)
    assert 2 <= len(calls) < 60  # one evaluation at x0, then at most two line searches


def test_classifier_reaches_the_autograd_optimum():
    """The fit's objective gradient vanishes when recomputed with autograd (so the closed-form
    gradient is right), and the fit beats a perturbed solution."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5)) + np.repeat(np.eye(3, 5) * 2, 20, axis=0)
    y = np.repeat(np.arange(3), 20)
    clf = fit_linear_classifier(x, y, 3, weight_decay=1e-2, holdout=0)
    mean, std = x.mean(0), x.std(0)
    z = torch.as_tensor((x - mean) / std)
    w = torch.as_tensor(clf.weight * std, dtype=torch.float64).requires_grad_()
    b = torch.as_tensor(clf.bias + clf.weight @ mean, dtype=torch.float64).requires_grad_()
    loss = F.cross_entropy(z @ w.T + b, torch.as_tensor(y)) + 0.5e-2 * (w * w).sum()
    loss.backward()
    # float32 storage of W and b limits how small the gradient can be.
    assert float(w.grad.abs().max()) < 1e-5 and float(b.grad.abs().max()) < 1e-5
