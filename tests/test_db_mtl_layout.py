"""db_mtl's buffer keeps its columns by parameter: by identity in the process (a replaced layer's
columns start at 0), by structured name and size after a load (a network whose parameter order
differs resumes exactly), and loading takes the saved layout even into a loss that has run since."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from test_grad_machinery import data
from test_grad_trainable import LR, Deep, build, db_model, flat, freeze, per_task, restore_loss, save_both

import hapi_autoloss
from hapi_autoloss import AutoWeight


class Reordered(Deep):
    """Deep's parameters (same names), after an unused layer registered first: other positions."""

    def __init__(self, extra):
        paddle.nn.Layer.__init__(self)
        self.extra = paddle.nn.Linear(*extra)
        self.trunk = paddle.nn.Sequential(paddle.nn.Linear(3, 5), paddle.nn.Tanh(), paddle.nn.Linear(5, 4),
                                          paddle.nn.Tanh())
        self.h1, self.h2 = paddle.nn.Linear(4, 1), paddle.nn.Linear(4, 1)


class Square(paddle.nn.Layer):
    """Three shared 4×4 weights of one size; ``extra`` (unused) registered first shifts them."""

    def __init__(self, extra=False):
        super().__init__()
        if extra:
            self.extra = paddle.nn.Linear(4, 4, bias_attr=False)
        self.trunk = paddle.nn.Sequential(*[paddle.nn.Linear(4, 4, bias_attr=False) for _ in range(3)])
        self.h1, self.h2 = paddle.nn.Linear(4, 1), paddle.nn.Linear(4, 1)

    def forward(self, x):
        z = paddle.tanh(self.trunk(x))
        return self.h1(z), self.h2(z)


def _reorder_run(tmp_path, kind, via):
    """One step, (a save and a load into the reordered network,) two steps: buffer and parameters."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4 if kind == "square" else 3)).astype("float32")
    t1, t2 = (rng.normal(size=(8, 1)).astype("float32") for _ in range(2))
    paddle.seed(1)
    net = Square() if kind == "square" else Deep()
    loss, model = db_model(net)
    model.train_batch([x], [t1, t2])
    if via:
        path = save_both(model, loss, tmp_path)
        paddle.seed(7)
        net = Square(extra=True) if kind == "square" else Reordered((2, 2))
        loss, model = db_model(net)
        net.set_state_dict(paddle.load(path + ".pdparams"))
        restore_loss(model, loss, path, via)
    for _ in range(2):
        model.train_batch([x], [t1, t2])
    return loss.weighting.db_grads.numpy(), flat([p for n, p in net.named_parameters() if not n.startswith("extra")])


@pytest.mark.parametrize("via", ["hapi", "state_dict"])
@pytest.mark.parametrize("kind", ["other sizes", "square"])
def test_a_network_whose_parameter_order_differs_resumes_exactly(tmp_path, kind, via):
    """Columns keyed by position raised an IndexError (other sizes) or used the buffer on other
    parameters' columns (square: 0.112 off on the buffer); by structured name, bit for bit."""
    buf, params = _reorder_run(tmp_path, kind, None)
    buf_r, params_r = _reorder_run(tmp_path, kind, via)
    assert np.abs(buf).max() > 0.1
    np.testing.assert_array_equal(buf_r, buf)
    np.testing.assert_array_equal(params_r, params)


def test_a_layer_replaced_in_the_process_starts_its_columns_at_0():
    net, loss, model = build("db_mtl")
    hapi_autoloss.attach(model)
    x, t1, t2 = data()
    model.train_batch([x], [t1, t2])
    buf = loss.weighting.db_grads.numpy().astype(np.float64)
    assert np.abs(buf[:, :20]).max() > 1e-2
    paddle.seed(3)
    net.trunk[0] = paddle.nn.Linear(3, 5)  # fresh parameters, at the same names and positions
    model._optimizer = paddle.optimizer.SGD(LR, parameters=net.parameters())
    rows, losses = per_task(net, list(net.trunk.parameters()), x, t1, t2)
    model.train_batch([x], [t1, t2])
    # float64 DB_MTL rule (LibMTL): ĝ ← β·ĝ + (1 − β)·∇L/(L + ε); the new layer's ĝ is 0, as at step 1
    log_grads = rows / (np.array(losses)[:, None] + 1e-8)
    old = np.concatenate([np.zeros((2, 20)), buf[:, 20:]], axis=1)
    want = 0.9 * old + 0.1 * log_grads
    np.testing.assert_allclose(loss.weighting.db_grads.numpy(), want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("via", ["hapi", "state_dict"])
def test_a_checkpoint_of_another_layout_loads_into_the_same_loss(tmp_path, via):
    """Saved with trunk.0 frozen (24 columns), loaded into the same loss after it ran on 44: was
    refused (hapi: 'has shape [4, 2] here') or skipped with a warning and trained on (0.378 off)."""
    net, loss, model = build("db_mtl")
    hapi_autoloss.attach(model)
    x, t1, t2 = data()
    freeze(net.trunk[0], True)
    model.train_batch([x], [t1, t2])
    path = str(tmp_path / "ck")
    model.save(path)
    paddle.save(loss.state_dict(), path + ".loss")
    freeze(net.trunk[0], False)
    model.train_batch([x], [t1, t2])
    want_buf, want_params = loss.weighting.db_grads.numpy().copy(), flat(net.parameters())
    model.train_batch([x], [t1, t2])  # one more step, then back to the checkpoint
    model.load(path)
    if via == "hapi":
        hapi_autoloss.load_state(model, path)
    else:
        loss.set_state_dict(paddle.load(path + ".loss"))
    assert list(loss.weighting.db_grads.shape) == [2, 24]
    model.train_batch([x], [t1, t2])
    np.testing.assert_array_equal(loss.weighting.db_grads.numpy(), want_buf)
    np.testing.assert_array_equal(flat(net.parameters()), want_params)


class Towers(paddle.nn.Layer):
    """Two towers, no shared trunk; tower a's LayerNorm frozen (pretrained)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = paddle.nn.Linear(3, 1), paddle.nn.Linear(3, 1)
        self.norm = paddle.nn.LayerNorm(3)

    def forward(self, x):
        return self.a(self.norm(x)), self.b(x)


def test_frozen_parameters_that_need_not_be_the_trunk_get_both_fixes():
    net = Towers()
    freeze(net.norm, True)
    _, model = db_model(net)
    x, t1, t2 = data()
    with pytest.raises(ValueError) as info:
        model.train_batch([x], [t1, t2])
    error = str(info.value)
    assert "the network's parameters norm.weight, norm.bias are frozen (stop_gradient=True)" in error, error
    assert "with the shared trunk frozen" not in error
    assert error.endswith("Fix: if they are the shared trunk, unfreeze them (stop_gradient=False), or use a "
                          "loss-level method (e.g. method='kendall') while it is frozen; otherwise pass "
                          "shared=<the trunk Layer the network uses>, or use a loss-level method."), error


@pytest.mark.parametrize("wrap_save, wrap_load", [(True, False), (False, True)])
def test_a_network_bound_through_data_parallel_on_one_side_resumes_exactly(wrap_save, wrap_load):
    """A plain loop that gives param_groups paddle.DataParallel(net) (a 2-GPU run resumed on one):
    its names carry '_layers.', so keyed by name the saved history matched nothing and restarted."""
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.normal(size=(8, 3)).astype("float32"))
    t1, t2 = (paddle.to_tensor(s * rng.normal(size=(8, 1)).astype("float32")) for s in (1, 3))

    def built(wrap):
        paddle.seed(1)
        net = Deep()
        model = paddle.DataParallel(net) if wrap else net
        loss = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method="db_mtl")
        return net, model, loss, paddle.optimizer.SGD(LR, parameters=hapi_autoloss.param_groups(model, loss))

    def steps(model, loss, opt, n):
        for _ in range(n):
            loss(*model(x), t1, t2).backward()
            opt.step()
            opt.clear_grad()

    net, model, loss, opt = built(wrap_save)
    steps(model, loss, opt, 4)
    want, want_net = loss.weighting.db_grads.numpy(), flat(net.parameters())
    net, model, loss, opt = built(wrap_save)
    steps(model, loss, opt, 2)
    saved_net, saved_loss = net.state_dict(), loss.state_dict()
    net, model, loss, opt = built(wrap_load)
    net.set_state_dict(saved_net)
    loss.set_state_dict(saved_loss)
    steps(model, loss, opt, 2)
    np.testing.assert_array_equal(loss.weighting.db_grads.numpy(), want)
    np.testing.assert_array_equal(flat(net.parameters()), want_net)


def test_a_state_dict_of_another_number_of_tasks_is_refused_changing_nothing():
    """Its [3, n] history was resized into a 2-task loss and dropped at the next step, with no word."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    t = [rng.normal(size=(8, 1)).astype("float32") for _ in range(3)]

    class Three(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.trunk = paddle.nn.Linear(3, 4)
            self.heads = paddle.nn.LayerList([paddle.nn.Linear(4, 1) for _ in range(3)])

        def forward(self, x):
            z = paddle.tanh(self.trunk(x))
            return tuple(h(z) for h in self.heads)

    three = AutoWeight([paddle.nn.MSELoss()] * 3, method="db_mtl")
    model = paddle.Model(Three())
    model.prepare(paddle.optimizer.SGD(LR, parameters=model.parameters()), three)
    hapi_autoloss.attach(model)
    model.train_batch([x], t)
    for stepped in (True, False):  # a loss before its first step ([2, 0] history) too: the usual resume
        loss, two = db_model(Deep())
        if stepped:
            two.train_batch([x[:, :3]], t[:2])
        before = {k: v.numpy().copy() for k, v in loss.state_dict().items()}
        here = "44" if stepped else "0"
        with pytest.raises(ValueError, match=rf"weighting\.db_grads has shape \[3, 16\], this loss.s \[2, {here}\].*"
                                             "Fix: build the same loss"):
            loss.set_state_dict(three.state_dict())
        for k, v in loss.state_dict().items():
            np.testing.assert_array_equal(v.numpy(), before[k])
