"""fixed: given weights, as PaddleSeg's MixedLoss (e.g. 0.8·CE + 0.2·Dice)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import paddle

from .._args import as_real
from ._tasks import per_task
from .base import Weighting


class Fixed(Weighting):
    """``Σ w_i·L_i`` with the given ``weights`` (finite, >= 0), a list in task order or a
    dict by task name.

    Example::

        AutoWeight({"ce": ce, "dice": DiceLoss()}, method="fixed", weights=[0.8, 0.2], routing="shared")
    """

    name = "fixed"

    def __init__(self, weights: Sequence[float] | Mapping[str, float] | None = None) -> None:
        super().__init__()
        self._given = weights
        self.values: list[float] = []

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        super().bind(tasks, task_types)
        example = f"weights={[round(1.0 / len(tasks), 3)] * len(tasks)}"
        if self._given is None:
            raise ValueError(f"method='fixed' needs weights, one per task. Fix: {example}.")
        given = per_task(self._given, tasks, "weights", example)
        values = [as_real(w) for w in given]
        if any(w is None or not (math.isfinite(w) and w >= 0) for w in values) or not any(w for w in values):
            raise ValueError(
                f"fixed weights must be numbers, finite and >= 0, at least one > 0, got {given}. Fix: {example}."
            )
        self.values = [float(w) for w in values if w is not None]

    def combine(self, losses: paddle.Tensor) -> paddle.Tensor:
        return (losses * self.const("fixed", self.values)).sum()

    def weight(self, used: bool) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64)

    def extra_repr(self) -> str:
        return f"weights={self.values}"
