"""Gradient-level methods under every Paddle optimizer, flat and grouped, with decay and
clipping: ``fit`` makes exactly the update of a hand-written loop that computes each task's
gradient itself, combines the shared ones, and steps the network under the plain optimizer
and the method's own parameter under a second instance with no decay and no clip."""

import numpy as np
import paddle
import pytest
from helpers import X_SPEC, Y_SPECS, TwoTaskData, TwoTaskNet
from test_optimizers import BATCH, EPOCHS, FAMILY, build_optimizer, network_params

from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback
from hapi_autoloss.weighting.gradient import GradWeighting

DATA = TwoTaskData(96)


class Tracked(GradWeighting):
    """α_i = 1/‖g_i‖, and a learned per-task parameter t pulled to the task losses
    (method_loss Σ (t − L)²), so the optimizer trains a method parameter too."""

    def bind(self, tasks, task_types):
        super().bind(tasks, task_types)
        self.t = self.create_parameter([self.n], default_initializer=paddle.nn.initializer.Constant(0.0))

    def alphas(self, gram, losses):
        return 1.0 / np.sqrt(np.maximum(np.diag(gram), 1e-20))

    def method_loss(self, grads, losses):
        return ((self.t - losses) ** 2).sum()


def losses_of(net, x, y1, y2):
    o1, o2 = net(x)
    return [paddle.nn.functional.mse_loss(o1, y1), paddle.nn.functional.mse_loss(o2, y2)]


def reference(name, grouped, decay=True):
    paddle.seed(0)
    net, method = TwoTaskNet(), Tracked()
    method.bind(["task0", "task1"], [None, None])
    net_opt = build_optimizer(name, network_params(net, grouped, name, decay), decay=decay)
    t_opt = build_optimizer(name, [method.t], clip=False, decay=False)
    trunk = list(net.trunk.parameters())
    for _ in range(EPOCHS):
        for x, y1, y2 in DATA.batches(BATCH):
            per_task = [paddle.grad(loss, list(net.parameters()), retain_graph=True, allow_unused=True)
                        for loss in losses_of(net, x, y1, y2)]
            values = np.array([float(v) for v in losses_of(net, x, y1, y2)])
            norms = [np.sqrt(sum(float((g[j] ** 2).sum()) for j in range(len(trunk)))) for g in per_task]
            for j, p in enumerate(net.parameters()):
                if j < len(trunk):
                    p.grad = sum(g[j] / n for g, n in zip(per_task, norms))
                else:
                    p.grad = sum(g[j] for g in per_task if g[j] is not None)
            method.t.grad = paddle.to_tensor(2 * (method.t.numpy() - values), dtype="float32")
            for opt in (net_opt, t_opt):
                opt.step()
                opt.clear_grad()
    return method.t.numpy().copy(), [p.numpy().copy() for p in net.parameters()]


def train_with_fit(name, grouped, decay=True):
    paddle.seed(0)
    net = TwoTaskNet()
    loss = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method=Tracked())
    model = paddle.Model(net, inputs=X_SPEC, labels=Y_SPECS)
    model.prepare(build_optimizer(name, network_params(net, grouped, name, decay), decay=decay), loss)
    model.fit(DATA, epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
    return loss.weighting.t.numpy().copy(), [p.numpy().copy() for p in net.parameters()]


@pytest.mark.parametrize("grouped", [False, True], ids=["flat", "groups"])
@pytest.mark.parametrize("name", FAMILY)
def test_fit_follows_the_hand_written_loop(name, grouped):
    t, weights = train_with_fit(name, grouped)
    ref_t, ref_weights = reference(name, grouped)
    assert np.abs(t).max() > 1e-3, f"the method's parameter did not move under {name}"
    np.testing.assert_allclose(t, ref_t, rtol=1e-5, atol=1e-6)
    for got, want in zip(weights, ref_weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
