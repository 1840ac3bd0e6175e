"""stch: smooth Tchebycheff scalarisation (Lin et al., ICML 2024)."""

from __future__ import annotations

import paddle

from .._args import check_count, positive
from .._hapi import world
from .base import Weighting

EPS = 1e-20  # inside the logs, as in the official code


class STCH(Weighting):
    """Smooth Tchebycheff scalarisation of the log-losses against a nadir point.

    As the official code (Xi-L/STCH, ``STCH_MTL/LibMTL/weighting/STCH.py``), epochs
    counted from 0:

    - epochs 0 .. ``warmup_epochs`` − 1: ``Σ log(L_i + ε)``;
    - epoch ``warmup_epochs``: the same, while the nadir point ``z`` is averaged from
      the batches' losses (a plain mean over batches per task, leaving out a non-finite
      task loss; over every rank's batches under ``paddle.distributed.launch``);
    - then ``n·μ·log Σ exp((l_i − m)/μ)`` with ``l_i = log(L_i / z_i + ε)`` and
      ``m = max l`` (detached): the gradient of the smooth max, whose value is shifted
      by ``−n·m`` as in the official code.

    Defaults μ = 1 and 4 warm-up epochs (LibMTL's). Needs ``AutoWeightCallback`` (it
    counts epochs); nothing is learned by the optimizer.

    Example::

        AutoWeight([ce, ce, mse], method="stch", mu=1.0, warmup_epochs=4)
    """

    name = "stch"

    def __init__(self, mu: float = 1.0, warmup_epochs: int = 4) -> None:
        super().__init__()
        self.mu = positive(mu, "mu", "mu=1.0 (the paper's MTL default)")
        self.warmup_epochs = check_count(warmup_epochs, "warmup_epochs", 0, "warmup_epochs=4")

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        super().bind(tasks, task_types)
        self.register_buffer("nadir", paddle.ones([self.n], dtype="float32"))
        self.register_buffer("epochs_seen", paddle.zeros([], dtype="int64"))
        self._epoch = 0  # a host copy of epochs_seen, read once per fit

    def begin_training(self) -> None:
        self._epoch = int(self.epochs_seen)
        for key in ("sum", "count"):
            self._seen.pop(key, None)

    def state_loaded(self) -> None:
        self._epoch = int(self.epochs_seen)  # a plain loop's resume has no begin_training

    def observe(self, losses: paddle.Tensor, batch_size: int = 1) -> None:
        if self._epoch == self.warmup_epochs:  # the nadir epoch; a non-finite task loss does not count
            finite = paddle.isfinite(losses)
            total = paddle.where(finite, losses, paddle.zeros_like(losses))
            count = finite.astype("float32")
            if "sum" in self._seen:
                total, count = total + self._seen["sum"], count + self._seen["count"]
            self._seen.update(sum=total, count=count)

    def combine(self, losses: paddle.Tensor) -> paddle.Tensor:
        if self._epoch <= self.warmup_epochs:
            return paddle.log(losses + EPS).sum()
        scaled = paddle.log(losses / self.nadir + EPS)
        m = scaled.max().detach()
        return self.n * self.mu * paddle.log(paddle.exp((scaled - m) / self.mu).sum())

    def end_epoch(self) -> None:
        if self._epoch == self.warmup_epochs:
            zeros = paddle.zeros([self.n], dtype="float32")
            total, count = self._seen.pop("sum", zeros), self._seen.pop("count", zeros)
            if world()[1] > 1:
                packed = paddle.concat([total, count])
                paddle.distributed.all_reduce(packed)
                total, count = packed[: self.n], packed[self.n:]
            # A task with no finite batch keeps the neutral nadir 1.
            self.nadir.set_value(paddle.where(count > 0, total / paddle.clip(count, min=1.0), paddle.ones_like(total)))
        self._epoch += 1
        self.epochs_seen.set_value(paddle.to_tensor(self._epoch, dtype="int64"))

    def set_checkpoint_state(self, state: dict) -> None:
        self.begin_training()

    def extra_repr(self) -> str:
        return f"mu={self.mu}, warmup_epochs={self.warmup_epochs}"
