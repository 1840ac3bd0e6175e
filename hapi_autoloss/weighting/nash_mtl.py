"""nash_mtl: Multi-Task Learning as a Bargaining Game (Navon et al., ICML 2022)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import paddle

from .._args import check_count, non_negative
from .gradient import GradWeighting

RIDGE = 1e-10  # on the unit-Frobenius Gram, only where no solution exists: bounds α


def _newton(m: np.ndarray, max_iter: int) -> tuple[np.ndarray, bool]:
    """Damped Newton on ``½·αᵀMα − Σ log α`` from α_i = 1/√M_ii; (α, converged)."""
    alpha = 1.0 / np.sqrt(np.diag(m))  # exact for orthogonal gradients
    for _ in range(max_iter):
        grad = m @ alpha - 1.0 / alpha
        try:
            step = np.linalg.solve(m + np.diag(1.0 / alpha**2), grad)
        except np.linalg.LinAlgError:
            return alpha, False
        dec = math.sqrt(max(float(grad @ step), 0.0))  # the Newton decrement
        if dec < 1e-12:
            return alpha, True
        t = 1.0 if dec < 0.25 else 1.0 / (1.0 + dec)
        while np.any(alpha - t * step <= 0):  # never needed in exact arithmetic
            t *= 0.5
        alpha = alpha - t * step
        if alpha.max() > 1e6:  # running off along a null direction: no solution
            return alpha, False
    return alpha, False


def nash_alpha(gram: np.ndarray, max_iter: int = 200) -> np.ndarray:
    """The α > 0 with ``(M·α)_i = 1/α_i``, M = gram / ‖gram‖_F: the minimiser of the strictly
    convex, self-concordant ``½·αᵀMα − Σ log α_i``, by damped Newton steps (step 1/(1+λ)
    while the Newton decrement λ ≥ ¼, so α stays > 0) to λ < 1e-12. Where there is no
    solution (a zero gradient, gradients whose non-negative combination is 0), the same
    with M + RIDGE·I, which bounds α.

    Example::

        nash_alpha(np.diag([1.0, 4.0]))   # [2.03, 1.02] = ‖gram‖_F^½ / ‖g_i‖ (orthogonal g)
    """
    k = gram.shape[0]
    norm = float(np.linalg.norm(gram))
    if not norm > 0:
        return np.ones(k)
    m = gram / norm
    if np.diag(m).min() > RIDGE:
        alpha, converged = _newton(m, max_iter)
        if converged:
            return alpha
    return _newton(m + RIDGE * np.eye(k), 5 * max_iter)[0]


class NashMTL(GradWeighting):
    """The Nash bargaining solution: ``g = Σ α_i·g_i`` with α > 0 solving
    ``(G·Gᵀ·α)_i = 1/α_i`` for the Gram matrix scaled to unit Frobenius norm (as the official
    code, so ``‖g‖² = k·‖G·Gᵀ‖_F``), then the combined gradient clipped to norm ``max_norm``.

    ======================  ==========  ===============================================
    option                  default     source
    ======================  ==========  ===============================================
    ``max_norm``            1.0         LibMTL/config.py:55, nash-mtl weight_methods.py:104
    ``update_weights_every``  1         LibMTL/config.py:53 (α reused in between)
    ======================  ==========  ===============================================

    The official code solves it by ≤ 20 convex-concave steps with cvxpy/ECOS (stop at
    ‖Gα − 1/α‖ < 1e-3, ``optim_niter``); here Newton's method on the convex
    ``½αᵀMα − Σ log α`` solves it to machine precision, so there is no ``optim_niter``.
    Zero or opposite gradients (no solution) get a finite α through a 1e-10 ridge on M.
    Task-specific parameters get ``α_i·∇L_i`` (official: Σ α_i L_i is backpropagated),
    unclipped (the clip is on the shared parameters). Not on the representation
    (LibMTL forbids it). The shown weight is α times the clip factor.

    Example::

        AutoWeight([ce, mse, mse], method="nash_mtl", max_norm=1.0)
    """

    name = "nash_mtl"
    rep_grad: ClassVar[bool] = False

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1) -> None:
        super().__init__()
        max_norm = non_negative(max_norm, "max_norm", "max_norm=1.0 (the paper's)", " (0: no clipping)")
        every = check_count(update_weights_every, "update_weights_every", 1, "update_weights_every=1")
        self.max_norm, self.update_weights_every = max_norm, every
        self._step = 0
        self._nash = np.zeros(0)

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        super().bind(tasks, task_types)
        self._nash = np.ones(self.n)

    def alphas(self, gram: np.ndarray, losses: np.ndarray) -> np.ndarray:
        if self._step % self.update_weights_every == 0:
            self._nash = nash_alpha(gram)
        self._step += 1
        alpha = self._nash.copy()
        if self.max_norm > 0:  # torch.nn.utils.clip_grad_norm_'s rule
            norm = math.sqrt(max(float(alpha @ gram @ alpha), 0.0))
            alpha *= min(1.0, self.max_norm / (norm + 1e-6))
        return alpha

    def task_scales(self, losses: paddle.Tensor) -> paddle.Tensor | None:
        return paddle.to_tensor(self._nash, dtype="float32")

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "step": self._step, "alpha": [float(a) for a in self._nash]}

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().set_checkpoint_state(state)
        self._step = int(state.get("step", self._step))
        if "alpha" in state:
            self._nash = np.asarray(state["alpha"], dtype=np.float64)

    def extra_repr(self) -> str:
        return f"max_norm={self.max_norm}, update_weights_every={self.update_weights_every}"
