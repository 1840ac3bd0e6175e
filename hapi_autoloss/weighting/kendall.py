"""kendall: homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

import numpy as np
import paddle

from ._learned import LearnedScale


class Kendall(LearnedScale):
    """Per task ``f·e^(−s)·L + ½·s`` with ``s = log σ²``; f = ½ for a regression task,
    1 for a classification task (the paper's eqs. 7 and 10). σ = e^(s/2); weight f·e^(−s).

    Needs ``task_types`` (one of ``"regression"``, ``"classification"`` per task).
    ``init="auto"`` starts at the first batch's optimum ``s = log(2·f·L)``.

    Example::

        AutoWeight([mse, ce], method="kendall", task_types=["regression", "classification"])
    """

    name = "kendall"
    libmtl_name = "UW"
    libmtl_note = ("LibMTL's UW weights every task ½·e^(−s) and starts s at −0.5: kendall with every task "
                   "'regression' and init=-0.5")

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        if all(t is None for t in task_types):
            # No example list of this length: copied as is, it would give every task one type.
            raise ValueError(
                "method='kendall' needs task_types, since a regression task is weighted "
                "½·e^(−s) and a classification task e^(−s). Fix: pass one per task, in the order of "
                f"the losses ({len(tasks)}): 'regression' (e.g. MSELoss, L1Loss) or 'classification' "
                "(e.g. CrossEntropyLoss, BCEWithLogitsLoss), e.g. task_types=['regression', 'classification'] "
                "for [MSELoss, CrossEntropyLoss]."
            )
        super().bind(tasks, task_types)
        self.factors = [0.5 if t == "regression" else 1.0 for t in task_types]

    def total(self, p: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor:
        return (self.const("factors", self.factors) * paddle.exp(-p) * losses + 0.5 * p).sum()

    def optimum(self, losses: paddle.Tensor) -> paddle.Tensor:
        return paddle.log(2.0 * self.const("factors", self.factors) * losses)

    def sigma_of(self, p: np.ndarray) -> np.ndarray:
        return np.exp(p / 2.0)

    def weight_of(self, p: np.ndarray) -> np.ndarray:
        return np.asarray(self.factors) * np.exp(-p)
