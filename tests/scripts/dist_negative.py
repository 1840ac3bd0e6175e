"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`.

    dist_negative.py OUT_DIR

Rank 1 alone gets a negative task loss (mse − 100) at step 1 of a fit, for a loss-level method
(raise and skip) and a gradient-level one; every rank must raise the same kind of ValueError,
with nothing updated by that step. Then a gradient-level method's forward under AMP with the
negative loss on rank 1 only: every rank refuses the step (NaN total, finite gradients), none
hands the GradScaler inf gradients. Writes OUT_DIR/rank<k>.json.
"""

import json
import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import TwoTaskData, TwoTaskNet, build_model

from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback

rank = paddle.distributed.get_rank()


class Shifted(paddle.nn.Layer):
    """mse(o, y) − shift; keeps the last value in float64 (a host read: test only)."""

    def __init__(self, shift=0.0):
        super().__init__()
        self.shift, self.values = shift, []

    def forward(self, o, y):
        self.values.append(float(((o.numpy().astype(np.float64) - y.numpy()) ** 2).mean()) - self.shift)
        return paddle.nn.functional.mse_loss(o, y) - self.shift


class Flip(paddle.callbacks.Callback):
    def __init__(self, shifted):
        self.shifted, self.before = shifted, None

    def on_train_batch_begin(self, step, logs=None):
        self.shifted.shift = 100.0 if (step == 1 and rank == 1) else 0.0
        if step == 1:
            self.before = {n: p.numpy().copy() for n, p in self.model.network.named_parameters()}


def fit(method, policy):
    shifted = Shifted()
    loss = AutoWeight({"y1": shifted, "y2": paddle.nn.MSELoss()}, method=method)
    model, flip = build_model(loss), Flip(shifted)
    out = {"error": "", "message": ""}
    try:
        model.fit(TwoTaskData(64), epochs=1, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[AutoWeightCallback(on_nonfinite=policy), flip])
    except Exception as e:  # recorded for the test
        out = {"error": type(e).__name__, "message": str(e)}
    after = {n: p.numpy() for n, p in model.network.named_parameters()}
    out["unchanged"] = flip.before is not None and all(np.array_equal(after[n], v) for n, v in flip.before.items())
    out["value"] = shifted.values[-1]
    return out


results = {f"{m}/{p}": fit(m, p) for m, p in [("gls", "raise"), ("liebel", "skip"), ("db_mtl", "raise")]}

# A gradient-level method's forward under AMP (what attach sets: the network and the loss scale).
paddle.seed(0)
net = TwoTaskNet()
loss = AutoWeight({"y1": Shifted(100.0 if rank == 1 else 0.0), "y2": paddle.nn.MSELoss()}, method="db_mtl")
loss.set_network(net, lambda: paddle.to_tensor(1024.0))
loss.track_batch(True)  # hapi's train step (attach's wrapper)...
loss._since.checked = True  # ...whose update a policy checks (attach asks policy_of)
x, y1, y2 = next(TwoTaskData(32).batches(16))
total = loss(*net(x), y1, y2)
total.backward()
loss.track_batch(False)
results["amp"] = {"total": float(total), "grads_finite": all(bool(paddle.isfinite(p.grad).all()) for p in
                                                             net.parameters() if p.grad is not None),
                  "cause": list(loss.nonfinite_cause()), "negative": loss.nonfinite_negative()}

with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(results, f)
