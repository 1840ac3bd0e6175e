"""Which non-finite policy the check before an update of an optimizer calls: that of the
``AutoWeightCallback`` of the innermost running ``Model.fit`` whose model owns that optimizer (a
nested fit of the same model without the callback keeps the outer one's; an update a callback
makes between steps is its fit's; another model's update is not this fit's business), else the
one ``attach(model, on_nonfinite=...)`` gave that optimizer (a hand-driven ``train_batch``), else
none. So a callback's policy never outlives its fit, however the fit ended, and never replaces
another model's or the user's own. ``in_running_fit`` uses the same walk to tell a callback
called by a running fit from one called by a standalone ``evaluate`` (the exporters' eval points).

Checked against paddlepaddle 3.3.1: ``Model.fit`` keeps the fit's ``CallbackList`` in its local
``cbks``, built anew for every call, before any step runs.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from types import CodeType, FrameType
from typing import Any, Callable

import paddle
from paddle.hapi.model import Model

from .model import callback_list_of, optimizer_of

Policy = Callable[[paddle.Tensor, bool], None]
_FIT: CodeType = inspect.unwrap(Model.fit).__code__  # hapi's own, if a tool wrapped it before us
_HAPI = Model.__module__  # "paddle.hapi.model": its fit, whatever a tool put on Model.fit


def running_fits() -> Iterator[Any]:
    """The ``CallbackList`` of each ``Model.fit`` on this thread's stack, innermost first."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code is _FIT or (code.co_name == "fit" and frame.f_globals.get("__name__") == _HAPI):
            callbacks = frame.f_locals.get("cbks")
            if callbacks is not None:
                yield callbacks
        frame = frame.f_back


def in_running_fit(callback: Any) -> bool:
    """True when ``callback`` is called by the ``CallbackList`` of a ``Model.fit`` running now
    (its evaluation included), False in a standalone ``evaluate``/``predict`` or after a fit
    that ended, however it ended (an exception skips hapi's ``on_train_end``)."""
    calling = callback_list_of(callback)
    return calling is not None and any(running is calling for running in running_fits())


def policy_of(opt: Any) -> Policy | None:
    """The policy for an update of ``opt`` now (see the module's docstring)."""
    for running in running_fits():
        for callback in getattr(running, "callbacks", None) or ():
            policy = getattr(callback, "autoloss_nonfinite_policy", None)
            if callable(policy) and optimizer_of(getattr(callback, "model", None)) is opt:
                return policy  # type: ignore[no-any-return]
    return getattr(opt, "_autoloss_on_nonfinite", None)
