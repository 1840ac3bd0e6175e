"""The pure progress → ratio functions behind TopKScheduler."""

from __future__ import annotations

import math

import pytest

from hapi_autoloss import schedules

FORMULAS = {
    "linear": lambda p, s, e: s + (e - s) * p,
    "cosine": lambda p, s, e: e + (s - e) * (1 + math.cos(math.pi * p)) / 2,
    "exp": lambda p, s, e: s * (e / s) ** p,
    "step": lambda p, s, e: s + (e - s) * math.floor(p * 3 + 1e-9) / 3,
}


@pytest.mark.parametrize("name", list(FORMULAS))
@pytest.mark.parametrize("start, end", [(1.0, 0.1), (0.8, 0.3), (0.5, 0.5)])
def test_each_schedule_matches_its_formula_and_hits_both_ends(name, start, end):
    ps = [i / 20 for i in range(21)]
    values = [schedules.value(p, name, start, end) for p in ps]
    for p, v in zip(ps, values):
        assert v == pytest.approx(FORMULAS[name](p, start, end), abs=1e-12)
    assert values[0] == start and values[-1] == end
    assert all(a >= b for a, b in zip(values, values[1:]))  # never goes back up
    assert all(end <= v <= start for v in values)


def test_known_values():
    assert schedules.linear(0.5, 1.0, 0.1) == pytest.approx(0.55)
    assert schedules.cosine(0.5, 1.0, 0.1) == pytest.approx(0.55)
    assert schedules.cosine(0.25, 1.0, 0.0) == pytest.approx((1 + math.sqrt(0.5)) / 2)
    assert schedules.exp(0.5, 1.0, 0.01) == pytest.approx(0.1)
    assert [schedules.step(p, 1.0, 0.1, drops=3) for p in (0.0, 0.33, 1 / 3, 0.5, 2 / 3, 0.99, 1.0)] == (
        pytest.approx([1.0, 1.0, 0.7, 0.7, 0.4, 0.4, 0.1]))
    assert [schedules.step(p, 1.0, 0.2, drops=1) for p in (0.0, 0.99, 1.0)] == pytest.approx([1.0, 1.0, 0.2])


def test_progress_first_unit_at_start_last_at_end_then_hold():
    assert [schedules.progress(t, 5) for t in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # warmup units stay at 0, the next one already moves, unit total-1 reaches 1
    assert [schedules.progress(t, 6, warmup=2) for t in range(7)] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert [schedules.progress(t, 5, warmup=1) for t in range(5)] == [schedules.progress(t, 5) for t in range(5)]
    # a single unit trains at end; warmup that fills the run leaves it at start
    assert schedules.progress(0, 1) == 1.0
    assert schedules.progress(0, 2, warmup=1) == 0.0 and schedules.progress(1, 2, warmup=1) == 1.0


def test_ratio_at_docstring_example():
    got = [schedules.ratio_at(e, total=5) for e in range(5)]
    assert got == pytest.approx([1.0, 0.775, 0.55, 0.325, 0.1])
    # TF DeepLab: linear to top_k over hard_example_mining_step steps, then constant
    s, top_k = 10, 0.2
    for step in range(15):
        want = 1.0 - (1.0 - top_k) * min(1.0, step / s)
        assert schedules.ratio_at(step, total=s + 1, end=top_k) == pytest.approx(want)


def test_unknown_schedule():
    with pytest.raises(ValueError, match=r"Unknown schedule 'poly'.*Fix: use one of linear"):
        schedules.value(0.5, "poly")


@pytest.mark.parametrize("schedule", ["linear", "cosine", "exp", "step"])
@pytest.mark.parametrize("level", [0.0, 0.3])
def test_a_constant_schedule_is_constant_even_at_zero(schedule, level):
    """start == end: every curve gives it (exp's start·(end/start)^p would divide 0 by 0)."""
    assert [schedules.value(p, schedule, level, level, 3) for p in (0.0, 0.25, 0.5, 1.0)] == [level] * 4
