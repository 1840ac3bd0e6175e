"""The schedule ``TopKScheduler`` follows: its checked arguments, the ratio and dropped
fraction at each position, and the checks that the drop stays below the ratio, on the
schedule and on each ``TopKLoss`` it will set.

No hapi here: the callback that applies it during ``fit`` is in ``topk_scheduler.py``.
The curves and the progress of a position are :mod:`hapi_autoloss.schedules`.
"""

from __future__ import annotations

from .. import schedules
from .._args import check_count
from .._topk_args import check_threshold_drop
from ..topk import TopKLoss, validate_drop, validate_ratio

BY_CHOICES = ("epoch", "step")


class RangeSchedule:
    """The ratio, and optionally the drop, of a TopKLoss over ``total`` epochs or steps.

    The base of :class:`~hapi_autoloss.callbacks.TopKScheduler`, whose docstring
    documents the arguments. Example::

        RangeSchedule(1.0, 0.1, "linear", "epoch", 0, 10, 3, None, None).ratio_at(9)  # 0.1
    """

    def __init__(
        self,
        start: float,
        end: float,
        schedule: str,
        by: str,
        warmup: int,
        total: int | None,
        drops: int,
        drop_start: float | None,
        drop_end: float | None,
    ) -> None:
        self.start = validate_ratio(start, "start")
        self.end = validate_ratio(end, "end")
        if self.end > self.start:
            raise ValueError(
                f"end ({end}) is above start ({start}), but TopKScheduler anneals the kept "
                "fraction down, from all examples to the hardest. Fix: swap them, e.g. "
                "TopKScheduler(start=1.0, end=0.1)."
            )
        if schedule not in schedules.SCHEDULES:
            raise ValueError(
                f"Unknown schedule {schedule!r}. Fix: use one of {', '.join(schedules.SCHEDULES)}."
            )
        if by not in BY_CHOICES:
            raise ValueError(
                f"Unknown by {by!r}. Fix: by='epoch' changes the ratio once per epoch, "
                "by='step' every batch."
            )
        self.schedule = schedule
        self.by = by
        self.warmup = check_count(warmup, "warmup", 0, "warmup=0, or the number of units held at start")
        self.drops = check_count(drops, "drops", 1, "drops=3")
        self.total: int | None = None
        if total is not None:
            self.total = check_count(total, "total", 1, f"total=10 ({by}s)")
            self._check_warmup(self.total)
        self._explicit_total = total is not None
        self.drop_start: float | None = None
        self.drop_end: float | None = None
        if drop_start is not None or drop_end is not None:
            self.drop_start = validate_drop(0.0 if drop_start is None else drop_start, "drop_start")
            self.drop_end = validate_drop(self.drop_start if drop_end is None else drop_end, "drop_end")
            if schedule == "exp" and 0.0 in (self.drop_start, self.drop_end) and self.drop_start != self.drop_end:
                raise ValueError(
                    "schedule='exp' multiplies by the same factor each unit, which cannot start or end "
                    "at a drop of 0. Fix: schedule='linear' (or 'cosine', 'step'), or drop bounds > 0."
                )
            self._check_range([(f"progress {i / 1000:g}", i / 1000) for i in range(1001)])

    def _check_warmup(self, total: int) -> None:
        if self.warmup >= total:
            raise ValueError(
                f"warmup ({self.warmup} {self.by}s) is not shorter than the schedule ({total} "
                f"{self.by}s), so the ratio would never leave start. Fix: a smaller warmup, "
                "or a longer total / more epochs."
            )

    def ratio_at(self, position: int) -> float:
        """The ratio of the 0-based epoch or global step ``position``."""
        if self.total is None:
            raise RuntimeError(
                "TopKScheduler does not know the schedule's length before training starts. "
                "Fix: pass total=..., or call this after model.fit has begun."
            )
        return schedules.ratio_at(
            position, self.total, self.schedule, self.start, self.end, self.warmup, self.drops
        )

    def drop_at(self, position: int) -> float | None:
        """The dropped fraction of the 0-based ``position`` (None: not scheduled)."""
        if self.drop_start is None or self.total is None:
            return None
        return self._drop_value(schedules.progress(position, self.total, self.warmup))

    def _drop_value(self, p: float) -> float:
        assert self.drop_start is not None and self.drop_end is not None
        return schedules.value(p, self.schedule, self.drop_start, self.drop_end, self.drops)

    def _check_range(self, points: list[tuple[str, float]]) -> None:
        """drop < ratio at every (label, progress) point, or an error naming the first clash."""
        for label, p in points:
            ratio = schedules.value(p, self.schedule, self.start, self.end, self.drops)
            drop = self._drop_value(p)
            if drop >= ratio:
                raise ValueError(
                    f"At {label} the scheduled drop ({drop:.4g}) is not below the ratio ({ratio:.4g}), but "
                    "a ranked range averages ranks drop·n+1..ratio·n. Fix: a smaller drop_end/drop_start "
                    "or a larger end/start, e.g. TopKScheduler(1.0, 0.2, drop_end=0.1)."
                )

    def _check_layers(self, layers: list[TopKLoss]) -> None:
        """Before any step: every layer can take every ratio (and drop) of the schedule."""
        assert self.total is not None
        banded = [layer for layer in layers if layer.band is not None]
        if banded:
            raise ValueError(
                f"TopKScheduler anneals ratio and drop, but a TopKLoss uses band={banded[0].band}, which "
                "has neither. Fix: build it with ratio=/drop= instead, or drop the callback."
            )
        refusals = [layer.anneal_refusal for layer in layers if layer.anneal_refusal is not None]
        if refusals:
            raise ValueError(f"TopKScheduler cannot anneal a TopKLoss's ratio: {refusals[0]}")
        if self.drop_start is not None:
            top = max(self.drop_start, self.drop_end or 0.0)
            for layer in layers:  # the drop moves monotonically from drop_start to drop_end
                check_threshold_drop(layer.threshold, top, f" (TopKScheduler takes drop to {top} "
                                     f"on a TopKLoss with threshold={layer.threshold})")  # fmt: skip
            # Every position of the schedule, exactly, before any step (later ones hold end).
            self._check_range([(f"{self.by} {t}", schedules.progress(t, self.total, self.warmup))
                               for t in range(self.total)])  # fmt: skip
            return
        for layer in layers:
            if layer.drop >= self.end:
                raise ValueError(
                    f"A TopKLoss drops {layer.drop} of the hardest losses, but TopKScheduler takes the "
                    f"ratio down to {self.end}, where nothing would be left. Fix: end > drop, or let "
                    "the scheduler set the drop too (drop_start=, drop_end=)."
                )
