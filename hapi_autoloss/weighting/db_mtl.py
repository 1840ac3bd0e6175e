"""db_mtl: Dual-Balancing Multi-Task Learning (Lin et al., 2023)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import paddle

from .._args import is_real, non_negative
from ._columns import KeepsColumns

EPS = 1e-8  # LibMTL's, in log(L + ε) and in the norm ratio


class DBMTL(KeepsColumns):
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
    from 1. The buffer, the parameter of each of its columns (a key of its structured name, and its
    size) and t are buffers, saved by ``loss.state_dict()``, hapi's checkpoints and PaddleSeg's, and
    loading gives them the saved shape, so a resumed run continues exactly, also when a layer was frozen
    or unfrozen since the save, when the network lists its parameters in another order, or when the
    checkpoint is loaded back into a loss that has run since. A column whose parameter is new (unfrozen,
    or a layer replaced in the process; after a load: a name or size not saved) starts at 0, as at
    step 1. Not on the representation (LibMTL forbids it).
    The losses handed in must be the same on every rank (the buffer is per run).

    Example::

        AutoWeight([ce, mse], method="db_mtl", beta=0.9, beta_sigma=0.0)
    """

    name = "db_mtl"
    libmtl_name = "DB_MTL"
    positive_losses = "takes log L (its gradient ∇L / L)"
    libmtl_options: ClassVar[dict[str, str]] = {"DB_beta": "beta", "DB_beta_sigma": "beta_sigma"}
    rep_grad: ClassVar[bool] = False
    layout_buffers: ClassVar[dict[str, int]] = {"db_grads": 1, "shared_columns": 0}  # loading takes the saved columns
    db_grads: paddle.Tensor  # buffers (bind)
    db_step: paddle.Tensor

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        super().__init__()
        if not is_real(beta) or not (0 <= beta < 1):
            raise ValueError(f"beta must be a number in [0, 1), got {beta!r}. Fix: e.g. beta=0.9 (LibMTL's).")
        self.beta = float(beta)
        self.beta_sigma = non_negative(beta_sigma, "beta_sigma", "beta_sigma=0.0 (LibMTL's)")

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        super().bind(tasks, task_types)
        # ĝ [k, n] and t: buffers, so loss.state_dict() resumes them. n is known at the first
        # step: empty until then (loading gives it the saved shape).
        self.register_buffer("db_grads", paddle.zeros([self.n, 0], dtype="float32"))
        self.register_buffer("db_step", paddle.zeros([], dtype="float64"))

    def task_scales(self, losses: paddle.Tensor) -> paddle.Tensor | None:
        return 1.0 / (losses.detach() + EPS)

    def combine_grads(self, grads: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor:
        log_grads = grads / (losses.detach().astype(grads.dtype) + EPS).unsqueeze(1)
        self.db_step = self.db_step + 1.0  # on the device: no host copy
        beta = (self.beta / self.db_step**self.beta_sigma).astype(grads.dtype) if self.beta_sigma else self.beta
        old = self.db_grads
        if tuple(old.shape) != tuple(log_grads.shape):
            old = paddle.zeros_like(log_grads)
        buf = log_grads + beta * (old - log_grads)
        self.db_grads = buf
        norms = paddle.linalg.norm(buf, axis=1)
        # a task with no gradient here (a probe on detached features) shows 0, not max/ε: it adds nothing
        alpha = paddle.where(norms > 0, norms.max() / (norms + EPS), paddle.zeros_like(norms))
        self.show_alphas(alpha)
        return paddle.matmul(alpha.unsqueeze(0), buf).squeeze(0)

    def shared_moved(self, index: np.ndarray, before: int) -> None:
        """Keep ĝ of the parameters still shared; a newly shared one starts at 0, as at step 1."""
        old = self.db_grads
        if old.shape[1] != before or before == 0:  # nothing kept yet (or a checkpoint from before shared_columns)
            return
        kept = paddle.gather(old, paddle.to_tensor(np.maximum(index, 0)), axis=1)
        self.db_grads = kept * paddle.to_tensor(index >= 0).astype(old.dtype)

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().set_checkpoint_state(state)
        if "step" in state:  # a checkpoint from before these buffers
            self.db_step = paddle.to_tensor(float(state["step"]), dtype="float64")
            buf = state.get("buffer")
            self.db_grads = paddle.zeros([self.n, 0]) if buf is None else paddle.to_tensor(
                np.asarray(buf, dtype=np.float32))

    def extra_repr(self) -> str:
        return f"beta={self.beta}, beta_sigma={self.beta_sigma}"
