"""Checks of TopKLoss's arguments, shared with the callbacks that set them."""

from __future__ import annotations

import numbers
from typing import Any


def validate_ratio(ratio: Any, name: str = "ratio") -> float:
    """``ratio`` as a float, or a clear error when it is not in (0, 1]."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise TypeError(
            f"{name} must be a number in (0, 1], got {type(ratio).__name__} {ratio!r}. "
            f"Fix: e.g. {name}=0.1 to keep the hardest 10%."
        )
    value = float(ratio)
    if not (0.0 < value <= 1.0):  # also False for NaN
        raise ValueError(
            f"{name} must be in (0, 1] (the fraction of losses kept), got {ratio!r}. "
            f"Fix: e.g. {name}=0.1 to keep the hardest 10%, or {name}=1.0 for the plain mean."
        )
    return value


def validate_drop(drop: Any, name: str = "drop") -> float:
    """``drop`` as a float, or a clear error when it is not in [0, 1)."""
    if isinstance(drop, bool) or not isinstance(drop, numbers.Real) or not (0.0 <= float(drop) < 1.0):
        raise ValueError(
            f"{name} must be a number in [0, 1) (the fraction of the hardest losses dropped), got "
            f"{drop!r}. Fix: e.g. {name}=0.1 to drop the hardest 10%, or {name}=0 to drop none."
        )
    return float(drop)


def validate_band(band: Any) -> tuple[float, float]:
    """``band`` as ``(a, b)``, two numbers >= 0 (inf allowed), or a clear error."""
    ok = isinstance(band, (tuple, list)) and len(band) == 2
    ok = ok and all(not isinstance(x, bool) and isinstance(x, numbers.Real) and float(x) >= 0.0 for x in band)
    if not ok:  # NaN fails the >= 0 test too
        raise ValueError(
            f"band must be a pair (a, b) of numbers >= 0, got {band!r}: the kept losses are those in "
            "[mean − b·std, mean + a·std]. Fix: e.g. band=(1.0, 2.0), the official AoRR code's rule."
        )
    return float(band[0]), float(band[1])
