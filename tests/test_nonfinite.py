"""A non-finite task loss: named, and nothing updated (raise), or skipped and counted (skip)."""

import numpy as np
import paddle
import pytest
from helpers import TwoTaskData, build_model, kendall_loss

from hapi_autoloss.callbacks import AutoWeightCallback

BAD_BATCH = 3  # batch index (batch size 16) whose y1 holds a NaN


class PoisonedData(TwoTaskData):
    def __init__(self, value=float("nan")):
        super().__init__(96)
        self.y1 = self.y1.copy()
        self.y1[BAD_BATCH * 16 + 5, 0] = value


def snapshot(model, loss):
    opt = model._optimizer
    moments = {f"{acc}/{name}": var.numpy().copy() for acc, per in opt._accumulators.items()
               for name, var in per.items()}
    return {"s": loss.s.numpy().copy(), "w": model.network.trunk.weight.numpy().copy(), **moments}


class Snapshots(paddle.callbacks.Callback):
    def __init__(self, loss):
        self.loss, self.before, self.after, self.logs = loss, None, None, {}

    def on_train_batch_begin(self, step, logs=None):
        if step == BAD_BATCH:
            self.before = snapshot(self.model, self.loss)

    def on_train_batch_end(self, step, logs=None):
        if step == BAD_BATCH:
            self.after = snapshot(self.model, self.loss)
        self.logs = dict(logs)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_raise_names_task_step_value_and_updates_nothing(value):
    loss = kendall_loss()
    model = build_model(loss)
    spy = Snapshots(loss)
    with pytest.raises(FloatingPointError) as info:
        model.fit(PoisonedData(value), epochs=1, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[AutoWeightCallback(), spy])
    message = str(info.value)
    assert "task 'y1'" in message and f"step {BAD_BATCH}" in message and str(value) in message
    assert "on_nonfinite='skip'" in message and "y2" not in message
    now = snapshot(model, loss)
    assert set(now) == set(spy.before) and len(now) > 2  # Adam moments are in the comparison
    for key, before in spy.before.items():
        np.testing.assert_array_equal(now[key], before, err_msg=key)


def test_skip_drops_the_update_and_counts_it():
    loss = kendall_loss()
    model = build_model(loss)
    spy = Snapshots(loss)
    model.fit(PoisonedData(), epochs=2, batch_size=16, shuffle=False, verbose=0,
              callbacks=[AutoWeightCallback(on_nonfinite="skip"), spy])
    for key, before in spy.before.items():
        np.testing.assert_array_equal(spy.after[key], before, err_msg=key)
    assert spy.logs["nonfinite_skipped"] == 2  # once per epoch
    assert np.all(np.isfinite(loss.s.numpy())) and np.abs(loss.s.numpy()).min() > 0.05
    assert np.all(np.isfinite(model.network.trunk.weight.numpy()))


def test_unknown_policy():
    with pytest.raises(ValueError, match="'raise' or 'skip'"):
        AutoWeightCallback(on_nonfinite="ignore")


def test_a_nan_in_an_accumulated_batch_that_does_not_update_is_caught():
    loss = kendall_loss()
    model = build_model(loss)
    with pytest.raises(FloatingPointError, match=r"step 5: task 'y1' = nan in a batch accumulated since the last"):
        # BAD_BATCH = 3 does not update with accumulate 3: its NaN sits in the gradient
        # until batch 5 updates, and is caught there.
        model.fit(PoisonedData(), epochs=1, batch_size=16, shuffle=False, verbose=0,
                  accumulate_grad_batches=3, callbacks=[AutoWeightCallback()])
    assert np.all(np.isfinite(loss.s.numpy()))
    assert np.all(np.isfinite(model.network.trunk.weight.numpy()))


def test_after_a_raise_no_bad_gradient_is_left_for_the_next_fit():
    loss = kendall_loss()
    model = build_model(loss)
    with pytest.raises(FloatingPointError):
        model.fit(PoisonedData(), epochs=1, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[AutoWeightCallback()])
    model.fit(TwoTaskData(96), epochs=1, batch_size=16, shuffle=False, verbose=0,
              callbacks=[AutoWeightCallback()])
    assert np.all(np.isfinite(loss.s.numpy()))
    assert np.all(np.isfinite(model.network.trunk.weight.numpy()))
