"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`.

    dist_sigma.py OUT_DIR naive|autoloss|nan_skip|nan_raise

Trains a two-task model for 3 epochs and writes each rank's σ and a network
weight to OUT_DIR/rank<k>.npz. "naive" is seed 000's way (a hand-written loss
layer whose σ is added to the optimizer by hand); "autoloss" uses AutoWeight and
AutoWeightCallback. The nan_* modes put a NaN label into rank 0's data only.
"""

import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import NaiveUncertaintyLoss, TwoTaskData, build_model, kendall_loss

from hapi_autoloss.callbacks import AutoWeightCallback


class RankZeroNaN(TwoTaskData):
    def __getitem__(self, i):
        x, y1, y2 = super().__getitem__(i)
        if i % 50 == 7 and paddle.distributed.get_rank() == 0:
            y1 = y1 * float("nan")
        return x, y1, y2


out_dir, mode = sys.argv[1], sys.argv[2]
data = RankZeroNaN(256) if mode.startswith("nan") else TwoTaskData(256)
if mode == "naive":
    loss = NaiveUncertaintyLoss()
    model = build_model(loss, extra_params=loss.parameters())
    callbacks = []
else:
    loss = kendall_loss()
    model = build_model(loss)
    callbacks = [AutoWeightCallback(on_nonfinite="raise" if mode == "nan_raise" else "skip")]
model.fit(data, epochs=3, batch_size=16, shuffle=True, verbose=0, callbacks=callbacks)
rank = paddle.distributed.get_rank()
np.savez(os.path.join(out_dir, f"rank{rank}.npz"), s=loss.s.numpy(), w=model.network.trunk.weight.numpy(),
         skipped=np.int64(callbacks[0].skipped if callbacks else 0))
