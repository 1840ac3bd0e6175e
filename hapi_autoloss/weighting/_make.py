"""Building a weighting method from what ``AutoWeight(method=..., **options)`` was given."""

from __future__ import annotations

import inspect
from typing import Any

from .base import METHODS, Weighting


def make_method(method: str | Weighting, options: dict[str, Any]) -> Weighting:
    """The method instance for ``method`` (a registered name, or an instance)."""
    if isinstance(method, Weighting):
        if options:
            raise ValueError(
                f"Options {sorted(options)} were given with a method instance. Fix: pass them to the "
                f"instance, e.g. method={type(method).__name__}(...)."
            )
        return method
    if isinstance(method, type) and issubclass(method, Weighting):
        raise TypeError(
            f"method={method.__name__} is a class. Fix: pass an instance, method={method.__name__}(...)."
        )
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"Unknown method {method!r}. Fix: use one of {', '.join(sorted(METHODS))}, "
                         "or an instance of a hapi_autoloss.weighting.Weighting subclass.")
    cls = METHODS[method]
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    accepted = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    unknown = [] if takes_any else [k for k in options if k not in accepted]
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise ValueError(
            f"{', '.join(unknown)} does not apply to method={method!r}, which takes {takes}. Fix: drop "
            f"{unknown[0]}=..., or use a method that takes it."
        )
    return cls(**options)
