"""Under `python -m paddle.distributed.launch --nproc_per_node 2`: kendall in a plain loop, first with
sync_gradients (nothing may warn: warnings are errors), then without it (one warning naming it), then
without it but with one paddle.DataParallel wrapping the network and the loss (it averages σ itself:
no warning).

    dist_plain_warn.py
Prints per rank: "RANK<k> synced-ok", then "RANK<k> warned <n> <σ>" for the loop without sync_gradients,
then "RANK<k> dp-full warned <n> <σ>" for the DataParallel of both.
"""

import os
import sys
import warnings

import numpy as np
import paddle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import TwoTaskData, TwoTaskNet, kendall_loss

from hapi_autoloss._hapi import world
from hapi_autoloss.loop import param_groups, sync_gradients

rank, nranks = world()
paddle.distributed.init_parallel_env()
data = TwoTaskData(128)


class Full(paddle.nn.Layer):
    """The network and the loss in one layer, for one paddle.DataParallel of both."""

    def __init__(self, net, loss):
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, x, y1, y2):
        return self.loss(*self.net(x), y1, y2)


def loop(sync: bool, full: bool = False):
    paddle.seed(0)
    net, loss = TwoTaskNet(), kendall_loss()
    opt = paddle.optimizer.Adam(0.05, parameters=param_groups(net, loss))
    model = paddle.DataParallel(Full(net, loss) if full else net)
    for _epoch in range(2):
        for x, y1, y2 in data.batches(32):
            mine = slice(rank * 16, (rank + 1) * 16)
            total = model(x[mine], y1[mine], y2[mine]) if full else loss(*model(x[mine]), y1[mine], y2[mine])
            total.backward()
            if sync:
                sync_gradients(loss)
            opt.step()
            opt.clear_grad()
        loss.end_epoch()
    return loss


with warnings.catch_warnings():
    warnings.simplefilter("error")
    loop(sync=True)
print(f"RANK{rank} synced-ok", flush=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    naive = loop(sync=False)
texts = [str(w.message) for w in caught if "sync_gradients" in str(w.message)]
print(f"RANK{rank} warned {len(texts)} {np.round(naive.s.numpy(), 6).tolist()} {texts[0] if texts else ''}", flush=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    both = loop(sync=False, full=True)
texts = [str(w.message) for w in caught if "AutoWeight" in str(w.message)]
print(f"RANK{rank} dp-full warned {len(texts)} {np.round(both.s.numpy(), 6).tolist()} {texts[0] if texts else ''}",
      flush=True)
