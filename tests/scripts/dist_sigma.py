"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`.

    dist_sigma.py OUT_DIR naive|autoloss

Trains a two-task model for 3 epochs and writes each rank's σ and a network
weight to OUT_DIR/rank<k>.npz. "naive" is seed 000's way (a hand-written loss
layer whose σ is added to the optimizer by hand); "autoloss" uses AutoWeight and
AutoWeightCallback.
"""

import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import NaiveUncertaintyLoss, TwoTaskData, build_model, kendall_loss

from hapi_autoloss.callbacks import AutoWeightCallback

out_dir, mode = sys.argv[1], sys.argv[2]
if mode == "naive":
    loss = NaiveUncertaintyLoss()
    model = build_model(loss, extra_params=loss.parameters())
    callbacks = []
else:
    loss = kendall_loss()
    model = build_model(loss)
    callbacks = [AutoWeightCallback()]
model.fit(TwoTaskData(256), epochs=3, batch_size=16, shuffle=True, verbose=0, callbacks=callbacks)
rank = paddle.distributed.get_rank()
np.savez(os.path.join(out_dir, f"rank{rank}.npz"), s=loss.s.numpy(), w=model.network.trunk.weight.numpy())
