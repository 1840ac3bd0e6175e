"""Pure functions mapping training progress to a TopKLoss ratio.

``progress`` runs from 0 (the first annealed epoch or step) to 1 (the first one at
``end``); every schedule gives ``start`` at 0 and ``end`` at 1:

========  ====================================================  ======================
schedule  ratio at progress p                                   shape
========  ====================================================  ======================
linear    start + (end − start)·p                               straight line
cosine    end + (start − end)·(1 + cos(π·p))/2                  slow, fast, slow
exp       start·(end/start)^p                                   same factor per unit
step      start + (end − start)·floor(p·drops)/drops            ``drops`` equal drops
========  ====================================================  ======================

:func:`progress` turns a 0-based position (epoch or global step) into p. With
``a = max(warmup − 1, 0)``::

    p = 0                                          for position < warmup
    p = clip((position − a) / (total − 1 − a), 0, 1)   otherwise

so the first ``max(warmup, 1)`` units train at ``start`` (``warmup`` 0 and 1 are the
same: the first unit always does), the next one already moves, unit ``total − 1``
trains at ``end``, and every later unit holds ``end``. When ``total − 1 <= a``
there is nothing to anneal over: every unit from ``warmup`` on is at ``end`` (a
1-epoch run trains at ``end``).

Example::

    from hapi_autoloss import schedules
    [schedules.ratio_at(e, total=5) for e in range(5)]
    # [1.0, 0.775, 0.55, 0.325, 0.1]
"""

from __future__ import annotations

import math

SCHEDULES = ("linear", "cosine", "exp", "step")


def linear(p: float, start: float, end: float) -> float:
    """Straight line from ``start`` (p=0) to ``end`` (p=1)."""
    return start + (end - start) * p


def cosine(p: float, start: float, end: float) -> float:
    """Half a cosine from ``start`` to ``end``: flat at both ends."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))


def exp(p: float, start: float, end: float) -> float:
    """Geometric: the ratio shrinks by the same factor every unit of progress."""
    return start * (end / start) ** p


def step(p: float, start: float, end: float, drops: int = 3) -> float:
    """``drops`` equal drops from ``start`` to ``end``, the last one at p=1."""
    return start + (end - start) * math.floor(p * drops + 1e-9) / drops


def progress(position: int, total: int, warmup: int = 0) -> float:
    """Progress in [0, 1] of the 0-based ``position`` among ``total`` units (epochs or
    steps), the first ``warmup`` of them held at the start."""
    if position < warmup:
        return 0.0
    anchor = max(warmup - 1, 0)  # the last unit at start
    span = total - 1 - anchor
    if span <= 0:
        return 1.0
    return min(1.0, max(0.0, (position - anchor) / span))


def value(p: float, schedule: str = "linear", start: float = 1.0, end: float = 0.1, drops: int = 3) -> float:
    """The value at progress ``p`` for the named schedule; exactly ``start`` at p <= 0
    and exactly ``end`` at p >= 1, always between them (``end`` may be above ``start``:
    the dropped fraction of a ranked range usually grows)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}. Fix: use one of {', '.join(SCHEDULES)}.")
    if start == end or p <= 0.0:  # a constant is constant whatever the curve ('exp' of 0 → 0: no 0/0)
        return start
    if p >= 1.0:
        return end
    if schedule == "linear":
        out = linear(p, start, end)
    elif schedule == "cosine":
        out = cosine(p, start, end)
    elif schedule == "exp":
        out = exp(p, start, end)
    else:
        out = step(p, start, end, drops)
    # Float noise must not push the value outside [end, start] (e.g. 1.0000000000000002).
    return min(max(start, end), max(min(start, end), out))


def ratio_at(
    position: int,
    total: int,
    schedule: str = "linear",
    start: float = 1.0,
    end: float = 0.1,
    warmup: int = 0,
    drops: int = 3,
) -> float:
    """The ratio :class:`~hapi_autoloss.callbacks.TopKScheduler` sets at a 0-based
    epoch or global step ``position`` of a run of ``total`` units."""
    return value(progress(position, total, warmup), schedule, start, end, drops)
