"""pcgrad: Projecting Conflicting Gradients (Yu et al., NeurIPS 2020)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ._stream import SharedStream
from .gradient import GradWeighting


class PCGrad(SharedStream, GradWeighting):
    """Gradient surgery: for each task i, in a random order of the tasks j (all of them,
    i included, as LibMTL and the official code), if ``g_i^PC·g_j < 0`` then
    ``g_i^PC ← g_i^PC − (g_i^PC·g_j / ‖g_j‖²)·g_j``; the combined gradient is
    ``Σ_i g_i^PC`` (the sum, LibMTL/weighting/PCGrad.py:37).

    Each g_i^PC is tracked as coefficients on the original gradients, so only the Gram
    matrix is needed; α_j = Σ_i C_ij. A new order per task i per step, from the method's
    own NumPy generator (``seed``): ``rng.permutation(k)`` for i = 0, 1, ... Under
    ``paddle.distributed.launch`` every rank draws the same orders (with ``seed=None``
    rank 0's seed is broadcast once). Not on the representation (LibMTL forbids it:
    the projections are of the parameters' gradients).

    Example::

        AutoWeight([ce, mse], method="pcgrad", seed=0)
    """

    name = "pcgrad"
    libmtl_name = "PCGrad"
    rep_grad: ClassVar[bool] = False

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.start_stream(seed)

    def alphas(self, gram: np.ndarray, losses: np.ndarray) -> np.ndarray:
        self.share_seed()  # a plain loop has no begin_training
        k = gram.shape[0]
        sq = np.diag(gram)
        coef = np.eye(k)
        for i in range(k):
            for j in self._rng.permutation(k):
                dot = float(coef[i] @ gram[:, j])  # g_i^PC · g_j
                if dot < 0 and sq[j] > 0:
                    coef[i, j] -= dot / sq[j]
        self.drew()
        return coef.sum(axis=0)

    def extra_repr(self) -> str:
        return f"seed={self.seed}"
