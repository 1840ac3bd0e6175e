"""A negative task loss is refused whatever the non-finite policy says, also beside an earlier
micro-batch's NaN: the NaN's cause hid it, so 'skip' dropped the step and trained on."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from helpers import TwoTaskData, build_model

from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback

DATA = TwoTaskData(96)


class Shifted(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.shift, self.nan = 0.0, False

    def forward(self, out, label):
        loss = paddle.nn.functional.mse_loss(out, label) - self.shift
        return loss * float("nan") if self.nan else loss


class Control(paddle.callbacks.Callback):
    """Micro-batch 0: task y2 NaN; micro-batch 1: task y1 = mse - 100."""

    def __init__(self, y1, y2):
        self.y1, self.y2 = y1, y2

    def on_train_batch_begin(self, step, logs=None):
        self.y2.nan = step == 0
        self.y1.shift = 100.0 if step == 1 else 0.0


@pytest.mark.parametrize("policy", ["raise", "skip"])
@pytest.mark.parametrize("method", ["gls", "kendall"])
def test_a_negative_loss_beside_an_earlier_nan_is_refused(policy, method):
    y1, y2 = Shifted(), Shifted()
    types = {"task_types": ["regression", "regression"]} if method == "kendall" else {}
    model = build_model(AutoWeight({"y1": y1, "y2": y2}, method=method, **types))
    before = [p.numpy() for p in model.network.parameters()]
    x, t1, _ = list(DATA.batches(16))[1]  # micro-batch 1, before any update (the first is after it)
    want = float(((model.network(x)[0].numpy().astype(np.float64) - t1.numpy()) ** 2).mean() - 100.0)
    with pytest.raises(ValueError, match=r"Task 'y1' has loss (-[0-9.e+-]+) < 0 at epoch 0, step 1") as info:
        model.fit(DATA, epochs=1, batch_size=16, shuffle=False, verbose=0, accumulate_grad_batches=2,
                  callbacks=[AutoWeightCallback(on_nonfinite=policy), Control(y1, y2)])
    got = float(info.value.args[0].split("has loss ")[1].split(" <")[0])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for p, b in zip(model.network.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)
