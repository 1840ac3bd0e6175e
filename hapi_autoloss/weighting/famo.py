"""famo: Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023)."""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import paddle

from .._args import non_negative, positive
from .._hapi import world
from .base import Weighting

EPS = 1e-8
BETAS = (0.9, 0.999)  # torch.optim.Adam's, as the official code uses
ADAM_EPS = 1e-8


class FAMO(Weighting):
    """FAMO, as the official code (Cranial-XIX/FAMO, ``methods/weight_methods.py``):

    - weights ``z = softmax(w)`` of task logits ``w`` (start 0);
    - total ``Σ z_i·log(L_i − min_i + ε) / c`` with ``c = Σ z_i / (L_i − min_i + ε)``
      detached (min_i = 0, ε = 1e-8), so each loss's gradient is scaled by
      ``z_i / (c·(L_i + ε))`` and these scales sum to 1;
    - after each optimizer update, the same batch's losses are computed again (one
      extra forward, no gradient, the network in the mode it trained in, as the
      official code does) and ``w`` moves by the decrease of each task's log-loss
      ``δ = log(L_before + ε) − log(L_after + ε)``: its gradient is
      ``z ⊙ (δ − z·δ)``, applied by Adam (lr ``w_lr`` = 0.025, betas (0.9, 0.999),
      L2 ``gamma`` added to the gradient as torch's Adam does). ``gamma`` defaults to
      LibMTL's 1e-3 (the paper's runs use 1e-3 to 1e-2).

    ``w`` and its Adam moments are buffers (saved with checkpoints); the model's optimizer
    never sees them. Under ``paddle.distributed.launch``, δ is averaged over ranks, so
    every rank keeps the same ``w``. Shown weight: ``z_i / (c·(L_i + ε))``, d total / d L_i.

    Example::

        AutoWeight([ce, ce, mse], method="famo", w_lr=0.025, gamma=1e-3)
    """

    name = "famo"
    libmtl_name = "FAMO"
    positive_losses = "takes log L"
    libmtl_options: ClassVar[dict[str, str]] = {"FAMO_w_lr": "w_lr", "FAMO_w_gamma": "gamma"}
    wants_losses_after_update = True

    def __init__(self, w_lr: float = 0.025, gamma: float = 1e-3) -> None:
        super().__init__()
        self.w_lr = positive(w_lr, "w_lr", "w_lr=0.025 (the paper's)")
        self.gamma = non_negative(gamma, "gamma", "gamma=1e-3 (LibMTL's)")

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        super().bind(tasks, task_types)
        for key in ("logits", "adam_m", "adam_v"):
            self.register_buffer(key, paddle.zeros([self.n], dtype="float32"))
        self.register_buffer("adam_t", paddle.zeros([], dtype="float32"))

    def combine(self, losses: paddle.Tensor) -> paddle.Tensor:
        z, d = paddle.nn.functional.softmax(self.logits), losses + EPS
        if paddle.is_grad_enabled():
            self._seen["z"] = z  # the weights this forward used, before the update moves w
        c = (z / d).sum().detach()
        return (paddle.log(d) * z / c).sum()

    def after_update(self, losses_after: paddle.Tensor) -> None:
        before = self._seen.get("train_last")
        if before is None:
            return
        if before is self._seen.get("famo_taken"):  # the same training forward's losses again
            warnings.warn(
                "famo's after_update was called again with no training forward since the last call; this "
                "call is ignored (w would move twice for one update). Fix: call loss.after_update(...) once "
                "after each optimizer update.",
                stacklevel=3,
            )
            return
        self._seen["famo_taken"] = before
        delta = paddle.log(before + EPS) - paddle.log(losses_after.astype("float32") + EPS)
        nranks = world()[1]
        if nranks > 1:  # one w on every rank
            paddle.distributed.all_reduce(delta)
            delta = delta / nranks
        if not bool(paddle.isfinite(delta).all()):
            return  # a non-finite loss must not move w
        z = paddle.nn.functional.softmax(self.logits)
        grad = z * (delta - (z * delta).sum()) + self.gamma * self.logits
        b1, b2 = BETAS
        t = self.adam_t + 1.0
        m = b1 * self.adam_m + (1 - b1) * grad
        v = b2 * self.adam_v + (1 - b2) * grad * grad
        step = self.w_lr * (m / (1 - b1**t)) / (paddle.sqrt(v / (1 - b2**t)) + ADAM_EPS)
        for buffer, value in ((self.adam_t, t), (self.adam_m, m), (self.adam_v, v), (self.logits, self.logits - step)):
            buffer.set_value(value)

    def weight(self, used: bool) -> np.ndarray:
        losses = self._seen.get("train_last" if used else "last")
        z_now = self._seen.get("z") if used else None
        z = (z_now if z_now is not None else paddle.nn.functional.softmax(self.logits)).numpy().astype(np.float64)
        if losses is None:
            return z
        d = losses.numpy().astype(np.float64) + EPS
        return z / d / (z / d).sum()

    def extra_repr(self) -> str:
        return f"w_lr={self.w_lr}, gamma={self.gamma}"
