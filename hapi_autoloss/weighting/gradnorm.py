"""gradnorm: Gradient Normalization (Chen et al., ICML 2018)."""

from __future__ import annotations

from typing import ClassVar

import paddle

from .._args import non_negative
from .gradient import GradWeighting

FLOOR = 1e-12  # a zero initial loss must not divide by zero


class GradNorm(GradWeighting):
    """Learned weights ``w = k·softmax(p)`` (Σw = k, LibMTL/weighting/GradNorm.py:27), with

    ==================  =========================================================
    quantity            rule
    ==================  =========================================================
    shared gradient     ``Σ w_i·g_i`` (w detached); task-specific grads ``w_i·∇L_i``
    norms               ``G_i = ‖w_i·g_i[last_shared]‖`` (the last shared layer)
    training rates      ``r_i = L̃_i / mean(L̃)``, ``L̃_i = L_i / L_i(0)``
    loss of p           ``Σ_i |G_i − mean(G)·r_i^α|``, the target detached (paper eq. 2)
    ==================  =========================================================

    α = 1.5 (``alpha``, LibMTL/config.py:46; the paper's NYUv2 value). ``L(0)``: the losses
    of the first training step that reaches the method (a buffer, saved with checkpoints);
    LibMTL instead trains one epoch with equal weights and takes that epoch's average.
    Not on the representation: the norms are of the last shared layer's weights' gradients.

    Example::

        AutoWeight([ce, mse], method="gradnorm", alpha=1.5)
    """

    name = "gradnorm"
    libmtl_name = "GradNorm"
    positive_losses = "divides each loss by its first value (L / L(0))"
    rep_grad: ClassVar[bool] = False
    zero_task_breaks = ("its targets follow the mean gradient norm, which that zero lowers for every task, and "
                        "the softmax lets that task's weight drift up at the others' expense")

    def __init__(self, alpha: float = 1.5) -> None:
        super().__init__()
        self.alpha = non_negative(alpha, "alpha", "alpha=1.5 (the paper's)")
        self.p: paddle.Tensor | None = None

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        super().bind(tasks, task_types)
        self.p = self.task_parameter(0.0)
        self.register_buffer("initial_losses", paddle.zeros([self.n], dtype="float32"))
        self.register_buffer("initial_set", paddle.zeros([], dtype="int32"))

    def weights(self) -> paddle.Tensor:
        """w = k·softmax(p), with its graph to p."""
        assert self.p is not None
        return self.n * paddle.nn.functional.softmax(self.p)

    def record_initial(self, losses: paddle.Tensor) -> None:
        """Keep the first losses as L(0) (once per run: a resumed run keeps its L(0)). On the
        device, no host read; AutoWeight only calls the method on finite steps."""
        known = self.initial_set > 0
        self.initial_losses.set_value(paddle.where(known, self.initial_losses, losses.detach().astype("float32")))
        self.initial_set.set_value(paddle.ones_like(self.initial_set))

    def task_scales(self, losses: paddle.Tensor) -> paddle.Tensor | None:
        return self.weights().detach()

    def combine_grads(self, grads: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor:
        w = self.weights().detach()  # L(0) is recorded by method_loss, which follows in the same step
        self.show_alphas(w)
        return paddle.matmul(w.unsqueeze(0), grads).squeeze(0)

    def method_loss(self, grads: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor | None:
        self.record_initial(losses)
        w = self.weights()
        norms = w * paddle.linalg.norm(grads.detach()[:, self.last_shared], axis=1)
        ratio = losses.detach() / paddle.clip(self.initial_losses, min=FLOOR)
        rate = ratio / paddle.clip(ratio.mean(), min=FLOOR)  # every loss 0 (a met margin): rate 0, not 0/0
        target = (norms.mean() * rate**self.alpha).detach()
        return (norms - target).abs().sum()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
