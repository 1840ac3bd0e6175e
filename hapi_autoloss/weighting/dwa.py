"""dwa: Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import paddle

from .._args import positive
from .._hapi import world
from .base import Weighting

FLOOR = 1e-12  # a zero epoch average must not divide by zero


class DWA(Weighting):
    """``Σ w_i·L_i`` with ``w = n·softmax(r/T)``, ``r_i = L̄_i(e−1) / L̄_i(e−2)`` from the
    average losses of the last two epochs, T = ``temperature`` (2 in the paper); w = 1 for
    the first two epochs. An epoch's average is weighted by batch size, as LibMTL's is,
    over every rank's batches under ``paddle.distributed.launch`` (``end_epoch`` is then
    a collective). A non-finite task loss does not count (the other tasks' losses of that
    batch do, also when ``on_nonfinite='skip'`` drops its update).

    Example::

        AutoWeight([ce, ce, mse], method="dwa", temperature=2.0)
    """

    name = "dwa"
    libmtl_name = "DWA"
    positive_losses = "divides each task's epoch average by the one before"
    libmtl_options: ClassVar[dict[str, str]] = {"T": "temperature"}

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = positive(temperature, "temperature", "temperature=2.0 (DWA's paper)")

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        super().bind(tasks, task_types)
        # The last two epochs' averages and the weights they give, and the running epoch's sums:
        # buffers, so they are saved (a checkpoint in mid-epoch, PaddleSeg's, resumes its sums).
        self.register_buffer("dwa_history", paddle.zeros([2, self.n], dtype="float32"))
        self.register_buffer("dwa_weights", paddle.ones([self.n], dtype="float32"))
        self.register_buffer("epochs_seen", paddle.zeros([], dtype="int64"))
        self.register_buffer("dwa_sum", paddle.zeros([self.n], dtype="float32"))
        self.register_buffer("dwa_count", paddle.zeros([self.n], dtype="float32"))

    def begin_training(self) -> None:
        """Forget the sums of an epoch that did not end (a fit that raised)."""
        self.dwa_sum.set_value(paddle.zeros([self.n], dtype="float32"))
        self.dwa_count.set_value(paddle.zeros([self.n], dtype="float32"))

    def set_checkpoint_state(self, state: dict) -> None:
        self.begin_training()

    def observe(self, losses: paddle.Tensor, batch_size: int = 1) -> None:
        self._seen.pop("dwa_used", None)  # a new epoch's step: weight(used) is the current weights
        finite = paddle.isfinite(losses)  # no host sync: sums stay on the device
        kept = paddle.where(finite, losses, paddle.zeros_like(losses)) * float(batch_size)
        count = finite.astype("float32") * float(batch_size)
        self.dwa_sum.set_value(self.dwa_sum + kept)
        self.dwa_count.set_value(self.dwa_count + count)

    def combine(self, losses: paddle.Tensor) -> paddle.Tensor:
        return (losses * self.dwa_weights).sum()

    def end_epoch(self) -> None:
        total, count = self.dwa_sum.clone(), self.dwa_count.clone()
        self.begin_training()  # the next epoch's sums start at 0
        if world()[1] > 1:  # every rank's batches; a rank without any adds zeros
            packed = paddle.concat([total, count])
            paddle.distributed.all_reduce(packed)
            total, count = packed[: self.n], packed[self.n:]
        if not bool((count > 0).any()):
            return  # no training batch this epoch, anywhere
        self._seen["dwa_used"] = self.dwa_weights.clone()  # weight(used) = this epoch's
        average = total / paddle.clip(count, min=1.0)
        self.dwa_history.set_value(paddle.stack([self.dwa_history[1], average]))
        self.epochs_seen.set_value(self.epochs_seen + 1)
        if int(self.epochs_seen) >= 2:
            ratio = self.dwa_history[1] / paddle.clip(self.dwa_history[0], min=FLOOR)
            self.dwa_weights.set_value(self.n * paddle.nn.functional.softmax(ratio / self.temperature))

    def weight(self, used: bool) -> np.ndarray:
        source = self._seen.get("dwa_used") if used else None
        return (source if source is not None else self.dwa_weights).numpy().astype(np.float64)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
