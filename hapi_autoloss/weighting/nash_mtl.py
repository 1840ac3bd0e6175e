"""nash_mtl: Multi-Task Learning as a Bargaining Game (Navon et al., ICML 2022)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import paddle

from .._args import check_count, non_negative
from .gradient import GradWeighting

ZERO = 1e-30  # ‖g_i‖² ≤ ZERO·max_j ‖g_j‖²: a zero gradient (float32 resolves ~1e-14 of it)
CAP = 1e6  # β = α_i·‖g_i‖ past this: running off along a null direction, no solution


def _newton(c: np.ndarray, max_iter: int) -> np.ndarray | None:
    """Damped Newton on ``½·βᵀCβ − Σ log β`` from β = 1 (exact for orthogonal gradients);
    the minimiser, or None where there is none."""
    beta = np.ones(len(c))
    for _ in range(max_iter):
        grad = c @ beta - 1.0 / beta
        try:
            step = np.linalg.solve(c + np.diag(1.0 / beta**2), grad)
        except np.linalg.LinAlgError:
            return None
        dec = math.sqrt(max(float(grad @ step), 0.0))  # the Newton decrement
        if dec < 1e-12:
            return beta
        t = 1.0 if dec < 0.25 else 1.0 / (1.0 + dec)
        while np.any(beta - t * step <= 0):  # never needed in exact arithmetic
            t *= 0.5
        beta = beta - t * step
        if beta.max() > CAP:
            return None
    return None


def nash_alpha(gram: np.ndarray, previous: np.ndarray | None = None, max_iter: int = 200) -> np.ndarray:
    """The α > 0 with ``α_i·(G·Gᵀ·α)_i = 1`` on the raw Gram matrix ``gram`` (the paper's
    Gᵀ·G·α = 1/α, and the official code's: it divides the Gram by its norm ``nf`` but keeps
    ``nf`` in the constraint), so ``‖Σ α_i·g_i‖ = √k`` at every gradient scale and
    ``α(s·G) = α(G)/s``. Solved on the correlation matrix ``C_ij = ĝ_iᵀĝ_j`` (unit
    gradients): β = α_i·‖g_i‖ minimises the strictly convex, self-concordant
    ``½·βᵀCβ − Σ log β_i``, by damped Newton steps (1/(1+λ) while the Newton decrement
    λ ≥ ¼) to λ < 1e-12.

    Where the problem has no solution (the official ECOS problem is then infeasible) the
    ``previous`` α (default 1) is kept, as the official code keeps its last one: for every
    task when non-negative combinations of the gradients reach 0 (opposite gradients, all
    gradients 0), and for a task whose own gradient is 0 (a met hinge, a batch without its
    labels), whose α would be infinite; the other tasks then solve their own problem.

    Example::

        nash_alpha(np.diag([1.0, 4.0]))   # [1.0, 0.5] = 1 / ‖g_i‖ (orthogonal gradients)
    """
    k = gram.shape[0]
    alpha = np.ones(k) if previous is None else np.array(previous, dtype=np.float64)
    diag = np.diag(gram).astype(np.float64)
    live = (diag > 0) & (diag > ZERO * diag.max())
    if not live.any():
        return alpha
    norms = np.sqrt(diag[live])
    c = gram[np.ix_(live, live)] / np.outer(norms, norms)
    beta = _newton(c, max_iter)
    if beta is None:
        return alpha
    alpha[live] = beta / norms
    return alpha


class NashMTL(GradWeighting):
    """The Nash bargaining solution: ``g = Σ α_i·g_i`` with α > 0 solving
    ``(G·Gᵀ·α)_i = 1/α_i`` (:func:`nash_alpha`; so ``‖g‖ = √k`` whatever the losses' scale,
    as the paper and the official code), then the combined gradient clipped to norm
    ``max_norm`` (``torch.nn.utils.clip_grad_norm_``'s rule, on the shared parameters).

    ======================  ==========  ===============================================
    option                  default     source
    ======================  ==========  ===============================================
    ``max_norm``            1.0         LibMTL/config.py:55, nash-mtl weight_methods.py:104
    ``update_weights_every``  1         LibMTL/config.py:53 (α reused in between)
    ======================  ==========  ===============================================

    The official code solves it by ≤ 20 convex-concave steps with cvxpy/ECOS (stop at
    ‖Gα − 1/α‖ < 1e-3, ``optim_niter``); here Newton's method on the convex
    ``½βᵀCβ − Σ log β`` solves it to machine precision, so there is no ``optim_niter``.
    Where there is no solution, the last α is kept (official: its ECOS problem is
    infeasible and it keeps its last α; 1 at the start); a task whose gradient is 0 keeps
    its last α while the others solve theirs.
    Task-specific parameters get ``α_i·∇L_i`` (official: Σ α_i L_i is backpropagated),
    unclipped (the clip is on the shared parameters). Not on the representation
    (LibMTL forbids it). The shown weight is α times the clip factor.

    Example::

        AutoWeight([ce, mse, mse], method="nash_mtl", max_norm=1.0)
    """

    name = "nash_mtl"
    libmtl_name = "Nash_MTL"
    libmtl_lacks: ClassVar[dict[str, str]] = {
        "optim_niter": "nash_mtl has no cvxpy CCP loop to cap: it solves α by Newton's method to convergence "
                       "(Newton decrement < 1e-12)"}
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
        # α and the step count: buffers, so loss.state_dict() resumes them (host copies above)
        self.register_buffer("nash_alpha", paddle.ones([self.n], dtype="float64"))
        self.register_buffer("nash_step", paddle.zeros([], dtype="int64"))

    def alphas(self, gram: np.ndarray, losses: np.ndarray) -> np.ndarray:
        if self._step % self.update_weights_every == 0:
            self._nash = nash_alpha(gram, self._nash)
            self.nash_alpha.set_value(self._nash)
        self._step += 1
        self.nash_step.set_value(np.array(self._step, dtype=np.int64))
        alpha = self._nash.copy()
        if self.max_norm > 0:  # torch.nn.utils.clip_grad_norm_'s rule
            norm = math.sqrt(max(float(alpha @ gram @ alpha), 0.0))
            alpha *= min(1.0, self.max_norm / (norm + 1e-6))
        return alpha

    def task_scales(self, losses: paddle.Tensor) -> paddle.Tensor | None:
        return self.nash_alpha.astype("float32")

    def state_loaded(self) -> None:
        self._nash = self.nash_alpha.numpy().astype(np.float64)
        self._step = int(self.nash_step)

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().set_checkpoint_state(state)
        if "step" in state:  # a checkpoint from before these buffers
            self.nash_step.set_value(np.array(int(state["step"]), dtype=np.int64))
        if "alpha" in state:
            self.nash_alpha.set_value(np.asarray(state["alpha"], dtype=np.float64))
        self.state_loaded()

    def extra_repr(self) -> str:
        return f"max_norm={self.max_norm}, update_weights_every={self.update_weights_every}"
