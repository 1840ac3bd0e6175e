"""What a method (a ``Weighting``, the user's own included) hands back, checked where a mistake would
otherwise surface as a raw Paddle error after hapi updated the network, or as a silent truncation."""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle


def check_bound(method: Any, tasks: list[str]) -> None:
    """After ``bind``: the method knows every task (an override that forgot ``super().bind`` does not)."""
    if list(getattr(method, "tasks", [])) != list(tasks):
        raise ValueError(
            f"{type(method).__name__}.bind did not record the tasks {tasks} (its n is {len(method.tasks)}), so "
            "its per-task parameters and buffers would be empty. Fix: call super().bind(tasks, task_types) "
            "first in bind."
        )


def check_total(method: Any, total: Any) -> None:
    """At every forward, before hapi reads it: ``combine`` returned a 0-d floating tensor (shapes are
    known on the host: no read; float16 under PaddleSeg's AMP O2 is fine)."""
    if not isinstance(total, paddle.Tensor) or total.ndim != 0 or not paddle.is_floating_point(total):
        dtype = str(getattr(total, "dtype", "")).replace("paddle.", "")
        got = f"shape {list(total.shape)}, {dtype}" if isinstance(total, paddle.Tensor) else type(total).__name__
        raise ValueError(
            f"{type(method).__name__}.combine returned {got}, not a 0-d floating tensor (hapi reads the "
            "total as one float after its update). Fix: return the weighted sum as a scalar, e.g. "
            "(w * losses).sum() (not sum(keepdim=True))."
        )


def check_per_task(method: Any, what: str, values: Any, n: int) -> np.ndarray:
    """One value per task from ``method.<what>`` (``weight``, ``sigma``, ``alphas``), as float64."""
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    if out.size != n:
        raise ValueError(
            f"{type(method).__name__}.{what} returned {out.size} value(s) for {n} tasks. Fix: return one "
            "value per task, in task order."
        )
    return out
