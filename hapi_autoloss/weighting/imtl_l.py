"""imtl_l: the loss-balancing half of IMTL (Liu et al., ICLR 2021)."""

from __future__ import annotations

import numpy as np
import paddle

from ._learned import LearnedScale


class IMTLL(LearnedScale):
    """Per task ``e^s·L − s``: the scaled losses e^s·L are driven to 1. σ = e^(−s/2) (so
    the weight is 1/σ²), weight e^s. Optimum s = −log L.

    Example::

        AutoWeight([mse, ce], method="imtl_l")
    """

    name = "imtl_l"

    def total(self, p: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor:
        return (paddle.exp(p) * losses - p).sum()

    def optimum(self, losses: paddle.Tensor) -> paddle.Tensor:
        return -paddle.log(losses)

    def sigma_of(self, p: np.ndarray) -> np.ndarray:
        return np.exp(-p / 2.0)

    def weight_of(self, p: np.ndarray) -> np.ndarray:
        return np.exp(p)
