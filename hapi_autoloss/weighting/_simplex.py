"""Small dense solvers shared by the gradient-level methods (float64 NumPy, k×k problems).

- :func:`simplex_qp`: ``argmin ½·wᵀQw + bᵀw`` over the probability simplex, exactly (a
  primal active-set method, finite; a tiny ridge makes the answer unique when Q is singular).
- :func:`min_norm`: the min-norm point of the convex hull of the gradients, from their
  Gram matrix (MGDA's subproblem): the closed form for two, :func:`simplex_qp` beyond.
"""

from __future__ import annotations

import numpy as np

RIDGE = 1e-12  # relative to Q's mean diagonal: picks the smallest-‖w‖ minimiser of a flat Q
TOL = 1e-13


def _unit_scale(q: np.ndarray, b: np.ndarray) -> float:
    scale = max(float(np.trace(q)) / len(b), float(np.abs(b).max(initial=0.0)))
    return scale if scale > 0 and np.isfinite(scale) else 1.0


def simplex_qp(q: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """``argmin_{w ≥ 0, Σw = 1} ½·wᵀQw + bᵀw`` for a symmetric PSD ``Q`` [k, k].

    Example::

        simplex_qp(np.eye(2), np.zeros(2))   # array([0.5, 0.5])
    """
    q, b = np.asarray(q, dtype=np.float64), np.asarray(b, dtype=np.float64)
    k = len(b)
    if k == 1:
        return np.ones(1)
    scale = _unit_scale(q, b)
    q = (q + q.T) / (2 * scale) + RIDGE * np.eye(k)
    b = b / scale
    w = np.full(k, 1.0 / k)
    free = np.ones(k, dtype=bool)
    for _ in range(max_iter or 100 * k):
        idx = np.flatnonzero(free)
        m = len(idx)
        g = q @ w + b
        # Equality-constrained step on the free set: Q_FF p − ν·1 = −g_F, Σ p = 0.
        kkt = np.zeros((m + 1, m + 1))
        kkt[:m, :m] = q[np.ix_(idx, idx)]
        kkt[:m, m] = kkt[m, :m] = 1.0
        sol = np.linalg.lstsq(kkt, np.concatenate([-g[idx], [0.0]]), rcond=None)[0]
        p, nu = sol[:m], -sol[m]
        if np.abs(p).max(initial=0.0) <= TOL:
            fixed = np.flatnonzero(~free)
            lam = g[fixed] - nu  # bound multipliers: optimal when all are >= 0
            if len(fixed) == 0 or lam.min() >= -1e-12:
                break
            free[fixed[np.argmin(lam)]] = True
            continue
        shrink = p < 0
        ratios = np.where(shrink, w[idx] / np.where(shrink, -p, 1.0), np.inf)
        step = min(1.0, float(ratios.min()))
        w[idx] = w[idx] + step * p
        if step < 1.0:
            hit = idx[int(np.argmin(ratios))]
            w[hit], free[hit] = 0.0, False
    w = np.clip(w, 0.0, None)
    total = w.sum()
    return w / total if total > 0 else np.full(k, 1.0 / k)


def min_norm(gram: np.ndarray) -> np.ndarray:
    """The weights ``w`` on the simplex minimising ‖Σ w_i·g_i‖² = wᵀ·gram·w (MGDA).

    Example::

        min_norm(np.array([[1.0, 0.0], [0.0, 4.0]]))   # array([0.8, 0.2])
    """
    gram = np.asarray(gram, dtype=np.float64)
    k = gram.shape[0]
    if k == 1:
        return np.ones(1)
    if k == 2:  # closed form: the point of the segment nearest the origin
        g11, g12, g22 = gram[0, 0], gram[0, 1], gram[1, 1]
        denom = g11 + g22 - 2.0 * g12
        if not denom > 1e-14 * max(g11 + g22, 1e-300):
            return np.full(2, 0.5)  # equal (or zero) gradients: every w is optimal
        w1 = float(np.clip((g22 - g12) / denom, 0.0, 1.0))
        return np.array([w1, 1.0 - w1])
    return simplex_qp(gram, np.zeros(k))
