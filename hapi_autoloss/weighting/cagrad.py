"""cagrad: Conflict-Averse Gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .._args import non_negative
from ._simplex import simplex_qp
from .gradient import GradWeighting

RESCALE = (0, 1, 2)
SMOOTH = 1e-18  # keeps ‖g_w‖ differentiable where it reaches 0 (relative to the mean ‖g_i‖² inside the SQP)
STAGES = (1e-2, 1e-5, 1e-8, 1e-11, 1e-14, SMOOTH)


def cagrad_inner(gram: np.ndarray, c: float, max_iter: int = 100) -> np.ndarray:
    """``argmin_{w∈Δ} g_wᵀg_0 + c·‖g_0‖·‖g_w‖`` with ``g_w = Σ w_i g_i`` and ``g_0`` the mean
    gradient, from the Gram matrix: sequential quadratic programming (each step an exact
    QP over the simplex, Armijo backtracking), then Newton steps on the face it found, so
    that the combined gradient is exact to rounding (1e-14 relative for gradients 1e-3..1e3
    apart) away from the kink ``g_w = 0``."""
    k = gram.shape[0]
    scale = float(np.trace(gram)) / k
    if k == 1 or not scale > 0:
        return np.full(k, 1.0 / k)
    a = gram / scale  # w is scale-free
    v = a.mean(axis=1)  # g_iᵀg_0
    cn = c * math.sqrt(max(float(a.mean()), 0.0))  # c·‖g_0‖

    def value(w: np.ndarray, smooth: float) -> float:
        return float(v @ w + cn * math.sqrt(max(float(w @ a @ w), 0.0) + smooth))

    def sqp(w: np.ndarray, smooth: float) -> np.ndarray:
        f = value(w, smooth)
        for _ in range(max_iter):
            aw = a @ w
            s = math.sqrt(max(float(w @ aw), 0.0) + smooth)
            grad = v + cn * aw / s
            hess = cn * (a / s - np.outer(aw, aw) / s**3)
            step = simplex_qp(hess, grad - hess @ w) - w
            slope = float(grad @ step)
            if slope > -1e-15:  # the predicted decrease (a is scaled to unit diagonal)
                break
            t = 1.0
            while t > 1e-12 and value(w + t * step, smooth) > f + 1e-4 * t * slope:
                t *= 0.5
            f_new = value(w + t * step, smooth)
            if f_new >= f:
                break
            w, f = w + t * step, f_new
        return w

    def polish(w: np.ndarray) -> np.ndarray:
        """Newton steps on the face {w_S > 0, Σ w_S = 1} of the SQP answer, Jacobi-scaled, while
        the scaled gradient on the face shrinks: the QP's ridge and tolerances are relative to
        the largest gradient, so a face of gradients 1e-3 of it was left ~1e-4 off in g_w."""
        idx = np.flatnonzero(w > 0)
        if len(idx) < 2 or not float(w @ a @ w) > 1e-14 * float(w @ np.abs(a) @ w):
            return w  # a vertex, or g_w at the kink (0 within rounding): no smooth face to polish
        z = np.vstack([np.eye(len(idx) - 1), -np.ones(len(idx) - 1)])  # keeps Σ w_S = 1

        def newton(w: np.ndarray) -> tuple[np.ndarray, float]:
            aw = a @ w
            sq = math.sqrt(max(float(w @ aw), 0.0))  # exact ‖g_w‖: SMOOTH would bias a small one
            grad = (v + cn * aw / sq)[idx] @ z
            hess = z.T @ (cn * (a / sq - np.outer(aw, aw) / sq**3))[np.ix_(idx, idx)] @ z
            d = 1.0 / np.sqrt(np.maximum(np.abs(np.diag(hess)), 1e-300))
            step = np.zeros(k)
            step[idx] = z @ (-d * np.linalg.lstsq(d[:, None] * hess * d, d * grad, rcond=None)[0])
            return step, float(np.linalg.norm(d * grad))

        step, size = newton(w)
        for _ in range(20):
            if np.any(w + step < 0) or not value(w + step, 0.0) <= value(w, 0.0) + 1e-15 * abs(value(w, 0.0)):
                return w  # leaves the face or rises: the SQP answer stands
            next_step, next_size = newton(w + step)
            if not next_size < size:
                return w
            w, step, size = w + step, next_step, next_size
        return w

    w = polish(sqp(np.full(k, 1.0 / k), SMOOTH))
    if float(w @ a @ w) > 1e-2:
        return w
    # ‖g_w‖ has a kink at g_w = 0, near which the optimum then lies: smooth the kink and
    # sharpen it stage by stage (continuation), each stage warm-started from the last.
    u = np.full(k, 1.0 / k)
    for smooth in STAGES:
        u = sqp(u, smooth)
    u = polish(u)
    return u if value(u, SMOOTH) < value(w, SMOOTH) else w


class CAGrad(GradWeighting):
    """``d = g_0 + (c·‖g_0‖ / ‖g_w‖)·g_w``, ``g_0`` the mean gradient and ``w`` the solution of
    :func:`cagrad_inner` (the dual of max_d min_i g_iᵀd s.t. ‖d − g_0‖ ≤ c‖g_0‖), then

    ==========  ==========================  ========================================
    rescale     combined gradient           note
    ==========  ==========================  ========================================
    0           k·d
    1           k·d / (1 + c²)              default (LibMTL/config.py:51, official)
    2           k·d / (1 + c)
    ==========  ==========================  ========================================

    so ``α_i = (1 + k·λ·w_i) / rescale``, λ = c‖g_0‖/‖g_w‖. The factor k is the official
    code's (``newgrad * 3  # to match the sum loss``, Cranial-XIX/CAGrad nyuv2/utils.py:418):
    c = 0 gives the plain sum Σ g_i that ``equal`` trains with; LibMTL omits it (1/k of
    this). c = 0.5 is LibMTL's default (config.py:50) and the paper's NYUv2 choice is 0.4.
    The inner problem is solved to machine precision (LibMTL/official: SLSQP from scipy).
    Not on the representation (LibMTL forbids it).

    Example::

        AutoWeight([ce, mse, mse], method="cagrad", c=0.5)
    """

    name = "cagrad"
    libmtl_name = "CAGrad"
    libmtl_note = "cagrad's combined gradient is k times LibMTL's, as the official code's"
    libmtl_options: ClassVar[dict[str, str]] = {"calpha": "c"}
    rep_grad: ClassVar[bool] = False
    zero_task_breaks = ("a weighting onto that zero gradient minimises its inner problem, so the conflict-averse "
                        "term vanishes and the update is the plain sum, scaled")

    def __init__(self, c: float = 0.5, rescale: int = 1) -> None:
        super().__init__()
        c = non_negative(c, "c", "c=0.5 (LibMTL's default)")
        if isinstance(rescale, bool) or rescale not in RESCALE:
            raise ValueError(
                f"rescale must be 0, 1 or 2, got {rescale!r}. Fix: rescale=1 (divide by 1 + c², the default)."
            )
        self.c, self.rescale = c, int(rescale)

    def alphas(self, gram: np.ndarray, losses: np.ndarray) -> np.ndarray:
        k = gram.shape[0]
        w = cagrad_inner(gram, self.c)
        g0 = math.sqrt(max(float(gram.mean()), 0.0))
        # SMOOTH relative to wᵀ|G·Gᵀ|w, the rounding scale of ‖g_w‖²: it bounds λ where g_w is 0
        # and leaves a small but exact g_w as it is (relative to the mean ‖g_i‖² it biased one
        # 1e-3 of the largest gradient by ~1e-7)
        gw = math.sqrt(max(float(w @ gram @ w), 0.0) + SMOOTH * float(w @ np.abs(gram) @ w))
        lam = self.c * g0 / gw if gw > 0 else 0.0
        divide = (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]
        return (1.0 + k * lam * w) / divide

    def extra_repr(self) -> str:
        return f"c={self.c}, rescale={self.rescale}"
