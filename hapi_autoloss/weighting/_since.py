"""What the check before an update must know of the training batches since the last one.

With gradient accumulation (``fit(accumulate_grad_batches=k)``) the check before an update reads
only the last batch's loss (and σ's gradient, which holds every batch's losses). A method without
σ keeps no trace of an earlier batch's non-finite loss, and a gradient-level method that skipped
a forward handed zero gradients on: without this record, the next finite batch would update
alone (or with NaN gradients) and nothing would be said. Only the forwards inside hapi's train
step count (``attach`` wraps ``model.train_batch``): a forward elsewhere (a validation loss with
gradients on in a callback, a plain loop after the fit) is none of the update's business.

Example::

    since = SinceUpdate()
    since.begin_batch()             # as hapi's train step starts (attach's wrapper)
    since.forward(values)           # each forward of that batch (no device op)
    since.end_batch()
    since.count(["depth", "seg"])   # before the update: bad batches since the last one
    since.reset()                   # after the update, or after skipping it
"""

from __future__ import annotations

import math

import numpy as np
import paddle

ACCUMULATED = " in a batch accumulated since the last update"
# A task loss refused as negative is below -NEGATIVE_TOLERANCE: a loss >= 0 in exact arithmetic
# comes out a little below 0 in float32 (mean(1 - cosine_similarity(x, x)) = -6e-8). Every check
# that decides (on the device, and on the host for accumulated batches) and every message use it.
NEGATIVE_TOLERANCE = 1e-4
ANOTHER_RANK = "a task loss < 0 on another rank"


def read_rows(values: list[paddle.Tensor]) -> np.ndarray:
    """The rows of ``values`` read by the check before an update (``_hapi.finite``, which counts it)."""
    from .._hapi.finite import host_rows  # at call time: _hapi imports this package

    return host_rows(values)


def _named(rows: np.ndarray, tasks: list[str], negative: bool) -> tuple[int, str]:
    bad = [row for row in rows if ((row < -NEGATIVE_TOLERANCE) if negative else ~np.isfinite(row)).any()]
    if not bad:
        return 0, ""
    if negative:
        return len(bad), ", ".join(f"task '{t}' has loss {v} < 0" for t, v in zip(tasks, bad[0].tolist())
                                   if v < -NEGATIVE_TOLERANCE)
    return len(bad), ", ".join(f"task '{t}' = {v}" for t, v in zip(tasks, bad[0].tolist()) if not math.isfinite(v))


def first_bad(values: list[paddle.Tensor], tasks: list[str]) -> tuple[int, str]:
    """(how many of ``values`` hold a non-finite loss, "task 'b' = nan, ..." for the first of them)."""
    return _named(read_rows(values), tasks, False) if values else (0, "")


def first_negative(values: list[paddle.Tensor], tasks: list[str]) -> tuple[int, str]:
    """(how many of ``values`` hold a loss < -NEGATIVE_TOLERANCE, "task 'b' has loss -1.5 < 0" for the
    first of them): a host read, made only where the check refused a step."""
    return _named(read_rows(values), tasks, True) if values else (0, "")


class SinceUpdate:
    def __init__(self, positive: bool = False, gradient_level: bool = False) -> None:
        self.recording = False  # inside hapi's train step (``attach`` wraps ``model.train_batch``)
        self.current: list[paddle.Tensor] = []  # this batch's detached losses: the update reads its loss
        self.earlier: list[paddle.Tensor] = []  # earlier batches' since the last update (accumulation)
        self.batch = 0  # train batches begun
        self.skipped = 0  # forwards a gradient-level method skipped (non-finite)
        self.cause = ("", "")  # ("gradient" or "loss", which task) of the first of them
        self.cause_batch = 0
        self.positive = positive  # the method needs every task loss >= 0 (its ``positive_losses``)
        # a loss-level method's: the check before the update reads this batch's losses for their sign
        # (one read of k floats; a where() on the device cost 3 forward ops and a backward one); a
        # gradient-level method's forward checks them itself (``_pertask``)
        self.read_current = positive and not gradient_level
        self.checks_forward = positive and gradient_level
        self.checked = False  # a non-finite policy checks this train step's update (``policy_of``)

    @property
    def refusing(self) -> bool:
        """Whether this forward refuses a negative loss (a gradient-level method's, in ``_pertask``):
        hapi's train step, a policy checks its update and the method needs losses >= 0. A loss-level
        method's losses are read by :meth:`count` instead."""
        return self.recording and self.checked and self.positive

    def begin_batch(self, checked: bool = False) -> None:
        self.earlier.extend(self.current)
        self.current, self.recording, self.batch, self.checked = [], True, self.batch + 1, checked

    def end_batch(self) -> None:
        self.recording = False

    def forward(self, values: paddle.Tensor) -> None:
        if self.recording:
            self.current.append(values)

    def skip(self, kind: str, text: str) -> None:
        if self.recording:
            self.skipped += 1
            if not self.cause[1]:
                self.cause, self.cause_batch = (kind, text), self.batch

    def count(self, tasks: list[str]) -> int:
        """Batches' forwards since the last update that it must not take: a non-finite loss of an
        earlier batch (accumulation), or a loss below -NEGATIVE_TOLERANCE for a method that needs them
        >= 0. One host read, of the earlier batches' losses and (a loss-level method needing losses
        >= 0) this batch's; none for a method that takes any sign without accumulation."""
        if self.skipped:
            kind, text = self.cause
            if self.cause_batch < self.batch and not text.endswith(ACCUMULATED):
                self.cause = (kind, text + ACCUMULATED)
            return self.skipped
        values = self.earlier + (self.current if self.read_current else [])
        if not values:
            return 0
        rows = read_rows(values)
        early, count = len(self.earlier), 0
        if early:
            count, named = _named(rows[:early], tasks, False)
            if named and not self.cause[1]:
                self.cause = ("loss", named + ACCUMULATED)
        # the same read: a negative loss, this batch's or an earlier one's (one min() when there is none);
        # it is named even beside an earlier NaN, as it is refused whatever the non-finite policy says
        if self.positive and not rows.min() >= -NEGATIVE_TOLERANCE:
            negative, named = _named(rows, tasks, True)
            if named:
                first = next(i for i, row in enumerate(rows) if (row < -NEGATIVE_TOLERANCE).any())
                self.cause = ("negative", named + (ACCUMULATED if first < early else ""))
                count = max(count, negative)
        return count

    def now(self, tasks: list[str]) -> str | None:
        """The non-finite losses of this batch's forwards ("" if none), read on a refused step only;
        None if no train step was ever tracked (a loss driven by hand, not through ``attach``)."""
        return first_bad(self.current, tasks)[1] if self.batch else None

    def negative_now(self, tasks: list[str]) -> str:
        """The negative losses that refused this step ("" if none; a host read, on that step only)."""
        kind, text = self.cause
        if kind == "negative":
            return text
        return first_negative(self.current, tasks)[1] if self.positive and self.checked and self.batch else ""

    def reset(self) -> None:
        self.current, self.earlier, self.skipped, self.cause = [], [], 0, ("", "")
