"""stch: smooth Tchebycheff scalarisation (Lin et al., ICML 2024)."""

from __future__ import annotations

from typing import ClassVar

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

    Defaults μ = 1 and 4 warm-up epochs (LibMTL's). Needs its epoch ends (it counts
    epochs): ``AutoWeightCallback``, PaddleSeg's ``train`` (:mod:`hapi_autoloss.paddleseg`) or
    ``loss.end_epoch()`` (one with no training forward since the last, e.g. after a validation
    loop, is not an epoch); nothing is learned by the optimizer.

    Example::

        AutoWeight([ce, ce, mse], method="stch", mu=1.0, warmup_epochs=4)
    """

    name = "stch"
    libmtl_name = "STCH"
    positive_losses = "takes log L"
    libmtl_options: ClassVar[dict[str, str]] = {"STCH_mu": "mu", "STCH_warmup_epoch": "warmup_epochs"}

    def __init__(self, mu: float = 1.0, warmup_epochs: int = 4) -> None:
        super().__init__()
        self.mu = positive(mu, "mu", "mu=1.0 (the paper's MTL default)")
        self.warmup_epochs = check_count(warmup_epochs, "warmup_epochs", 0, "warmup_epochs=4")

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        super().bind(tasks, task_types)
        self.register_buffer("nadir", paddle.ones([self.n], dtype="float32"))
        self.register_buffer("epochs_seen", paddle.zeros([], dtype="int64"))
        # The nadir epoch's running sums: buffers, so a checkpoint in mid-epoch (PaddleSeg's) resumes them.
        self.register_buffer("nadir_sum", paddle.zeros([self.n], dtype="float32"))
        self.register_buffer("nadir_count", paddle.zeros([self.n], dtype="float32"))
        self._epoch = 0  # a host copy of epochs_seen, read once per fit
        self._trained = False  # a training forward in this process since the last end_epoch
        self._ended = False  # an end_epoch in this process: a resumed run's first one is never empty

    def begin_training(self) -> None:
        self._epoch = int(self.epochs_seen)
        self._forget_sums()

    def _forget_sums(self) -> None:
        self.nadir_sum.set_value(paddle.zeros([self.n], dtype="float32"))
        self.nadir_count.set_value(paddle.zeros([self.n], dtype="float32"))

    def state_loaded(self) -> None:
        self._epoch = int(self.epochs_seen)  # a plain loop's resume has no begin_training

    def observe(self, losses: paddle.Tensor, batch_size: int = 1) -> None:
        self._trained = True
        if self._epoch == self.warmup_epochs:  # the nadir epoch; a non-finite task loss does not count
            finite = paddle.isfinite(losses)
            total = paddle.where(finite, losses, paddle.zeros_like(losses))
            self.nadir_sum.set_value(self.nadir_sum + total)
            self.nadir_count.set_value(self.nadir_count + finite.astype("float32"))

    def combine(self, losses: paddle.Tensor) -> paddle.Tensor:
        if self._epoch <= self.warmup_epochs:
            return paddle.log(losses + EPS).sum()
        scaled = paddle.log(losses / self.nadir + EPS)
        m = scaled.max().detach()
        return self.n * self.mu * paddle.log(paddle.exp((scaled - m) / self.mu).sum())

    def end_epoch(self) -> None:
        if self._empty_epoch():  # a plain loop's end_epoch after its validation loop, say
            return
        if self._epoch == self.warmup_epochs:
            total, count = self.nadir_sum.clone(), self.nadir_count.clone()
            self._forget_sums()
            if world()[1] > 1:
                packed = paddle.concat([total, count])
                paddle.distributed.all_reduce(packed)
                total, count = packed[: self.n], packed[self.n:]
            # A task with no finite batch keeps the neutral nadir 1.
            self.nadir.set_value(paddle.where(count > 0, total / paddle.clip(count, min=1.0), paddle.ones_like(total)))
        self._epoch += 1
        self.epochs_seen.set_value(paddle.to_tensor(self._epoch, dtype="int64"))

    def _empty_epoch(self) -> bool:
        """No training forward since the last end_epoch of this process, on any rank (a collective)."""
        empty = self._ended and not self._trained
        self._ended, self._trained = True, False
        if world()[1] > 1:
            flag = paddle.to_tensor([0 if empty else 1], dtype="int32")
            paddle.distributed.all_reduce(flag, op=paddle.distributed.ReduceOp.MAX)
            empty = int(flag.numpy()[0]) == 0
        return empty

    def set_checkpoint_state(self, state: dict) -> None:
        self.begin_training()

    def extra_repr(self) -> str:
        return f"mu={self.mu}, warmup_epochs={self.warmup_epochs}"
