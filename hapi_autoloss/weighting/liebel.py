"""liebel: uncertainty weighting with an always-positive regulariser (Liebel & Körner, 2018)."""

from __future__ import annotations

import numpy as np
import paddle

from ._learned import LearnedScale


class Liebel(LearnedScale):
    """Per task ``L / (2c²) + ln(1 + c²)``, c learned (starts at 1), clamped to
    [0.01, 100] by default. σ = c; weight 1/(2c²). Optimum
    c² = (L + √(L² + 8L)) / 4.

    Example::

        AutoWeight({"ce": ce, "dice": DiceLoss()}, method="liebel", routing="shared")
    """

    name = "liebel"
    default_clamp = (0.01, 100.0)
    default_init = 1.0

    def check_clamp(self, lo: float, hi: float) -> None:
        if lo <= 0:
            raise ValueError(
                f"For liebel, clamp bounds c, which must stay > 0, got min {lo}. Fix: e.g. clamp=(0.01, 100.0)."
            )

    def total(self, p: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor:
        c2 = p * p
        return (losses / (2.0 * c2) + paddle.log1p(c2)).sum()

    def optimum(self, losses: paddle.Tensor) -> paddle.Tensor:
        return paddle.sqrt((losses + paddle.sqrt(losses * losses + 8.0 * losses)) / 4.0)

    def sigma_of(self, p: np.ndarray) -> np.ndarray:
        return p

    def weight_of(self, p: np.ndarray) -> np.ndarray:
        return 1.0 / (2.0 * p * p)
