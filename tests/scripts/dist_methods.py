"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`.

    dist_methods.py OUT_DIR

Each rank trains a dwa model (4 epochs) and an rlw model with seed=None (2 epochs)
with AutoWeightCallback and records, per step, its raw task losses, the weights
the step's forward used and the weights hapi's logs carried; per epoch, dwa's
weights. Then it drives a bare dwa AutoWeight where only one rank has batches in
an epoch (end_epoch is a collective every rank calls). Writes OUT_DIR/rank<k>.npz.
"""

import os
import sys

import numpy as np
import paddle
from paddle.callbacks import Callback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import TwoTaskData, build_model

from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback


class Record(Callback):
    """Listed after AutoWeightCallback: what each step used, as this rank saw it."""

    def __init__(self, aw):
        super().__init__()
        self.aw, self.losses, self.used, self.logged, self.epoch_weights = aw, [], [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.losses.append([])

    def on_train_batch_end(self, step, logs=None):
        self.losses[-1].append(list(self.aw.last_losses().values()))
        self.used.append(list(self.aw.used()[1].values()))
        self.logged.append([logs[f"weight_{t}"] for t in self.aw.task_names])

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_weights.append(list(self.aw.weights().values()))


def train(method, epochs, **options):
    aw = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method=method, **options)
    record = Record(aw)
    model = build_model(aw)
    # 200 samples: 100 per rank, 7 batches each (the last of 4).
    model.fit(TwoTaskData(200), epochs=epochs, batch_size=16, shuffle=True, verbose=0,
              callbacks=[AutoWeightCallback(), record])
    return record


def identity(out, _label):
    return out


rank = paddle.distributed.get_rank()
dwa, rlw = train("dwa", 4), train("rlw", 2)
stch = train("stch", 3, warmup_epochs=1)  # epoch 1 is the nadir epoch: both ranks' batches

# A rank without batches in an epoch still joins the reduction.
bare = AutoWeight([identity, identity], method="dwa")
batches = {0: [[[1.0, 4.0], [3.0, 2.0]], [], []], 1: [[], [[0.5, 6.0]], []]}[rank]
for epoch_batches in batches:
    for values in epoch_batches:
        bare(*[paddle.to_tensor(np.float32(v)) for v in values], paddle.zeros([]), paddle.zeros([]))
    bare.end_epoch()

# stch: an end_epoch with no training forward since the last one, on any rank, is not an epoch.
bare_stch = AutoWeight([identity, identity], method="stch", warmup_epochs=0)
stch_batches = {0: [[[1.0, 4.0]], [], []], 1: [[[3.0, 2.0]], [], [[5.0, 1.0]]]}[rank]
for epoch_batches in stch_batches:
    for values in epoch_batches:
        bare_stch(*[paddle.to_tensor(np.float32(v)) for v in values], paddle.zeros([]), paddle.zeros([]))
    bare_stch.end_epoch()

np.savez(
    os.path.join(sys.argv[1], f"rank{rank}.npz"),
    dwa_losses=np.array(dwa.losses), dwa_epoch_weights=np.array(dwa.epoch_weights),
    dwa_used=np.array(dwa.used), dwa_logged=np.array(dwa.logged),
    rlw_used=np.array(rlw.used), rlw_logged=np.array(rlw.logged),
    bare_history=bare.weighting.dwa_history.numpy(), bare_epochs=int(bare.weighting.epochs_seen),
    bare_weights=np.array(list(bare.weights().values())),
    stch_losses=np.array(stch.losses), stch_nadir=stch.aw.weighting.nadir.numpy(),
    stch_epochs=int(stch.aw.weighting.epochs_seen),
    bare_stch_nadir=bare_stch.weighting.nadir.numpy(), bare_stch_epochs=int(bare_stch.weighting.epochs_seen),
)
