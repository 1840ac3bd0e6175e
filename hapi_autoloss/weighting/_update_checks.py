"""The AutoWeight methods that the check before each update, and the plain-loop warnings, call:
what the training forwards since the last update held, and who drives the loss.

The check itself is hapi glue (``_hapi/optimizer.py``, ``AutoWeightCallback``'s policy); the
record of the forwards is :class:`._since.SinceUpdate`; the plain-loop counts are
:class:`._plain.PlainChecks`. This base holds the AutoWeight side of both.
"""

from __future__ import annotations

import math

import paddle

from .. import _hapi
from ._plain import PlainChecks
from ._since import SinceUpdate


class UpdateChecks(paddle.nn.Layer):
    """The base of :class:`~hapi_autoloss.AutoWeight` that answers the checks before an update."""

    task_names: list[str]
    _since: SinceUpdate
    _plain: PlainChecks

    def last_losses(self) -> dict[str, float]:
        raise NotImplementedError

    def _driven(self) -> bool:
        """Whether a trainer (hapi's ``attach``, PaddleSeg's) makes the calls, not a plain loop."""
        return self._since.recording or self._plain.driven or _hapi.is_attached(self)

    def _zeroed(self, text: str) -> None:
        if not self._driven():
            self._plain.nonfinite(text)

    def nonfinite_now(self) -> str:
        """The non-finite losses of the train step being refused, e.g. "task 'b' = nan" ("" if none;
        a host read, on that step only): every call of this loss in it, deep supervision included."""
        now = self._since.now(self.task_names)
        if now is not None:
            return now
        return ", ".join(f"task '{t}' = {v}" for t, v in self.last_losses().items() if not math.isfinite(v))

    def nonfinite_negative(self) -> str:
        """Why the train step being refused had to be, if the method needs every task loss >= 0 and one
        was negative: e.g. "task 'reg' has loss -1.55 < 0" ("" if not; a host read, on that step only)."""
        return self._since.negative_now(self.task_names)

    def nonfinite_cause(self) -> tuple[str, str]:
        """Why a training forward since the last update must not reach it, as ``("gradient" or
        "loss", which task)`` (set by :meth:`skipped_forwards`); ``("", "")`` if none. For the callback."""
        return self._since.cause

    def skipped_forwards(self) -> int:
        """Training forwards since the last update that it must not take: skipped by a gradient-level
        method, or (accumulation) an earlier batch's non-finite loss. Counted before an update."""
        return self._since.count(self.task_names)

    def checks_forward(self) -> bool:
        """Whether the forward itself refuses a negative loss (a gradient-level method that needs
        losses >= 0), so ``attach`` must tell it, per train step, whether a policy checks the update."""
        return self._since.checks_forward

    def track_batch(self, begins: bool, checked: bool = False) -> None:
        """``attach`` brackets each of hapi's train steps: only their forwards count for the update.
        ``checked``: a non-finite policy checks this step's update (only then does a gradient-level
        forward refuse a negative loss)."""
        if begins:
            self._since.begin_batch(checked)
        else:
            self._since.end_batch()

    def forget_skipped(self) -> None:
        """After an update, or after skipping it: count again from the next batch."""
        self._since.reset()
