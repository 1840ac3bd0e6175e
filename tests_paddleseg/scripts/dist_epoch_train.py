"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`.

    dist_epoch_train.py OUT_DIR

PaddleSeg's own train with dwa, 8 iterations of 2 per epoch, each rank on its half of 16 images
(batch 4); writes each rank's per-step losses, the weights each step used, dwa's epoch count and a
network weight to OUT_DIR/rank<k>.npz.
"""

import os
import sys

import numpy as np
import paddle
from seg_helpers import SegData, build, train

out_dir = sys.argv[1]
rank = paddle.distributed.get_rank()
model, losses, opt = build("attach", method="dwa")
aw = losses["types"][0]
rows, combine = [], aw.weighting.combine


def recorded(values):
    if paddle.is_grad_enabled():
        rows.append(np.concatenate([values.numpy(), aw.weighting.dwa_weights.numpy()]).astype(np.float64))
    return combine(values)


aw.weighting.combine = recorded
train(model, losses, opt, SegData(n=16), os.path.join(out_dir, "ckpt"))
np.savez(os.path.join(out_dir, f"rank{rank}.npz"), rows=np.array(rows), epochs=int(aw.weighting.epochs_seen),
         w=model.c1.weight.numpy())
