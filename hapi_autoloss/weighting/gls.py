"""gls: the geometric mean of the losses (Chennupati et al., CVPRW 2019)."""

from __future__ import annotations

import numpy as np
import paddle

from .base import Weighting

GLS_FLOOR = 1e-12  # keeps log(L) finite when a task's loss reaches 0


class GLS(Weighting):
    """``(Π L_i)^(1/n)``. Not a weighted sum: its weight is the gradient
    d total / d L_i = total / (n·L_i), and 0 for a loss below ``GLS_FLOOR`` (the clip
    that keeps the log finite stops the gradient there).

    Example::

        AutoWeight([ce, mse], method="gls")
    """

    name = "gls"
    libmtl_name = "GLS"
    positive_losses = "takes the geometric mean of the losses (log L)"

    def combine(self, losses: paddle.Tensor) -> paddle.Tensor:
        return paddle.exp(paddle.log(paddle.clip(losses, min=GLS_FLOOR)).mean())

    def weight(self, used: bool) -> np.ndarray:
        """d total / d L_i in float64, as paddle computes it: ``clip(L, min=floor)`` passes
        the gradient where L >= floor (in float32)."""
        losses = self._seen.get("train_last" if used else "last")
        if losses is None:
            return np.ones(self.n)
        floor = float(np.float32(GLS_FLOOR))
        values = losses.numpy().astype(np.float64)
        kept = np.maximum(values, floor)
        total = np.exp(np.log(kept).mean())
        return np.where(values >= floor, total / (len(values) * kept), 0.0)
