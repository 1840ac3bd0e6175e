"""imtl: Impartial Multi-Task Learning, IMTL-G with IMTL-L (Liu et al., ICLR 2021)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import paddle

from .gradient import GradWeighting

ZERO = 1e-20  # a gradient with ‖g_i‖² below ZERO·max‖g_j‖² counts as zero


def imtl_g(gram: np.ndarray) -> np.ndarray:
    """IMTL-G's α (Σα = 1) from the Gram matrix of the gradients g_i: the combined
    ``g = Σ α_i·g_i`` has the same projection ``g·u_i`` on every unit gradient u_i.

    ``α_{2..k} = g_1·Uᵀ·(D·Uᵀ)⁻¹``, ``α_1 = 1 − Σ α_{2..k}``, with rows ``D_j = g_1 − g_j`` and
    ``U_j = u_1 − u_j`` (the paper's eq. 6). A zero gradient takes no part (α_i = 0); a
    singular system (parallel gradients) takes the least-squares solution.

    Example::

        imtl_g(np.array([[1.0, 0.0], [0.0, 4.0]]))   # array([0.6667, 0.3333]): g = (2/3, 2/3)·e
    """
    k = gram.shape[0]
    sq = np.clip(np.diag(gram), 0.0, None)
    live = np.flatnonzero(sq > ZERO * sq.max(initial=0.0))
    alpha = np.zeros(k)
    if len(live) == 0:
        return np.full(k, 1.0 / k)
    if len(live) == 1:
        alpha[live[0]] = 1.0
        return alpha
    sub = gram[np.ix_(live, live)]
    p = sub / np.sqrt(sq[live])[None, :]  # p[a, b] = g_a·u_b
    q = p[:, :1] - p[:, 1:]  # q[a, j] = g_a·(u_1 − u_j)
    m = q[:1, :] - q[1:, :]  # (D·Uᵀ)[j, l]
    rest = np.linalg.lstsq(m.T, q[0], rcond=None)[0]  # α·(D·Uᵀ) = g_1·Uᵀ
    alpha[live] = np.concatenate([[1.0 - rest.sum()], rest])
    return alpha


class IMTL(GradWeighting):
    """IMTL = IMTL-G on the scaled losses of IMTL-L:

    ======================  ======================================================
    part                    rule
    ======================  ======================================================
    IMTL-L                  per task ``e^{s_i}·L_i − s_i``; s (start 0) learned
    IMTL-G                  ``α = imtl_g(G_s·G_sᵀ)``, ``G_s`` rows ``e^{s_i}·∇L_i``, Σα = 1
    shared gradient         ``Σ α_i·e^{s_i}·∇L_i`` (α_i·e^{s_i} is shown as the weight)
    task-specific grads     ``e^{s_i}·∇L_i``
    ======================  ======================================================

    s is trained through :meth:`method_loss` (gradient ``e^{s_i}·L_i − 1``), as LibMTL
    (LibMTL/weighting/IMTL.py:20-23). Allowed on the representation (the paper computes
    IMTL-G on the shared feature's gradients; LibMTL allows rep_grad).

    Example::

        AutoWeight([ce, mse], method="imtl")
    """

    name = "imtl"
    libmtl_name = "IMTL"
    positive_losses = "learns s by minimizing e^s·L − s, which has no minimum for L < 0"
    libmtl_note = "LibMTL's IMTL is IMTL-G on IMTL-L's scaled losses, as imtl; imtl_l is the loss half alone"
    rep_grad: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.s: paddle.Tensor | None = None

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        super().bind(tasks, task_types)
        self.s = self.task_parameter(0.0)

    def scales(self) -> np.ndarray:
        assert self.s is not None
        return np.exp(self.s.numpy().astype(np.float64))

    def task_scales(self, losses: paddle.Tensor) -> paddle.Tensor | None:
        assert self.s is not None
        return paddle.exp(self.s.detach())

    def alphas(self, gram: np.ndarray, losses: np.ndarray) -> np.ndarray:
        e = self.scales()
        return imtl_g(gram * np.outer(e, e)) * e

    def combine_gram(self, gram: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor:
        """:meth:`alphas` with the scales kept on the device: the Gram of e^s·g is outer(e, e)·G,
        so a training step reads only that k×k matrix (``alphas`` would read s too)."""
        assert self.s is not None
        e = paddle.exp(self.s.detach()).astype(gram.dtype)
        k = int(losses.shape[0])
        scaled = imtl_g((gram * paddle.outer(e, e)).numpy().astype(np.float64).reshape(k, k))
        alpha = paddle.to_tensor(scaled, dtype="float32") * e.astype("float32")
        self.show_alphas(alpha)
        return alpha

    def method_loss(self, grads: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor | None:
        assert self.s is not None
        return (paddle.exp(self.s) * losses.detach() - self.s).sum()
