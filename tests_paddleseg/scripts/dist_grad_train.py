"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`.

    dist_grad_train.py OUT_DIR METHOD [OPTION=VALUE...]

PaddleSeg's own train after attach, 8 iterations of AdamW, with a gradient-level METHOD (CE + Dice),
each rank on its half of each global batch of 8 (PaddleSeg's DistributedBatchSampler); writes each
rank's network weights and the weights the last step used to OUT_DIR/rank<k>.npz.
"""

import os
import sys

import numpy as np
import paddle
from seg_helpers import SegData, build, train

out_dir, method = sys.argv[1], sys.argv[2]
options = dict(arg.split("=", 1) for arg in sys.argv[3:])
rank = paddle.distributed.get_rank()
model, losses, opt = build("attach", method=method, **options)
train(model, losses, opt, SegData(n=32), os.path.join(out_dir, "ckpt"))
used = np.array(list(losses["types"][0].used()[1].values()))
np.savez(os.path.join(out_dir, f"rank{rank}.npz"), w=model.c1.weight.numpy(), w2=model.c2.weight.numpy(), used=used)
