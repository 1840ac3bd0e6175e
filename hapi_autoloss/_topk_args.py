"""Checks of TopKLoss's arguments, shared with the callbacks that set them."""

from __future__ import annotations

import math
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


def validate_per(per: Any, choices: tuple[str, ...], num_classes: Any) -> None:
    """A known ``per``, and ``num_classes`` None or an int >= 1."""
    if per not in choices:
        raise ValueError(
            f"Unknown per {per!r}. Fix: per='sample' ranks each sample's mean loss, "
            "per='pixel' ranks every element, per='class' each class's mean loss."
        )
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1
    ):
        raise ValueError(
            f"num_classes must be an int >= 1 or None, got {num_classes!r}. Fix: e.g. num_classes=19, "
            "or None to read it from the logits' axis 1."
        )


def check_num_classes_applies(per: str, num_classes: int | None) -> None:
    """``num_classes`` only with ``per="class"`` (checked last, after the range arguments)."""
    if num_classes is not None and per != "class":
        raise ValueError(
            f"num_classes={num_classes} only applies to per='class', but per={per!r}. "
            "Fix: per='class', or leave num_classes out."
        )


def validate_counts(min_kept: Any, ignore_index: Any, threshold: Any) -> tuple[int, int | None, float | None]:
    """``(min_kept, ignore_index, threshold)`` as int, int or None, finite float or None."""
    if isinstance(min_kept, bool) or not isinstance(min_kept, numbers.Integral) or min_kept < 1:
        raise ValueError(
            f"min_kept must be an int >= 1 (the least number of losses kept), got "
            f"{min_kept!r}. Fix: e.g. min_kept=1."
        )
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)):
        raise TypeError(
            f"ignore_index must be an int label value or None, got {ignore_index!r}. Fix: e.g. ignore_index=255."
        )
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold)
    ):
        raise ValueError(
            f"threshold must be a finite number (a loss value) or None, got {threshold!r}. "
            "Fix: e.g. threshold=0.357 (cross-entropy of probability 0.7)."
        )
    return (
        int(min_kept),
        None if ignore_index is None else int(ignore_index),
        None if threshold is None else float(threshold),
    )


PADDLE_IGNORE_DEFAULT = -100  # paddle.nn.CrossEntropyLoss's: no label takes it in practice


def wrapped_ignore_index(loss: Any) -> int | None:
    """The label the wrapped loss ignores itself (``paddle.nn.CrossEntropyLoss``'s ``ignore_index``,
    ``NLLLoss``'s ``_ignore_index`` in paddle 3.3.1, PaddleSeg's losses'), or None: none, or Paddle's
    default -100."""
    theirs = getattr(loss, "ignore_index", getattr(loss, "_ignore_index", None))
    if isinstance(theirs, bool) or not isinstance(theirs, numbers.Integral) or theirs == PADDLE_IGNORE_DEFAULT:
        return None
    return int(theirs)


def check_threshold_drop(threshold: float | None, drop: float, where: str = "") -> None:
    """Refuse a dropped fraction beside a threshold: PaddleSeg's OHEM keeps every loss above the
    threshold, AoRR drops the hardest. ``where``: who sets the drop, for the message."""
    if threshold is not None and drop > 0:
        raise ValueError(
            f"threshold keeps every loss above it, drop removes the hardest: the two contradict{where}. "
            "Fix: use threshold with drop=0, or drop without threshold."
        )
