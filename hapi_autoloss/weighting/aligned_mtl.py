"""aligned_mtl: Aligned-MTL, independent component alignment (Senushkin et al., CVPR 2023)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .gradient import GradWeighting

SCALES = ("min", "median", "rmse")
EPS32 = float(np.finfo(np.float32).eps)  # the rank cut of the official code (torch's default dtype)


class AlignedMTL(GradWeighting):
    """Aligns the task gradients to an orthogonal, equal-norm system: with the Gram
    matrix ``G·Gᵀ = V·Λ·Vᵀ`` (eigenvalues above ``λ_max·k·ε_float32`` kept, the rank r),

    ==========  =================================================
    scale       combined gradient ``Σ α_i·g_i``, ``α = B·1``
    ==========  =================================================
    ``"min"``   ``B = √λ_min · V·Λ^(−½)·Vᵀ`` (default, paper/LibMTL)
    ``"median"`` √(lower median λ) in place of √λ_min
    ``"rmse"``  √(mean λ) in place of √λ_min
    ==========  =================================================

    as the official ProcrustesSolver (SamsungLabs/MTL code/optim/aligned/solver.py:16-34;
    ``scale_mode='min'`` by default, balancer.py:10) and LibMTL/weighting/Aligned_MTL.py:24-38.
    All-zero gradients give α = 0. Task-specific parameters get their plain gradients
    (the official ``scale_decoder_grad=False``). Allowed on the representation
    (the paper's Aligned-MTL-UB; LibMTL allows rep_grad).

    Example::

        AutoWeight([ce, mse, mse], method="aligned_mtl")
    """

    name = "aligned_mtl"
    libmtl_name = "Aligned_MTL"
    rep_grad: ClassVar[bool] = True

    def __init__(self, scale: str = "min") -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}. Fix: scale='min' (the paper's).")
        self.scale = scale

    def alphas(self, gram: np.ndarray, losses: np.ndarray) -> np.ndarray:
        k = gram.shape[0]
        lam, vec = np.linalg.eigh((gram + gram.T) / 2)
        top = float(lam.max(initial=0.0))
        keep = lam > top * k * EPS32
        if top <= 0 or not keep.any():
            return np.zeros(k)
        lam, vec = lam[keep], vec[:, keep]
        up = np.sort(lam)  # torch.median's is the lower middle value
        factor = {"min": up[0], "median": up[(len(up) - 1) // 2], "rmse": up.mean()}[self.scale]
        b = np.sqrt(factor) * (vec / np.sqrt(lam)[None, :]) @ vec.T
        return b.sum(axis=1)

    def extra_repr(self) -> str:
        return f"scale={self.scale!r}"
