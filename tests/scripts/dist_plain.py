"""A plain training loop, under `python -m paddle.distributed.launch --nproc_per_node 2` or alone.

    dist_plain.py OUT_DIR naive|synced|missing

Every step takes the next 32 rows of TwoTaskData; with N ranks, rank k trains on its
32/N of them through paddle.DataParallel(net). AdamW(weight_decay=0.5) is built from
param_groups. "synced" calls sync_gradients(loss) after backward, "naive" does not.
"missing" syncs too, but rank 1's first step leaves σ out of its loss (σ has no gradient there).
Writes σ and a network weight to OUT_DIR/rank<k>.npz.
"""

import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import TwoTaskData, TwoTaskNet, kendall_loss

from hapi_autoloss._hapi import world
from hapi_autoloss.loop import param_groups, sync_gradients

out_dir, mode = sys.argv[1], sys.argv[2]
rank, nranks = world()
if nranks > 1:
    paddle.distributed.init_parallel_env()
paddle.seed(0)
net = TwoTaskNet()
loss = kendall_loss()
opt = paddle.optimizer.AdamW(learning_rate=0.05, parameters=param_groups(net, loss), weight_decay=0.5)
model = paddle.DataParallel(net) if nranks > 1 else net
data = TwoTaskData(128)
share = 32 // nranks
for epoch in range(3):
    for step, (x, y1, y2) in enumerate(data.batches(32)):
        mine = slice(rank * share, (rank + 1) * share)
        o1, o2 = model(x[mine])
        if mode == "missing" and rank == 1 and epoch == step == 0:
            (((o1 - y1[mine]) ** 2).mean() + ((o2 - y2[mine]) ** 2).mean()).backward()
        else:
            loss(o1, o2, y1[mine], y2[mine]).backward()
        if mode != "naive":
            sync_gradients(loss)
        opt.step()
        opt.clear_grad()
np.savez(os.path.join(out_dir, f"rank{rank}.npz"), s=loss.s.numpy(), w=net.trunk.weight.numpy())
