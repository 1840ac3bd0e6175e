"""Which run a stateful callback is in: the fits of one ``paddle.Model`` make one run, and
another model starts a new one.

``TopKScheduler`` and ``TopKOnPlateau`` go on across fits: one instance passed to two
``fit`` calls of the same model in a row continues its schedule or its plateau watch (a fit
of another model in between starts a new run, and the first model's checkpoints keep its
position as it was then) (Keras's
``ReduceLROnPlateau`` and ``EarlyStopping`` reset in every ``fit`` instead). An instance
kept across a notebook cell that builds a NEW model and fits it again must not carry the
old model's position, best value or wait into the fresh network: a new model starts a new
run. A state restored by ``hapi_autoloss.load_state`` (a checkpoint, ``BackupAndRestore``),
or given by hand with ``set_state_dict`` before the fit, wins over that reset.

The model is held by a weak reference: a collected model's ``id`` can be reused.

Example::

    def on_train_begin(self, logs=None):
        fresh = begin_run(self, STATE_KEY, self._new_run)  # instead of _hapi.register_state
    def set_state_dict(self, state):
        loaded(self)
        ...
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from .. import _hapi

_MODEL = "_run_model"  # on the callback: weakref to the model it trained last, or None


def begin_run(callback: Any, key: str, reset: Callable[[], None]) -> bool:
    """At ``on_train_begin``: call ``reset()`` when ``callback.model`` is not the model the
    callback trained last, then register its state with the model (a state loaded by
    ``load_state`` is applied there, after the reset, so it wins), and remember the model.

    Returns True when this fit starts a new run from scratch: another model than last
    time, and no state restored in between.
    """
    model = callback.model
    ref = getattr(callback, _MODEL, None)
    new = ref is not None and ref() is not model
    if new:
        old = ref() if ref is not None else None
        if old is not None:
            _hapi.freeze_state(old, callback)  # the old model's checkpoints keep its own position
        reset()
    setattr(callback, _MODEL, weakref.ref(model))
    callback._run_registering = True
    try:
        _hapi.register_state(model, key, callback)  # may call set_state_dict, i.e. loaded()
    finally:
        callback._run_registering = False
    restored = getattr(callback, _MODEL) is None
    setattr(callback, _MODEL, weakref.ref(model))
    return new and not restored


def loaded(callback: Any) -> None:
    """At the start of ``set_state_dict``: the next fit continues the state given, whatever
    model it trains; given by hand, the model trained last keeps its own position first."""
    ref = getattr(callback, _MODEL, None)
    old = ref() if ref is not None else None
    if old is not None and not getattr(callback, "_run_registering", False):
        _hapi.freeze_state(old, callback)
    setattr(callback, _MODEL, None)
