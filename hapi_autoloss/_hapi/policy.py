"""Which non-finite policy the check before an update calls: that of the ``AutoWeightCallback``
listed in the innermost ``Model.fit`` running on this thread (a nested fit has its own; an update a
callback makes between steps is still its fit's), else the one ``attach(model, on_nonfinite=...)``
was given (a hand-driven ``train_batch``), else none. So a callback's policy never outlives its
fit, however the fit ended, and never replaces the user's own.

Checked against paddlepaddle 3.3.1: ``Model.fit`` keeps the fit's ``CallbackList`` in its local
``cbks``, built anew for every call, before any step runs.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any, Callable

import paddle
from paddle.hapi.model import Model

Policy = Callable[[paddle.Tensor, bool], None]
_FIT = Model.fit.__code__


def running_fit_callbacks(max_depth: int = 64) -> Any:
    """The ``CallbackList`` of the innermost ``Model.fit`` on this thread's stack, or None."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        if frame.f_code is _FIT:
            return frame.f_locals.get("cbks")
        frame = frame.f_back
    return None


def policy_of(opt: Any) -> Policy | None:
    """The policy for an update of ``opt`` now (see the module's docstring)."""
    running = running_fit_callbacks()
    for callback in getattr(running, "callbacks", None) or ():
        policy = getattr(callback, "autoloss_nonfinite_policy", None)
        if callable(policy):
            return policy  # type: ignore[no-any-return]
    return getattr(opt, "_autoloss_on_nonfinite", None)
