"""Checks of plain number arguments, shared by the methods, callbacks and trainers.

Each returns the value converted, or raises ``ValueError("<name> must be ... Fix: e.g. <example>.")``.

Example::

    self.w_lr = positive(w_lr, "w_lr", "w_lr=0.025 (the paper's)")
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from typing import TypeGuard  # Python 3.10+; read by the type checker only


def is_real(value: object) -> TypeGuard[float]:
    """A real number, NumPy scalars included (np.float32(1.0), np.int64(3)); never a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_, np.timedelta64))


def as_real(value: object) -> float | None:
    """``value`` as a float if it is one number (a Python or NumPy number, or a one-element NumPy
    array or paddle Tensor of numbers), else None; never a bool, and None past float's range."""
    size, dtype = getattr(value, "size", None), str(getattr(value, "dtype", ""))
    if not is_real(value) and size == 1 and hasattr(value, "reshape") and not any(
            kind in dtype for kind in ("bool", "complex", "timedelta", "datetime")):
        value = value.reshape([-1])[0]
        value = value.item() if hasattr(value, "item") else value
    if not is_real(value):
        return None
    try:
        return float(value)
    except (OverflowError, TypeError, ValueError):  # 10**400; a Real that float() does not take
        return None


def positive(value: object, name: str, example: str) -> float:
    """``value`` as a float, or a clear error when it is not a finite number > 0."""
    number = as_real(value) if is_real(value) else None
    if number is None or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}. Fix: e.g. {example}.")
    return number


def check_count(value: object, name: str, least: int, example: str) -> int:
    """``value`` as an int, or a clear error when it is not an int >= ``least``."""
    if not is_real(value) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}. Fix: e.g. {example}.")
    return int(value)


def non_negative(value: object, name: str, example: str, meaning: str = "") -> float:
    """``value`` as a float, or a clear error when it is not a finite number >= 0
    (``meaning``, e.g. " (0: no clipping)", is said after the bound)."""
    number = as_real(value) if is_real(value) else None
    if number is None or not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0{meaning}, got {value!r}. Fix: e.g. {example}.")
    return number
