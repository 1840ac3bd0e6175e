"""db_mtl: Dual-Balancing Multi-Task Learning (Lin et al., 2023)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import paddle

from .._args import is_real, non_negative
from .gradient import GradWeighting

EPS = 1e-8  # LibMTL's, in log(L + ε) and in the norm ratio


class DBMTL(GradWeighting):
    """Dual balancing: losses on a log scale, gradients to a common norm.

    ==================  =============================================================
    quantity            rule (LibMTL/weighting/DB_MTL.py:28-35)
    ==================  =============================================================
    loss balancing      per task ``log(L_i + ε)``: gradient ``∇L_i / (L_i + ε)``
    gradient buffer     ``ĝ_i ← (1 − β_t)·∇log L_i + β_t·ĝ_i``, β_t = β / t^{β_σ}, ĝ = 0 at start
    gradient balancing  ``α_i = max_j ‖ĝ_j‖ / (‖ĝ_i‖ + ε)``, shared gradient ``Σ α_i·ĝ_i``
    task-specific       ``∇L_i / (L_i + ε)``
    ==================  =============================================================

    ``beta`` = 0.9 and ``beta_sigma`` = 0 (LibMTL/config.py:63-64); t counts the steps
    from 1. The buffer and t are saved with checkpoints (``checkpoint_state``), so a
    resumed run continues exactly. Not on the representation (LibMTL forbids it).
    The losses handed in must be the same on every rank (the buffer is per run).

    Example::

        AutoWeight([ce, mse], method="db_mtl", beta=0.9, beta_sigma=0.0)
    """

    name = "db_mtl"
    rep_grad: ClassVar[bool] = False

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        super().__init__()
        if not is_real(beta) or not (0 <= beta < 1):
            raise ValueError(f"beta must be a number in [0, 1), got {beta!r}. Fix: e.g. beta=0.9 (LibMTL's).")
        self.beta = float(beta)
        self.beta_sigma = non_negative(beta_sigma, "beta_sigma", "beta_sigma=0.0 (LibMTL's)")
        self._step = 0
        self._buffer: dict[str, paddle.Tensor] = {}  # not a Layer attribute: its size is known at the first step

    def task_scales(self, losses: paddle.Tensor) -> paddle.Tensor | None:
        return 1.0 / (losses.detach() + EPS)

    def combine_grads(self, grads: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor:
        log_grads = grads / (losses.detach().astype(grads.dtype) + EPS).unsqueeze(1)
        self._step += 1
        beta = self.beta / self._step**self.beta_sigma
        old = self._buffer.get("g")
        if old is None or tuple(old.shape) != tuple(log_grads.shape):
            old = paddle.zeros_like(log_grads)
        buf = log_grads + beta * (old - log_grads)
        self._buffer["g"] = buf
        norms = paddle.linalg.norm(buf, axis=1)
        alpha = norms.max() / (norms + EPS)
        self.show_alphas(alpha)
        return paddle.matmul(alpha.unsqueeze(0), buf).squeeze(0)

    def checkpoint_state(self) -> dict[str, Any]:
        buf = self._buffer.get("g")
        return {**super().checkpoint_state(), "step": self._step, "buffer": None if buf is None else buf.numpy()}

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().set_checkpoint_state(state)
        self._step = int(state.get("step", 0))
        buf = state.get("buffer")
        self._buffer.clear()
        if buf is not None:
            self._buffer["g"] = paddle.to_tensor(np.asarray(buf, dtype=np.float32))

    def extra_repr(self) -> str:
        return f"beta={self.beta}, beta_sigma={self.beta_sigma}"
