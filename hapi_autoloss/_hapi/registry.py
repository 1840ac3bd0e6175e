"""The stateful callbacks of a model, saved with each of its checkpoints (``<path>.autoloss``,
``callbacks``) and given back their state when a checkpoint is loaded.

On each model (see ``model.slot``): ``_autoloss_stateful``, the objects saved with each
checkpoint, by key; ``_autoloss_pending``, states read by ``load_state`` that wait for the
first object of their kind to register (the next fit's, or a later one: a ``TopKScheduler``
added two fits later goes on from the loaded position).
"""

from __future__ import annotations

import copy
from typing import Any

from .model import slot
from .state import Stateful, wrap_save


def register_state(model: Any, key: str, obj: Stateful) -> None:
    """Save ``obj.state_dict()`` with every ``model.save``; restore a loaded state now.

    A second object under the same key (two exporters of one class) gets
    ``key#2``, and so on, in the order the callbacks start.
    """
    wrap_save(model)
    registry = slot(model, "_autoloss_stateful", dict)
    # Callbacks of an earlier fit are done: hapi gives each fit a new params dict.
    current = getattr(obj, "params", None)
    for stale in [k for k, o in registry.items() if getattr(o, "params", None) is not current]:
        del registry[stale]
    base, n = key, 1
    while key in registry and registry[key] is not obj:
        n += 1
        key = f"{base}#{n}"
    registry[key] = obj
    pending = slot(model, "_autoloss_pending", dict)
    if key in pending:
        obj.set_state_dict(pending.pop(key))


class _Saved:
    """A callback's state as it was when it left a model for another: that model's later
    ``model.save`` writes its own run's position, not the other model's."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state

    def set_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state


def freeze_state(model: Any, obj: Stateful) -> None:
    """Keep ``obj``'s state now in ``model``'s checkpoints, before ``obj`` starts on another model."""
    registry = getattr(model, "_autoloss_stateful", None) or {}
    for key in [k for k, o in registry.items() if o is obj]:
        registry[key] = _Saved(copy.deepcopy(obj.state_dict()))
