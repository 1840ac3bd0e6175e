"""GradWeighting: the base class of the gradient-level methods (MGDA, PCGrad, CAGrad, ...).

A loss-level method turns the per-task losses into one total; a gradient-level method
turns the per-task *gradients* of the shared parameters into one gradient. AutoWeight
computes those gradients inside its forward (``_pertask``), averaged over ranks, and
hands them to the method; hapi's single ``backward`` then only writes the result.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import paddle

from ._method_checks import check_per_task
from .base import Weighting


class GradWeighting(Weighting):
    """Combines the per-task gradients ``G`` (shape [k, n]: task i's gradient of the shared
    parameters, or of the shared representation, flattened) into one gradient ``g`` [n].

    Most methods only need the Gram matrix ``G·Gᵀ``: implement :meth:`alphas` (NumPy,
    float64) and ``g = Σ α_i·G_i`` follows. Such a method may run on the representation's
    gradients (``rep_grad=True``, LibMTL's cheaper mode), and is exact under
    ``paddle.distributed.launch`` in both modes. A method that needs more (a gradient
    history, norms of one layer) overrides :meth:`combine_grads` and sets ``rep_grad = False``.

    Hooks, besides :class:`Weighting`'s (``combine`` here is the plain sum Σ L, the value hapi logs):

    - :meth:`task_scales`: the factor on task i's gradient of its task-specific parameters
      (1 by default; imtl's e^s, db_mtl's 1/L).
    - :meth:`alphas` or :meth:`combine_grads`: the combined gradient; record the factors
      with :meth:`show_alphas` so that ``weights()`` and the exporters show them.
    - :meth:`method_loss`: a loss whose gradient trains the method's own parameters.

    ``last_shared`` is the column slice of ``G`` that holds the last shared layer's
    parameters (parameter mode), for methods that look at one layer (gradnorm).

    Example (a complete method: each task's gradient scaled to unit norm)::

        class UnitGrad(GradWeighting):
            name = "unit_grad"

            def alphas(self, gram, losses):
                return 1.0 / np.sqrt(np.maximum(np.diag(gram), 1e-20))

        loss = AutoWeight([ce, mse], method=UnitGrad())
    """

    rep_grad: ClassVar[bool] = True
    # Why the rule breaks when a task's loss reaches no shared parameter (its gradient there is
    # 0 by construction), as the end of a sentence; "" when such a task just trains its own head.
    zero_task_breaks: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.last_shared: slice = slice(None)
        self._alphas = np.zeros(0)

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        if len(tasks) < 2:  # at construction: the first step's "no shared parameter" says less
            raise ValueError(
                f"method={self.name!r} combines the gradients of several tasks, but the loss has one task "
                f"({tasks[0]!r} only), so there is nothing to combine. Fix: method='equal' (the loss as "
                "it is), or give AutoWeight every task's loss."
            )
        super().bind(tasks, task_types)
        self._alphas = np.ones(self.n)

    # ------------------------------------------------------------ hooks

    def task_scales(self, losses: paddle.Tensor) -> paddle.Tensor | None:
        """Factor [k] on each task's gradient of its own (task-specific) parameters; None: 1."""
        return None

    def alphas(self, gram: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """α [k] (float64) from the Gram matrix ``G·Gᵀ`` [k, k] and the losses [k], so that
        the combined gradient is ``Σ α_i·G_i``."""
        raise NotImplementedError(
            f"{type(self).__name__} implements neither alphas(gram, losses) nor "
            "combine_grads(grads, losses). Fix: return the factor of each task's gradient from alphas."
        )

    def combine_grads(self, grads: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor:
        """The combined gradient [n] from ``grads`` [k, n] (float32) and ``losses`` [k]."""
        gram = paddle.matmul(grads, grads, transpose_y=True)
        alpha = self.combine_gram(gram, losses)
        return paddle.matmul(alpha.unsqueeze(0), grads).squeeze(0)

    def combine_gram(self, gram: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor:
        """α as a float32 tensor [k], from :meth:`alphas` in float64 on the host (one read of
        k×k + k values)."""
        k = int(losses.shape[0])
        host = paddle.concat([gram.reshape([-1]), losses.astype(gram.dtype)]).numpy().astype(np.float64)
        gram_host = host[: k * k].reshape(k, k)
        alpha = check_per_task(self, "alphas", self.alphas(gram_host, host[k * k :]), k)
        # a task with no gradient at this step adds nothing: it shows 0, not its factor on a zero
        # vector (cagrad's reaches 1e8 there, and would flatten every other curve of the plot)
        self.show_alphas(np.where(np.diag(gram_host) > 0, alpha, 0.0))
        return paddle.to_tensor(alpha, dtype="float32")

    @classmethod
    def has_rep_mode(cls) -> bool:
        """Whether the rule can run on the representation's gradients: it is a function of the
        Gram matrix (``alphas``), not of the gradients themselves (``combine_grads``)."""
        return cls.rep_grad and cls.combine_grads is GradWeighting.combine_grads

    def method_loss(self, grads: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor | None:
        """A loss whose gradient trains the method's parameters (``grads``, ``losses`` are detached)."""
        return None

    def shared_layout(self, layout: list[tuple[int, int, int]], params: list[Any]) -> None:
        """Parameter mode, each step before combine_grads: the shared columns as (id, key of the
        structured name, size) per parameter ``params``, for a method that keeps a per-column
        history (:class:`._columns.KeepsColumns`, db_mtl's); nothing here. ``_pertask`` builds the
        layout only for a method that overrides this."""

    def shared_moved(self, index: np.ndarray, before: int) -> None:
        """The shared columns changed since the last step (a layer frozen or unfrozen): new column
        j was column ``index[j]`` of the ``before`` old ones, −1 for a new one. A method that keeps
        a per-column history (db_mtl's buffer) moves it along; called before combine_grads."""

    # ------------------------------------------------------------ display

    def show_alphas(self, alpha: np.ndarray | paddle.Tensor) -> None:
        """Keep α for ``weights()`` / ``used()`` and the exporters. A tensor is kept as it is and
        read only when shown, so a method that computes α on the device adds no host read."""
        if isinstance(alpha, paddle.Tensor):
            self._seen["alphas"] = alpha.detach()  # in _seen: a Tensor attribute would become a buffer
        else:
            self._seen.pop("alphas", None)
            self._alphas = np.asarray(alpha, dtype=np.float64).copy()

    def combine(self, losses: paddle.Tensor) -> paddle.Tensor:
        return losses.sum()

    def weight(self, used: bool) -> np.ndarray:
        pending = self._seen.pop("alphas", None)  # read once, when first shown
        if pending is not None:
            self._alphas = pending.numpy().astype(np.float64)
        return self._alphas.copy()

    @property
    def needs_callback(self) -> bool:
        return True

    @property
    def callback_reason(self) -> str:
        return (f"combines each task's gradient of the network's shared parameters ({self.name}), but only "
                "the callback tells it the network, so hapi's single backward would train on the plain sum "
                "of the losses")

    def checkpoint_state(self) -> dict[str, Any]:
        """The last step's α, so that a resumed run shows them (a subclass adds its own state)."""
        return {"alphas": [float(a) for a in self.weight(used=True)]}

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        if "alphas" in state:
            self._seen.pop("alphas", None)
            self._alphas = np.asarray(state["alphas"], dtype=np.float64)
