"""LearnedScale: the shared part of the methods that learn one number per task (s or c)."""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import numpy as np
import paddle

from .._args import as_real
from .._hapi import world
from .base import Weighting


class LearnedScale(Weighting):
    """A learned per-task parameter ``s`` (or ``c``), clamped in the forward.

    The clamp is straight-through: the value is clamped, the gradient always flows, so
    an ``s`` that momentum carried past a bound is pulled back rather than frozen there.
    Subclasses give ``default_clamp``, ``default_init`` and three formulas of the clamped
    value ``p``: :meth:`total`, :meth:`sigma_of` and :meth:`weight_of`.

    ``init="auto"`` starts each ``s`` at the optimum of its term for the first training
    batch's losses (see :meth:`optimum`), so the weights start at the loss scales
    instead of having to travel there at the optimizer's pace.
    """

    default_clamp: ClassVar[tuple[float, float]] = (-10.0, 10.0)
    default_init: ClassVar[float] = 0.0
    # every subclass: a term such as e^(−s)·L + s has no minimum in s for L < 0 (σ drifts to the clamp)
    positive_losses = "learns σ by minimizing e^(−s)·L + s (or the like), which has no minimum for L < 0"

    def __init__(self, clamp: tuple[float, float] | None = None, init: float | str | None = None) -> None:
        super().__init__()
        bounds = list(clamp) if isinstance(clamp, (tuple, list, np.ndarray)) else clamp
        lo, hi = [as_real(b) for b in bounds] if isinstance(bounds, list) and len(bounds) == 2 else (None, None)
        if clamp is None:
            lo, hi = self.default_clamp
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"clamp must be two finite numbers (min, max) with min < max, got {clamp!r}. "
                f"Fix: e.g. clamp={self.default_clamp}."
            )
        self.check_clamp(lo, hi)
        self.clamp = (lo, hi)
        start = min(max(self.default_init, lo), hi)  # the default start, within a narrower clamp
        number = None if init is None or isinstance(init, str) else as_real(init)
        if init is not None and init != "auto" and not (number is not None and lo <= number <= hi):
            raise ValueError(
                f"init must be 'auto' or a number within clamp {self.clamp}, got {init!r}. Fix: e.g. "
                f"init={start} or init='auto' (start at the first batch's optimum)."
            )
        self.init = init if number is None else number
        self.s: paddle.Tensor | None = None
        self._read: tuple[Any, np.ndarray] = (None, np.zeros(0))  # the last p read, with its values

    def check_clamp(self, lo: float, hi: float) -> None:
        """Method-specific limits of the clamp; raise ValueError."""

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        super().bind(tasks, task_types)
        lo, hi = self.clamp
        start = min(max(self.default_init, lo), hi) if self.init in (None, "auto") else float(self.init)  # type: ignore[arg-type]
        self.s = self.task_parameter(start)
        # auto init: still to do (1) or done (0); a buffer, so a resumed run does not redo it
        self.register_buffer("auto_pending", paddle.to_tensor(1 if self.init == "auto" else 0, dtype="int32"))
        self._auto = self.init == "auto"

    # ------------------------------------------------------------ formulas of p = clamp(s)

    def total(self, p: paddle.Tensor, losses: paddle.Tensor) -> paddle.Tensor:
        raise NotImplementedError

    def sigma_of(self, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def weight_of(self, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def optimum(self, losses: paddle.Tensor) -> paddle.Tensor:
        """The s minimising each task's term for these losses (for ``init='auto'``)."""
        raise NotImplementedError(f"{type(self).__name__} has no init='auto'. Fix: give a number.")

    # ------------------------------------------------------------ hooks

    def observe(self, losses: paddle.Tensor, batch_size: int = 1) -> None:
        if self._auto and self.s is not None:
            self._auto = False
            if int(self.auto_pending) == 1:  # once per run, not per fit: a resume keeps its s
                start = self.optimum(losses)
                nranks = world()[1]
                if nranks > 1:  # every rank starts from the same s: the mean of their first batches'
                    paddle.distributed.all_reduce(start)
                    start = start / nranks
                start = paddle.where(paddle.isfinite(start), paddle.clip(start, *self.clamp), start)
                if not bool(paddle.isfinite(start).all()):  # the same answer on every rank
                    self._auto = True  # a non-finite first batch: try the next one
                    return
                self.s.set_value(start.astype("float32"))
                self.auto_pending.set_value(paddle.zeros_like(self.auto_pending))

    def clamped(self) -> paddle.Tensor:
        """``s + (clip(s) - s).detach()``: clip(s)'s value, s's gradient."""
        assert self.s is not None
        # The correction is computed off the autograd graph. With bounds ±c it is
        # -softshrink(s, c), the same numbers as clip(s) - s (an s of -0.0 gives p = -0.0
        # instead of +0.0), in one op instead of two.
        s = self.s.detach()
        lo, hi = self.clamp
        if lo == -hi:
            return self.s - paddle.nn.functional.softshrink(s, hi)
        return self.s + (paddle.clip(s, lo, hi) - s)

    def combine(self, losses: paddle.Tensor) -> paddle.Tensor:
        p = self.clamped()
        if paddle.is_grad_enabled():
            self._seen["p"] = p.detach()  # the exact s this forward used, read by sigma/weight(used)
        return self.total(p, losses)

    def _p(self, used: bool) -> np.ndarray:
        if used and "p" in self._seen:
            p = self._seen["p"]
            if self._read[0] is not p:  # sigma and weight of one step: one read
                self._read = (p, p.numpy().astype(np.float64))
            return self._read[1].copy()
        assert self.s is not None
        return np.clip(self.s.numpy().astype(np.float64), *self.clamp)

    def sigma(self, used: bool) -> np.ndarray | None:
        return self.sigma_of(self._p(used))

    def weight(self, used: bool) -> np.ndarray:
        return self.weight_of(self._p(used))

    def checkpoint_state(self) -> dict[str, Any]:
        return {"clamp": list(self.clamp)}

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        saved = tuple(float(v) for v in state.get("clamp", self.clamp))
        if saved != self.clamp:
            warnings.warn(
                f"The checkpoint's s was learned with clamp={saved}, this loss clamps to {self.clamp}, "
                f"so the run does not resume exactly. Fix: build the loss with clamp={saved}.",
                stacklevel=2,
            )

    def extra_repr(self) -> str:
        return f"clamp={self.clamp}, init={self.init}"
