"""mgda: Multiple Gradient Descent Algorithm (Sener & Koltun, NeurIPS 2018)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ._simplex import min_norm
from .gradient import GradWeighting

NORMALIZE = ("none", "l2", "loss", "loss+")


class MGDA(GradWeighting):
    """The min-norm point of the convex hull of the task gradients (MGDA-UB when run on
    the representation's gradients, the paper's Sec. 3.3):

    ====================  ==================================================
    normalize (``n_i``)   combined gradient
    ====================  ==================================================
    ``"none"`` (1)        ``Σ w_i·g_i``, w = argmin_{w∈Δ} ‖Σ w_i·g_i‖
    ``"l2"`` (‖g_i‖)      the same on ``g_i / n_i``: α_i = w_i / n_i
    ``"loss"`` (L_i)
    ``"loss+"`` (L_i‖g_i‖)
    ====================  ==================================================

    ``w`` is exact: the closed form for two tasks, an exact active-set QP over the
    simplex beyond (LibMTL runs Frank-Wolfe to 1e-5 and caps w at 0.999/0.001 for two).
    With a normalization, the combined gradient is the min-norm point of the normalized
    gradients, as LibMTL's parameter mode (``mgda_gn``, LibMTL/config.py:39); the official
    code applied w to the raw losses instead. Task-specific parameters get their plain
    gradients (LibMTL). Allowed on the representation (LibMTL's rep_grad: Gram-only).

    Example::

        AutoWeight([ce, mse], method="mgda", normalize="none")
    """

    name = "mgda"
    libmtl_name = "MGDA"
    libmtl_options: ClassVar[dict[str, str]] = {"mgda_gn": "normalize"}
    rep_grad: ClassVar[bool] = True
    zero_task_breaks = "the min-norm point of gradients that include 0 is 0: the shared parameters would stop training"

    def __init__(self, normalize: str = "none") -> None:
        super().__init__()
        if normalize not in NORMALIZE:
            raise ValueError(
                f"normalize must be one of {NORMALIZE}, got {normalize!r}. Fix: e.g. normalize='none' "
                "(LibMTL's default) or 'l2' (each gradient to unit norm)."
            )
        self.normalize = normalize

    def norms(self, gram: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """The normalizer n_i of each task's gradient (1 where it would be 0 or not finite)."""
        length = np.sqrt(np.clip(np.diag(gram), 0.0, None))
        n = {"none": np.ones_like(losses), "l2": length, "loss": losses, "loss+": losses * length}[self.normalize]
        return np.where(np.isfinite(n) & (n > 0), n, 1.0)

    def alphas(self, gram: np.ndarray, losses: np.ndarray) -> np.ndarray:
        n = self.norms(gram, losses)
        return min_norm(gram / np.outer(n, n)) / n

    def extra_repr(self) -> str:
        return f"normalize={self.normalize!r}"
