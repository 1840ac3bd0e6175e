"""A method that needs every task loss >= 0 (``Weighting.positive_losses``) refuses a negative one
inside hapi's fit, before any update; the others train through it; nothing else changes."""

import functools
import re

import numpy as np
import paddle
import pytest
from helpers import TwoTaskData, build_model

from hapi_autoloss import AutoWeight, attach, param_groups
from hapi_autoloss.callbacks import AutoWeightCallback
from hapi_autoloss.weighting.base import METHODS

NEEDS = ["gls", "dwa", "uw_so", "famo", "stch", "kendall", "simple", "liebel", "imtl_l", "imtl", "db_mtl", "gradnorm"]
ANY_SIGN = ["equal", "fixed", "rlw", "pcgrad", "mgda"]
SHIFT = 100.0  # far more than y1's mean squared error: its loss goes below 0


class ShiftedMSE(paddle.nn.Layer):
    """mse(o, y) − shift, the shift set between steps (a Python number: no parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = 0.0

    def forward(self, o, y):
        return paddle.nn.functional.mse_loss(o, y) - self.shift


def make(method):
    options = {"task_types": ["regression"] * 2} if method == "kendall" else {}
    options.update({"weights": [1.0, 1.0]} if method == "fixed" else {})
    shifted = ShiftedMSE()
    loss = AutoWeight({"y1": shifted, "y2": paddle.nn.MSELoss()}, method=method, **options)
    return loss, shifted, build_model(loss)


def snapshot(model, loss):
    opt = model._optimizer  # moments by their order: two runs' parameters have other unique names
    moments = {f"{acc}/{i}": var.numpy().copy() for acc, per in opt._accumulators.items()
               for i, var in enumerate(per.values())}
    params = {f"net/{n}": p.numpy().copy() for n, p in model.network.named_parameters()}
    mine = {f"loss/{n}": p.numpy().copy() for n, p in loss.named_parameters()}
    return {**params, **mine, **moments}


class ShiftFrom(paddle.callbacks.Callback):
    """Shifts y1's loss below 0 at the steps in ``steps``; keeps a snapshot before the first of them."""

    def __init__(self, loss, shifted, steps):
        self.loss, self.shifted, self.steps, self.before, self.initial = loss, shifted, steps, None, None

    def on_train_batch_begin(self, step, logs=None):
        if self.initial is None:
            self.initial = snapshot(self.model, self.loss)
        self.shifted.shift = SHIFT if step in self.steps else 0.0
        if step == min(self.steps):
            self.before = snapshot(self.model, self.loss)
            x, y1 = DATA.x[step * 16:(step + 1) * 16], DATA.y1[step * 16:(step + 1) * 16]
            with paddle.no_grad():
                out = self.model.network(paddle.to_tensor(x))[0].numpy().astype(np.float64)
            self.expected = ((out - y1.astype(np.float64)) ** 2).mean() - SHIFT


DATA = TwoTaskData(96)


def fit(model, loss, shifted, steps, policy="raise", **kwargs):
    spy = ShiftFrom(loss, shifted, steps)
    model.fit(DATA, epochs=1, batch_size=16, shuffle=False, verbose=0,
              callbacks=[AutoWeightCallback(on_nonfinite=policy), spy], **kwargs)
    return spy


def refused(method, steps, policy="raise", **kwargs):
    loss, shifted, model = make(method)
    spy = ShiftFrom(loss, shifted, steps)
    with pytest.raises(ValueError) as info:
        model.fit(DATA, epochs=1, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[AutoWeightCallback(on_nonfinite=policy), spy], **kwargs)
    now = snapshot(model, loss)
    assert set(now) == set(spy.before)
    for key, before in spy.before.items():
        np.testing.assert_array_equal(now[key], before, err_msg=key)
    return str(info.value), spy, now


def value_in(message):
    return float(re.search(r"[Tt]ask 'y1' has loss (\S+) < 0", message).group(1))


@pytest.mark.parametrize("method", NEEDS)
def test_a_negative_loss_is_refused_at_the_first_step_before_any_update(method):
    message, spy, _ = refused(method, {0, 1, 2, 3, 4, 5})
    assert METHODS[method].positive_losses
    assert message.startswith("Task 'y1' has loss ") and "at epoch 0, step 0" in message
    assert f"method={method!r} {METHODS[method].positive_losses}: it needs every task loss >= 0" in message
    assert "y2" not in message and "Fix:" in message and "No parameter, σ or optimizer moment" in message
    np.testing.assert_allclose(value_in(message), spy.expected, rtol=1e-5)


@pytest.mark.parametrize("method", ["gls", "kendall", "db_mtl"])
def test_skip_does_not_skip_it(method):
    message, _, _ = refused(method, {0, 1, 2, 3, 4, 5}, policy="skip")
    assert "step 0" in message and method in message


@pytest.mark.parametrize("method", ["gls", "liebel", "db_mtl", "gradnorm"])
def test_a_loss_turning_negative_later_is_refused_there_and_earlier_updates_stay(method):
    message, spy, now = refused(method, {3, 4, 5})
    assert "at epoch 0, step 3" in message
    np.testing.assert_allclose(value_in(message), spy.expected, rtol=1e-5)
    assert any(k.startswith("net/") and not np.array_equal(now[k], spy.initial[k]) for k in now)
    assert any("moment" in k for k in now)  # Adam's moments are in the comparison


@pytest.mark.parametrize("method", ["gls", "db_mtl"])
def test_a_negative_loss_in_an_accumulated_batch_is_refused_at_the_update(method):
    message, _, _ = refused(method, {0}, accumulate_grad_batches=2)
    assert "step 1" in message and "in a batch accumulated since the last update" in message


@pytest.mark.parametrize("method", ANY_SIGN)
def test_methods_that_take_any_sign_train_through_it(method):
    loss, shifted, model = make(method)
    assert not METHODS[method].positive_losses
    before = model.network.trunk.weight.numpy().copy()
    fit(model, loss, shifted, {0, 1, 2, 3, 4, 5})
    after = model.network.trunk.weight.numpy()
    assert np.isfinite(after).all() and not np.array_equal(after, before)
    assert loss.last_losses()["y1"] < 0


def test_equal_total_is_the_plain_sum_of_a_negative_loss():
    _, shifted, model = make("equal")
    shifted.shift = SHIFT
    x, y1, y2 = next(DATA.batches(16))
    with paddle.no_grad():
        o1, o2 = (o.numpy().astype(np.float64) for o in model.network(x))
    expected = ((o1 - y1.numpy()) ** 2).mean() - SHIFT + ((o2 - y2.numpy()) ** 2).mean()
    attach(model)
    total = model.train_batch([x], [y1, y2])[0]
    np.testing.assert_allclose(float(np.ravel(total)[0]), expected, rtol=1e-5)


def with_and_without_the_check(method, monkeypatch):
    """make(method) with the method's positive_losses, then with "" (the library before the check)."""
    for reason in (METHODS[method].positive_losses, ""):
        monkeypatch.setattr(METHODS[method], "positive_losses", reason)
        yield make(method)


@pytest.mark.parametrize("method", ["gls", "kendall", "famo", "db_mtl"])
def test_with_losses_above_zero_the_check_changes_no_value(method, monkeypatch):
    runs = []
    for loss, shifted, model in with_and_without_the_check(method, monkeypatch):
        spy = fit(model, loss, shifted, {99}, accumulate_grad_batches=1)
        runs.append((snapshot(model, loss), loss.last_losses(), spy))
    (a, la, _), (b, lb, _) = runs
    assert set(a) == set(b) and la == lb
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("method", ["gls", "kendall", "uw_so", "db_mtl"])
def test_a_plain_loop_gets_the_same_total_as_before(method, monkeypatch):
    totals = []
    for loss, shifted, model in with_and_without_the_check(method, monkeypatch):
        shifted.shift = SHIFT
        x, y1, y2 = next(DATA.batches(16))
        param_groups(model.network, loss)  # a plain loop's optimizer groups (tells db_mtl the network)
        model.network.train()
        totals.append(float(loss(*model.network(x), y1, y2)))
    assert np.isfinite(totals[0]) and totals[0] == totals[1]


class JustBelow(paddle.nn.Layer):
    """mse's gradient with the value −below (a loss >= 0 that rounding took a little below 0)."""

    def __init__(self, below):
        super().__init__()
        self.below = below

    def forward(self, o, y):
        mse = paddle.nn.functional.mse_loss(o, y)
        return mse - mse.detach() - self.below


@pytest.mark.parametrize("method", ["gls", "kendall", "db_mtl"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_loss_a_rounding_below_zero_trains_and_one_below_the_tolerance_is_refused(method, accumulate):
    options = {"task_types": ["regression"] * 2} if method == "kendall" else {}
    for below in (5e-5, 2e-4):  # NEGATIVE_TOLERANCE = 1e-4
        loss = AutoWeight({"y1": JustBelow(below), "y2": paddle.nn.MSELoss()}, method=method, **options)
        model = build_model(loss)
        before = model.network.trunk.weight.numpy().copy()
        run = functools.partial(model.fit, DATA, epochs=1, batch_size=16, shuffle=False, verbose=0,
                                callbacks=[AutoWeightCallback()], accumulate_grad_batches=accumulate)
        if below < 1e-4:
            run()
            after = model.network.trunk.weight.numpy()
            assert np.isfinite(after).all() and not np.array_equal(after, before)
            np.testing.assert_allclose(loss.last_losses()["y1"], -below, rtol=1e-3)
        else:
            with pytest.raises(ValueError, match=r"below -0\.0001 is refused") as info:
                run()
            np.testing.assert_allclose(value_in(str(info.value)), -below, rtol=1e-3)
            assert f"step {accumulate - 1}" in str(info.value)


def pre_refusal(method, monkeypatch, run):
    """``run(loss, shifted, model)`` with the refusal, then as before it existed (positive_losses "")."""
    out = []
    for reason in (METHODS[method].positive_losses, ""):
        monkeypatch.setattr(METHODS[method], "positive_losses", reason)
        paddle.seed(0)
        loss, shifted, model = make(method)
        out.append((run(loss, shifted, model), snapshot(model, loss)))
    (a, sa), (b, sb) = out
    assert a == b and set(sa) == set(sb)
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    return a, sa


@pytest.mark.parametrize("method", ["gls", "kendall", "db_mtl"])
def test_train_batch_by_hand_without_a_policy_is_not_refused(method, monkeypatch):
    def run(loss, shifted, model):
        shifted.shift = SHIFT
        attach(model)  # no on_nonfinite: nothing checks the update, so no NaN
        x, y1, y2 = next(DATA.batches(16))
        return float(np.ravel(model.train_batch([x], [y1, y2])[0])[0])

    total, state = pre_refusal(method, monkeypatch, run)
    assert np.isfinite(total)
    assert all(np.isfinite(v).all() for v in state.values())


class LogLoss(paddle.callbacks.Callback):
    def __init__(self):
        self.logged = []

    def on_train_batch_end(self, step, logs=None):
        self.logged.append(float(np.ravel(logs["loss"])[0]))


@pytest.mark.parametrize("method", ["gls", "db_mtl"])
def test_a_fit_without_the_callback_after_one_with_it_is_not_refused(method, monkeypatch):
    def run(loss, shifted, model):
        fit(model, loss, shifted, {99})  # with AutoWeightCallback: losses >= 0
        shifted.shift = SHIFT
        log = LogLoss()
        model.fit(DATA, epochs=1, batch_size=16, shuffle=False, verbose=0, callbacks=[log])
        return tuple(log.logged)

    logged, _ = pre_refusal(method, monkeypatch, run)
    assert len(logged) == 6 and np.isfinite(logged).all()
