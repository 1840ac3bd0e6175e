"""rlw: Random Loss Weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle

from ._stream import SharedStream
from .base import Weighting


class RLW(SharedStream, Weighting):
    """``Σ w_i·L_i`` with ``w = softmax(z)``, ``z ~ N(0, 1)`` drawn at every training step
    from its own NumPy generator (``seed``), so drawing never shifts Paddle's random
    stream. Evaluation uses the expected weight 1/n. Under ``paddle.distributed.launch``
    every rank draws the same weights: with ``seed=None`` rank 0's seed is broadcast once.

    Example::

        AutoWeight([ce, mse], method="rlw", seed=0)
    """

    name = "rlw"
    libmtl_name = "RLW"

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.start_stream(seed)
        self._last = np.zeros(0)

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        super().bind(tasks, task_types)
        self._last = np.full(self.n, 1.0 / self.n)

    def observe(self, losses: paddle.Tensor, batch_size: int = 1) -> None:
        self.share_seed()  # a plain loop has no begin_training: the first forward agrees
        z = self._rng.standard_normal(self.n)
        self.drew()
        e = np.exp(z - z.max())
        self._last = e / e.sum()
        self._seen["draw"] = paddle.to_tensor(self._last, dtype="float32")

    def combine(self, losses: paddle.Tensor) -> paddle.Tensor:
        if paddle.is_grad_enabled() and "draw" in self._seen:
            return (losses * self._seen["draw"]).sum()
        return (losses * self.const("mean", [1.0 / self.n] * self.n)).sum()

    def weight(self, used: bool) -> np.ndarray:
        return self._last.copy()

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "last": [float(w) for w in self._last]}

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().set_checkpoint_state(state)
        if "last" in state:
            self._last = np.asarray(state["last"], dtype=np.float64)

    def extra_repr(self) -> str:
        return f"seed={self.seed}"
