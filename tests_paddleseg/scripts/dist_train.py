"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`.

    dist_train.py OUT_DIR attach|naive|minimize

PaddleSeg's own train, 8 iterations, each rank on its half of the data (PaddleSeg's
DistributedBatchSampler); writes each rank's σ and a network weight to OUT_DIR/rank<k>.npz.
"attach" is our one line; "naive" is seed 000's hand `parameters.append`. "minimize": our line,
then a loop that updates by ``optimizer.minimize`` (what PaddleSeg's ``train`` reaches through
``scaler.minimize`` with ``precision='fp16'``) instead of ``step``, each rank on its own data.
"""

import os
import sys

import numpy as np
import paddle
from seg_helpers import SegData, build, train

out_dir, mode = sys.argv[1], sys.argv[2]
rank = paddle.distributed.get_rank()
model, losses, opt = build("attach" if mode == "minimize" else mode)
if mode == "minimize":
    paddle.distributed.init_parallel_env()
    ddp = paddle.DataParallel(model)
    data = SegData(seed=rank, n=8)
    for i in range(4):
        sample = data[i]
        logits = ddp(paddle.to_tensor(sample["img"][None]))
        loss = losses["types"][0](logits[0], paddle.to_tensor(sample["label"][None]))
        loss.sum().backward()
        opt.minimize(loss)
        model.clear_gradients()
else:
    train(model, losses, opt, SegData(n=32), os.path.join(out_dir, "ckpt"))
np.savez(os.path.join(out_dir, f"rank{rank}.npz"), s=losses["types"][0].s.numpy(), w=model.c1.weight.numpy())
