"""What the check before an update must know of the training forwards since the last one.

With gradient accumulation (``fit(accumulate_grad_batches=k)``) the check before an update reads
only the last micro-batch's loss (and σ's gradient, which holds every micro-batch's losses). A
method without σ keeps no trace of an earlier micro-batch's non-finite loss, and a gradient-level
method that skipped a forward handed zero gradients on: without this record, the next finite
micro-batch would update alone (or with NaN gradients) and nothing would be said.

Example::

    since = SinceUpdate()
    since.forward(values)            # each training forward under fit (no device op)
    since.count(["depth", "seg"])    # before the update: skipped or non-finite forwards
    since.reset()                    # after the update, or after skipping it
"""

from __future__ import annotations

import math

import numpy as np
import paddle


class SinceUpdate:
    def __init__(self) -> None:
        self.values: list[paddle.Tensor] = []  # each training forward's detached losses
        self.skipped = 0  # forwards a gradient-level method skipped (non-finite)
        self.cause = ("", "")  # ("gradient" or "loss", which task) of the first of them

    def forward(self, values: paddle.Tensor) -> None:
        self.values.append(values)

    def skip(self, kind: str, text: str) -> None:
        self.skipped += 1
        if not self.cause[1]:
            self.cause = (kind, text)

    def count(self, tasks: list[str]) -> int:
        """Forwards since the last update that the update must not take. Reads the host only
        when there was more than one forward (accumulation): the last one's loss is read anyway."""
        if self.skipped or len(self.values) < 2:
            return self.skipped
        earlier = paddle.stack(self.values[:-1]).numpy().astype(np.float64)
        bad = [row for row in earlier if not np.isfinite(row).all()]
        if bad and not self.cause[1]:
            named = [f"task '{t}' = {v}" for t, v in zip(tasks, bad[0].tolist()) if not math.isfinite(v)]
            self.cause = ("loss", f"{', '.join(named)} in a batch accumulated since the last update")
        return len(bad)

    def reset(self) -> None:
        self.values, self.skipped, self.cause = [], 0, ("", "")
