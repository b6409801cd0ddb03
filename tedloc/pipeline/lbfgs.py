"""A small deterministic L-BFGS minimizer for smooth problems on one flat float64 vector.

Used for the CAM classifier's full-batch logistic regression.  It replaces
``torch.optim.LBFGS`` there because the first ``torch.optim`` optimizer built in a process
imports ``torch._dynamo`` (about 1 s of CPU), a fixed cost of every pseudo-labels run that
bought nothing: the problem is strictly convex (L2-penalized cross-entropy), so plain
L-BFGS with a backtracking (Armijo) line search converges to the same unique optimum.

Algorithm: the two-loop recursion over the last ``history_size`` pairs (s, y), the initial
Hessian scaled by ``s·y / y·y``; a pair is kept only when ``s·y > 0`` (always, for a
strictly convex function).  The first step is scaled to ``min(1, 1/‖g‖₁)`` (as
torch's LBFGS), later steps start at 1 and halve until the Armijo condition
``f(x + t d) ≤ f(x) + 1e-4 · t · g·d`` holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch

ARMIJO_C = 1e-4
MIN_STEP = 1e-12


def minimize(fun: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x0: torch.Tensor, *,
             max_iter: int, history_size: int = 20, grad_tol: float = 1e-9,
             change_tol: float = 1e-12) -> torch.Tensor:
    """Minimize ``fun`` from ``x0``; return the last iterate.

    Args:
        fun: x (n,) -> (value (0-dim), gradient (n,)), both of x's dtype.
        x0: float64 (n,) start (not modified).
        max_iter: iterations (each one line search).
        history_size: (s, y) pairs kept.
        grad_tol: stop when the largest gradient entry is at most this.
        change_tol: stop when an iteration changes the value or x (max entry) by less.
    """
    x = x0.clone()
    value, grad = fun(x)
    pairs: deque[tuple[torch.Tensor, torch.Tensor, float]] = deque(maxlen=history_size)
    for iteration in range(max_iter):
        if float(grad.abs().max()) <= grad_tol:
            break
        direction = _direction(grad, pairs)
        slope = float(grad @ direction)
        if slope > -change_tol:  # not a descent direction any more (numerical floor)
            break
        step = min(1.0, 1.0 / float(grad.abs().sum())) if iteration == 0 else 1.0
        while True:
            x_new = x + step * direction
            value_new, grad_new = fun(x_new)
            if float(value_new) <= float(value) + ARMIJO_C * step * slope:
                break
            step *= 0.5
            if step < MIN_STEP:
                return x
        s, y = x_new - x, grad_new - grad
        sy = float(s @ y)
        if sy > 0:
            pairs.append((s, y, 1.0 / sy))
        converged = abs(float(value_new) - float(value)) < change_tol or float(s.abs().max()) < change_tol
        x, value, grad = x_new, value_new, grad_new
        if converged:
            break
    return x


def _direction(grad: torch.Tensor, pairs: deque) -> torch.Tensor:
    """−H·grad by the two-loop recursion (−grad with no history)."""
    q = -grad
    if not pairs:
        return q
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * float(s @ q)
        q = q - alpha * y
        alphas.append(alpha)
    s, y, _ = pairs[-1]
    q = q * (float(s @ y) / float(y @ y))
    for (s, y, rho), alpha in zip(pairs, reversed(alphas), strict=True):
        beta = rho * float(y @ q)
        q = q + (alpha - beta) * s
    return q
