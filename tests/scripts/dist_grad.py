"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`, or alone.

    dist_grad.py OUT_DIR METHOD params|rep

Trains a shared-trunk two-task model for 4 steps of ``model.train_batch`` on a fixed
global batch of 16: under the launcher rank r takes rows 8r..8r+7, alone the process
takes all 16. Writes OUT_DIR/rank<k>.npz with every parameter and the weights each
step used.
"""

import os
import sys

import numpy as np
import paddle

import hapi_autoloss
from hapi_autoloss import AutoWeight
from hapi_autoloss.weighting.gradient import GradWeighting


class UnitNorm(GradWeighting):
    """Each task's gradient scaled to unit norm: needs only the Gram matrix."""

    name = "unit_norm_test"

    def alphas(self, gram, losses):
        return 1.0 / np.sqrt(np.maximum(np.diag(gram), 1e-20))


class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.trunk = paddle.nn.Sequential(paddle.nn.Linear(4, 16), paddle.nn.Tanh(), paddle.nn.Linear(16, 8))
        self.h1 = paddle.nn.Linear(8, 1)
        self.h2 = paddle.nn.Linear(8, 1)

    def forward(self, x):
        z = self.trunk(x)
        return self.h1(z), self.h2(z)


out_dir, method, mode = sys.argv[1], sys.argv[2], sys.argv[3]
nranks = paddle.distributed.get_world_size()
rank = paddle.distributed.get_rank()
if nranks > 1:
    paddle.distributed.init_parallel_env()
paddle.seed(0)
net = Net()
options = {"pcgrad": {"seed": 0}}.get(method, {})
loss = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method=method,
                  shared=net.trunk if mode == "rep" else None, rep_grad=mode == "rep", **options)
model = paddle.Model(net)
model.prepare(paddle.optimizer.Adam(0.01, parameters=net.parameters()), loss)
hapi_autoloss.attach(model)  # trains the method's own parameters too (imtl's s, gradnorm's w)
rng = np.random.default_rng(0)
used = []
for _step in range(4):
    x = rng.standard_normal((16, 4)).astype("float32")
    y1 = (x[:, :1] * 2 + 0.1 * rng.standard_normal((16, 1))).astype("float32")
    y2 = (-x[:, 1:2] * 20 + rng.standard_normal((16, 1))).astype("float32")
    rows = slice(8 * rank, 8 * rank + 8) if nranks > 1 else slice(None)
    model.train_batch([x[rows]], [y1[rows], y2[rows]])
    used.append(list(loss.used()[1].values()))
state = {p.name: p.numpy() for p in [*net.parameters(), *loss.parameters()]}
np.savez(os.path.join(out_dir, f"rank{rank}.npz"), used=np.array(used), **state)
