"""equal: the plain sum of the losses."""

from __future__ import annotations

import numpy as np
import paddle

from .base import Weighting


class Equal(Weighting):
    """``Σ L_i``: every task's weight is 1.

    Example::

        AutoWeight([ce, mse], method="equal")
    """

    name = "equal"
    libmtl_name = "EW"

    def combine(self, losses: paddle.Tensor) -> paddle.Tensor:
        return losses.sum()

    def weight(self, used: bool) -> np.ndarray:
        return np.ones(self.n)
