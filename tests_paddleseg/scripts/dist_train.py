"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`.

    dist_train.py OUT_DIR attach|naive

PaddleSeg's own train, 8 iterations, each rank on its half of the data (PaddleSeg's
DistributedBatchSampler); writes each rank's σ and a network weight to OUT_DIR/rank<k>.npz.
"attach" is our one line; "naive" is seed 000's hand `parameters.append`.
"""

import os
import sys

import numpy as np
import paddle
from seg_helpers import SegData, build, train

out_dir, mode = sys.argv[1], sys.argv[2]
model, losses, opt = build(mode)
train(model, losses, opt, SegData(n=32), os.path.join(out_dir, "ckpt"))
rank = paddle.distributed.get_rank()
np.savez(os.path.join(out_dir, f"rank{rank}.npz"), s=losses["types"][0].s.numpy(), w=model.c1.weight.numpy())
