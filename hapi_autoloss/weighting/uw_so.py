"""uw_so: analytical uncertainty weighting with a softmax (Kirchdorfer et al., 2024)."""

from __future__ import annotations

import paddle

from .._args import positive
from .base import Weighting

EPS = 1e-8


class UWSO(Weighting):
    """``Σ w_i·L_i`` with ``w = softmax((1 / (L + ε)) / T)`` from the detached losses of
    the same batch (ε = 1e-8): the analytical optimum of uncertainty weighting, 1/L,
    normalised by a softmax with temperature ``T``. The weights sum to 1 (not n), as in
    the authors' code (lukaskirchdorfer/MTL4PPM, ``UW_SO.py``); they swept T from 1 to 20.
    Nothing is learned.

    Example::

        AutoWeight([ce, mse], method="uw_so", temperature=1.0)
    """

    name = "uw_so"
    positive_losses = "weights each loss by 1/L"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = positive(temperature, "temperature", "temperature=1.0")

    def combine(self, losses: paddle.Tensor) -> paddle.Tensor:
        w = paddle.nn.functional.softmax(1.0 / (losses.detach() + EPS) / self.temperature)
        return (w * losses).sum()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
