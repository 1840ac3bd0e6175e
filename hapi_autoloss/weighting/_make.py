"""Building a weighting method from what ``AutoWeight(method=..., **options)`` was given.

A name or option LibMTL spells otherwise (``method="UW"``, ``calpha=0.4``) is refused with ours
in the fix, not taken as an alias: one name per option, as the rest of the project, and the
error is where the differences are told (LibMTL's UW is not kendall on classification tasks).
Each method declares its LibMTL names in its own file (``libmtl_name``, ``libmtl_options``...).
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import METHODS, Weighting

AUTOWEIGHT_ARGS = "losses, method, task_types, routing, shared, rep_grad"


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
        raise ValueError(_unknown_method(method))
    cls = METHODS[method]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    unknown = [] if takes_any else [k for k in options if k not in option_names(cls)]
    if unknown:
        raise ValueError(_option_error(method, cls, unknown[0], options[unknown[0]]))
    return cls(**options)


def option_names(cls: type[Weighting]) -> list[str]:
    """The keyword options a method's ``__init__`` takes, in order."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def ours(name: object) -> str | None:
    """Our method's name for ``name`` given in another case or as LibMTL's (``"UW"``): None if none."""
    if not isinstance(name, str):
        return None
    key = name.lower()
    for own in METHODS:  # ours first: a user's method "ew" before LibMTL's EW (equal)
        if key == own.lower():
            return own
    for own, cls in METHODS.items():
        if cls.libmtl_name and key == cls.libmtl_name.lower():
            return own
    return None


def _unknown_method(method: object) -> str:
    own = ours(method)
    if own is None:
        return (f"Unknown method {method!r}. Fix: use one of {', '.join(sorted(METHODS))}, "
                "or an instance of a hapi_autoloss.weighting.Weighting subclass.")
    cls = METHODS[own]
    libmtl = vars(cls).get("libmtl_name") or ""  # its own: a user's subclass inherits its parent's
    if isinstance(method, str) and method.lower() == libmtl.lower():
        note = f" ({cls.libmtl_note})" if cls.libmtl_note else ""
        return f"Unknown method {method!r}: it is LibMTL's name for {own}{note}. Fix: method={own!r}."
    return f"Unknown method {method!r}: names are case-sensitive. Fix: method={own!r}."


def _option_error(method: str, cls: type[Weighting], key: str, value: Any) -> str:
    accepted = option_names(cls)
    takes = ", ".join(accepted) if accepted else "no options"
    if cls.libmtl_options.get(key) in accepted:  # a subclass inherits the names, maybe not the option
        option = cls.libmtl_options[key]
        return f"{key} is LibMTL's name for {method}'s {option}. Fix: {option}={value!r}."
    if key in cls.libmtl_lacks:
        return (f"{key} is an option of LibMTL's {cls.libmtl_name} that {method} does not have: "
                f"{cls.libmtl_lacks[key]}. Fix: drop {key}={value!r}.")
    takers = sorted(name for name, other in METHODS.items() if key in option_names(other))
    if takers:
        return (f"{key} does not apply to method={method!r}, which takes {takes}. Fix: drop {key}=..., or use "
                f"a method that takes it ({', '.join(takers)}).")
    libmtl = [(name, other.libmtl_options[key]) for name, other in METHODS.items() if key in other.libmtl_options]
    if libmtl:
        other_name, option = libmtl[0]
        return (f"{key} is LibMTL's name for {other_name}'s {option}, and method={method!r} takes {takes}. Fix: "
                f"drop {key}=..., or method={other_name!r} with {option}={value!r}.")
    own = ours(value)
    fix = f"method={own!r}" if own is not None else (
        f"drop {key}=...; AutoWeight takes {AUTOWEIGHT_ARGS} and the method's options ({takes})")
    return (f"{key} is not an argument of AutoWeight, nor an option of any method "
            f"(method={method!r} takes {takes}). Fix: {fix}.")
