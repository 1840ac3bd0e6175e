"""Which non-finite policy the check before an update calls: the ``AutoWeightCallback``'s of the
fit that is running, else the one ``attach(model, on_nonfinite=...)`` was given (a hand-driven
``train_batch``), else none. A callback's policy so never outlives its fit, however the fit ended.

Checked against paddlepaddle 3.3.1: ``Model.fit`` builds a new ``CallbackList`` for every call and
hands it to ``_run_one_epoch``, which ``progress.track_progress`` wraps and notes while it runs.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import paddle

from .model import optimizer_of

Policy = Callable[[paddle.Tensor, bool], None]


def set_fit_policy(model: Any, handler: Policy) -> None:
    """``handler``, a bound method of a callback, is the policy while a fit that lists it runs."""
    opt = optimizer_of(model)
    if opt is not None:
        opt._autoloss_fit_policy = (weakref.ref(model), weakref.WeakMethod(handler))  # type: ignore[arg-type]


def policy_of(opt: Any) -> Policy | None:
    """The policy for an update of ``opt`` now (see the module's docstring)."""
    fit = getattr(opt, "_autoloss_fit_policy", None)
    if fit is not None:
        model, handler = fit[0](), fit[1]()
        running = getattr(model, "_autoloss_fit_callbacks", None) if model is not None else None
        if handler is not None and running is not None and any(c is handler.__self__ for c in running.callbacks):
            return handler
    return getattr(opt, "_autoloss_on_nonfinite", None)
