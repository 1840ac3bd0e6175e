"""The lr of each update, kept by the optimizer itself (the exporters' ``lr`` point).

Checked against paddlepaddle 3.3.1 (``paddle/optimizer/optimizer.py``: ``minimize``, ``get_lr``,
``_learning_rate.last_epoch``): hapi's ``train_batch`` and its AMP scaler update through
``minimize``. The wrapper is put on once per optimizer and stays: a call and a read per update.
"""

from __future__ import annotations

import math
from typing import Any

from .._args import as_real


def _float(value: Any) -> float | None:
    number = as_real(value)
    return number if number is not None and math.isfinite(number) else None


def keep_update_lr(opt: Any) -> bool:
    """Wrap ``opt.minimize`` (once) to keep the count of its calls and the lr of the last one;
    False for an object without ``get_lr`` and ``minimize``."""
    if getattr(opt, "_autoloss_lr_update", None) is not None:
        return True
    if not hasattr(opt, "get_lr") or not callable(getattr(opt, "minimize", None)):
        return False
    inner = opt.minimize

    def minimize(*args: Any, **kwargs: Any) -> Any:
        opt._autoloss_lr_update = (opt._autoloss_lr_update[0] + 1, _float(opt.get_lr()))
        return inner(*args, **kwargs)

    opt._autoloss_lr_update = (0, None)
    opt.minimize = minimize
    return True


def update_lr(opt: Any) -> tuple[int, float | None]:
    """``(minimize calls so far, the lr of the last one)``; ``(0, None)`` when not kept."""
    kept: tuple[int, float | None] = getattr(opt, "_autoloss_lr_update", None) or (0, None)
    return kept


def schedule_count(opt: Any) -> Any:
    """The lr schedule's step count (``last_epoch``), or None for a constant lr."""
    return getattr(getattr(opt, "_learning_rate", None), "last_epoch", None)


def current_lr(opt: Any) -> float | None:
    """The optimizer's lr now, or None when it has none or it is not finite."""
    return _float(opt.get_lr()) if opt is not None and hasattr(opt, "get_lr") else None
