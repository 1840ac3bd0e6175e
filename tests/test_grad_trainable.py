"""A shared layer frozen or unfrozen between steps (or between two fits of one model): the shared
set and the last shared layer follow the trainable parameters (float64 references of the rules)."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from test_grad_machinery import data

import hapi_autoloss
from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback

LR = 0.1


class Deep(paddle.nn.Layer):
    """A two-layer shared trunk (a stem, then a last shared layer) and two heads."""

    def __init__(self):
        super().__init__()
        self.trunk = paddle.nn.Sequential(paddle.nn.Linear(3, 5), paddle.nn.Tanh(), paddle.nn.Linear(5, 4),
                                          paddle.nn.Tanh())
        self.h1, self.h2 = paddle.nn.Linear(4, 1), paddle.nn.Linear(4, 1)

    def forward(self, x):
        z = self.trunk(x)
        return self.h1(z), self.h2(z)


def build(method, shared=None, **kw):
    paddle.seed(1)
    net = Deep()
    loss = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method=method,
                      shared=net.trunk if shared == "trunk" else None, **kw)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(LR, parameters=net.parameters()), loss)
    return net, loss, model


def freeze(layer, frozen):
    for p in layer.parameters():
        p.stop_gradient = frozen


def per_task(net, params, x, t1, t2):
    """Each task's gradient of ``params`` [2, n] in float64 (paddle.grad on a copy of the network)."""
    copy = Deep()
    copy.set_state_dict(net.state_dict())
    names = {id(p): n for n, p in net.named_parameters()}
    mine = dict(copy.named_parameters())
    chosen = [mine[names[id(p)]] for p in params]
    o1, o2 = copy(paddle.to_tensor(x))
    losses = [paddle.nn.functional.mse_loss(o, paddle.to_tensor(t)) for o, t in ((o1, t1), (o2, t2))]
    rows = [np.concatenate([g.numpy().astype(np.float64).ravel() for g in paddle.grad(li, chosen, retain_graph=True)])
            for li in losses] if chosen else [np.zeros(0)] * 2
    return np.stack(rows), [float(li) for li in losses]


def flat(params):
    return np.concatenate([p.numpy().astype(np.float64).ravel() for p in params])


@pytest.mark.parametrize("shared", [None, "trunk"])
def test_a_trunk_unfrozen_between_two_fits_is_combined_with_the_rest(shared):
    net, loss, model = build("mgda", shared)
    x, t1, t2 = data()
    dataset = paddle.io.TensorDataset([paddle.to_tensor(a) for a in (x, t1, t2)])
    fit = {"epochs": 1, "batch_size": len(x), "shuffle": False, "verbose": 0, "callbacks": [AutoWeightCallback()]}
    freeze(net.trunk[0], True)  # fit 1: the stem frozen, only the last trunk layer is shared
    model.fit(dataset, **fit)
    freeze(net.trunk[0], False)
    shared = list(net.trunk.parameters())
    rows, _ = per_task(net, shared, x, t1, t2)
    before = flat(shared)
    model.fit(dataset, **fit)  # one batch: one update
    step = (before - flat(shared)) / LR
    g1, g2 = rows
    w = np.clip((g2 @ g2 - g1 @ g2) / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0)  # min-norm point of [g1, g2]
    want = w * g1 + (1 - w) * g2
    assert 0.05 < w < 0.95 and g1 @ g2 < 0, w
    np.testing.assert_allclose(step, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(list(loss.weights().values()), [w, 1 - w], rtol=1e-4)


def test_gradnorm_follows_the_last_shared_layer_after_it_is_frozen():
    net, loss, model = build("gradnorm", alpha=1.5)
    hapi_autoloss.attach(model)
    x, t1, t2 = data()
    _, initial = per_task(net, [], x, t1, t2)  # L(0): the first step's losses
    model.train_batch([x], [t1, t2])
    freeze(net.trunk[2], True)  # the last shared layer frozen mid-run: trunk.0 is the last one now
    p = loss.weighting.p
    p0 = p.numpy().astype(np.float64)
    rows, losses = per_task(net, list(net.trunk[0].parameters()), x, t1, t2)
    model.train_batch([x], [t1, t2], update=False)
    # float64 GradNorm: G_i = w_i‖g_i‖, target mean(G)·r_i^α detached, loss Σ|G_i − target_i|, w = k·softmax(p)
    s = np.exp(p0 - p0.max()) / np.exp(p0 - p0.max()).sum()
    w, n = 2 * s, np.linalg.norm(rows, axis=1)
    ratio = np.array(losses) / np.array(initial)
    target = (w * n).mean() * (ratio / ratio.mean()) ** 1.5
    d_w = np.sign(w * n - target) * n
    want = 2 * (s * d_w - s * (s @ d_w))  # through w = k·softmax(p)
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(p.grad.numpy(), want, rtol=1e-4, atol=1e-6)
    model.train_batch([x], [t1, t2])
    assert np.abs(p.numpy() - p0).max() > 1e-5  # its weights still learn


def test_db_mtl_keeps_the_buffer_of_the_parameters_still_shared():
    net, loss, model = build("db_mtl")
    hapi_autoloss.attach(model)
    x, t1, t2 = data()
    beta, eps = 0.9, 1e-8
    rows, losses = per_task(net, list(net.trunk.parameters()), x, t1, t2)
    buf = (1 - beta) * rows / (np.array(losses)[:, None] + eps)  # ĝ = 0 at start
    model.train_batch([x], [t1, t2])
    np.testing.assert_allclose(loss.weighting.db_grads.numpy(), buf, rtol=1e-4, atol=1e-7)
    freeze(net.trunk[0], True)  # its 20 columns leave the front of the buffer
    rows, losses = per_task(net, list(net.trunk[2].parameters()), x, t1, t2)
    log_grads = rows / (np.array(losses)[:, None] + eps)
    want = log_grads + beta * (buf[:, 20:] - log_grads)
    model.train_batch([x], [t1, t2])
    np.testing.assert_allclose(loss.weighting.db_grads.numpy(), want, rtol=1e-4, atol=1e-7)


def db_model(net):
    """(loss, model): db_mtl on ``net``, SGD, attached."""
    loss = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method="db_mtl")
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(LR, parameters=net.parameters()), loss)
    hapi_autoloss.attach(model)
    return loss, model


def save_both(model, loss, tmp_path):
    """hapi's checkpoint, and the loss's state dict as a plain loop saves it: their path."""
    path = str(tmp_path / "ck")
    model.save(path)
    paddle.save(loss.state_dict(), path + ".loss")
    return path


def restore_loss(model, loss, path, via):
    """The loss's state from ``path``: by hapi's load_state, or a plain loop's state dict."""
    if via == "hapi":
        hapi_autoloss.load_state(model, path)
    else:
        loss.set_state_dict(paddle.load(path + ".loss"))


def _db_run(tmp_path, saved_frozen, resumed_frozen, via):
    """db_mtl: one step with ``saved_frozen`` frozen, then one with ``resumed_frozen`` frozen; with
    ``via``, a save after the first step and a load into a fresh model and loss (built with another
    seed, frozen as when saved) in between. The buffer and the parameters after the second step."""
    net, loss, model = build("db_mtl")
    hapi_autoloss.attach(model)
    x, t1, t2 = data()
    for p in saved_frozen(net):
        p.stop_gradient = True
    model.train_batch([x], [t1, t2])
    if via:
        path = save_both(model, loss, tmp_path)
        paddle.seed(7)
        net = Deep()
        loss, model = db_model(net)
        for p in saved_frozen(net):
            p.stop_gradient = True
        model.load(path)
        restore_loss(model, loss, path, via)
    for p in net.parameters():
        p.stop_gradient = False
    for p in resumed_frozen(net):
        p.stop_gradient = True
    rows, losses = per_task(net, [p for p in net.trunk.parameters() if not p.stop_gradient], x, t1, t2)
    model.train_batch([x], [t1, t2])
    return loss.weighting.db_grads.numpy(), flat(net.parameters()), rows / (np.array(losses)[:, None] + 1e-8)


@pytest.mark.parametrize("via", ["hapi", "state_dict"])
@pytest.mark.parametrize("change", ["unfreeze", "same count, other columns"])
def test_db_mtl_resumed_across_a_freeze_change_continues_exactly(tmp_path, via, change):
    """The buffer's columns are saved with it: after a load, the first step with another trainable
    set moves the buffer as the uninterrupted run does (not restarted at 0, nor used on other columns)."""
    if change == "unfreeze":  # saved: 24 columns (trunk.2); resumed: 44 (trunk.0's 20 new, in front)
        saved, resumed = (lambda n: n.trunk[0].parameters()), (lambda n: [])
    else:  # saved: trunk.2.weight (20 columns); resumed: trunk.0's weight and bias (20 columns)
        saved = lambda n: [*n.trunk[0].parameters(), n.trunk[2].bias]  # noqa: E731
        resumed = lambda n: n.trunk[2].parameters()  # noqa: E731
    buf, params, log_grads = _db_run(tmp_path, saved, resumed, None)
    buf_r, params_r, _ = _db_run(tmp_path, saved, resumed, via)
    np.testing.assert_array_equal(buf_r, buf)  # bit for bit
    np.testing.assert_array_equal(params_r, params)
    # float64 DB_MTL rule: ĝ ← (1 − β)·∇log L + β·ĝ, ĝ = 0 for a column newly shared
    net, _, _ = build("db_mtl")
    x, t1, t2 = data()
    first, losses = per_task(net, list(net.trunk[2].parameters()) if change == "unfreeze" else [net.trunk[2].weight],
                             x, t1, t2)
    kept = 0.1 * first / (np.array(losses)[:, None] + 1e-8)
    old = np.zeros_like(log_grads)
    if change == "unfreeze":
        old[:, 20:] = kept
    want = log_grads + 0.9 * (old - log_grads)
    assert np.abs(kept).max() > 1e-2
    np.testing.assert_allclose(buf, want, rtol=1e-4, atol=1e-7)
