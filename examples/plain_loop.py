# AutoWeight in your own training loop. Runs as is on one process, or on several:
#   python -m paddle.distributed.launch --nproc_per_node 2 examples/plain_loop.py
# A second run in the same folder resumes from plain.pdparams / .pdopt / .autoloss.pdparams.
import os

import numpy as np
import paddle

from hapi_autoloss import AutoWeight, param_groups, sync_gradients

rng = np.random.default_rng(0)
x = rng.standard_normal((512, 3)).astype("float32")
y1 = (x @ np.float32([[1.0], [-2.0], [0.5]]) + 2.0 * rng.standard_normal((512, 1))).astype("float32")  # noise σ 2.0
y2 = (x @ np.float32([[0.3], [0.1], [1.0]]) + 0.3 * rng.standard_normal((512, 1))).astype("float32")  # noise σ 0.3
data = paddle.io.TensorDataset([paddle.to_tensor(a) for a in (x, y1, y2)])


class TwoTasks(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.trunk = paddle.nn.Linear(3, 16)
        self.heads = paddle.nn.LayerList([paddle.nn.Linear(16, 1) for _ in range(2)])

    def forward(self, x):
        z = paddle.tanh(self.trunk(x))
        return [head(z) for head in self.heads]


distributed = paddle.distributed.get_world_size() > 1
if distributed:
    paddle.distributed.init_parallel_env()
paddle.seed(0)
net = TwoTasks()
loss_fn = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()},
                     method="kendall", task_types=["regression", "regression"])
# σ gets a group of its own: no weight decay and no clipping, whatever the optimizer.
opt = paddle.optimizer.AdamW(learning_rate=0.02, parameters=param_groups(net, loss_fn), weight_decay=0.01,
                             grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
if os.path.exists("plain.pdopt"):  # resume: the network, σ, and everyone's AdamW moments
    net.set_state_dict(paddle.load("plain.pdparams"))
    loss_fn.set_state_dict(paddle.load("plain.autoloss.pdparams"))
    opt.set_state_dict(paddle.load("plain.pdopt"))
    print("resumed sigmas", loss_fn.sigmas())
model = paddle.DataParallel(net) if distributed else net
sampler = paddle.io.DistributedBatchSampler(data, batch_size=32, shuffle=True)
loader = paddle.io.DataLoader(data, batch_sampler=sampler)

for epoch in range(20):
    sampler.set_epoch(epoch)
    for xb, y1b, y2b in loader:
        loss = loss_fn(*model(xb), y1b, y2b)
        loss.backward()
        sync_gradients(loss_fn)  # σ's gradient becomes its mean over ranks; nothing on one process
        opt.step()
        opt.clear_grad()
    loss_fn.end_epoch()  # dwa and stch close their epoch statistics here; a no-op for kendall
print("sigmas", loss_fn.sigmas())  # about {'y1': 2.0, 'y2': 0.3}

if paddle.distributed.get_rank() == 0:
    paddle.save(net.state_dict(), "plain.pdparams")
    paddle.save(loss_fn.state_dict(), "plain.autoloss.pdparams")  # σ
    paddle.save(opt.state_dict(), "plain.pdopt")  # σ's AdamW moments too
