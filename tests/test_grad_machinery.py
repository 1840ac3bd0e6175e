"""Per-task gradients inside AutoWeight's forward: exact against a float64 reference.

The network: z = tanh(x·W + b) shared, two linear heads, MSE per task, so every gradient
has a closed form in NumPy float64. The methods here are defined in the test (a Gram rule
and a stateful one), so the machinery is tested apart from any published rule.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

import hapi_autoloss
from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback
from hapi_autoloss.weighting.gradient import GradWeighting


class UnitNorm(GradWeighting):
    """α_i = 1/‖g_i‖, counting its calls (a method's state must not move on a skipped step)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def alphas(self, gram, losses):
        self.calls += 1
        return 1.0 / np.sqrt(np.maximum(np.diag(gram), 1e-20))


class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.trunk = paddle.nn.Sequential(paddle.nn.Linear(3, 5), paddle.nn.Tanh())
        self.h1 = paddle.nn.Linear(5, 1)
        self.h2 = paddle.nn.Linear(5, 1)

    def forward(self, x):
        z = self.trunk(x)
        return self.h1(z), self.h2(z)


def data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype("float32")
    return x, (x[:, :1] + 0.3).astype("float32"), (-8.0 * x[:, 1:2]).astype("float32")


def reference(net, x, t1, t2, rep):
    """float64: each task's gradients, α by UnitNorm's rule, and every parameter's combined gradient."""
    W, b = (p.numpy().astype(np.float64) for p in net.trunk[0].parameters())
    heads = [(h.weight.numpy().astype(np.float64), h.bias.numpy().astype(np.float64)) for h in (net.h1, net.h2)]
    x = x.astype(np.float64)
    z = np.tanh(x @ W + b)
    per_task = []
    for (w, c), t in zip(heads, (t1, t2)):
        dy = 2 * (z @ w + c - t) / len(x)
        dz = dy @ w.T
        da = dz * (1 - z**2)
        per_task.append({"W": x.T @ da, "b": da.sum(0), "w": z.T @ dy, "c": dy.sum(0), "z": dz})
    rows = [np.concatenate([g["z"].ravel()] if rep else [g["W"].ravel(), g["b"].ravel()]) for g in per_task]
    alpha = 1 / np.linalg.norm(rows, axis=1)
    out = {"W": sum(a * g["W"] for a, g in zip(alpha, per_task)), "b": sum(a * g["b"] for a, g in zip(alpha, per_task))}
    for i, g in enumerate(per_task):  # task-specific: their own task's plain gradient
        out[f"w{i}"], out[f"c{i}"] = g["w"], g["c"]
    return alpha, out


def build(method, rep=False, **kw):
    paddle.seed(1)
    net = Net()
    loss = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method=method,
                      shared=net.trunk if rep else kw.pop("shared", None), rep_grad=rep, **kw)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(0.1, parameters=net.parameters()), loss)
    return net, loss, model


def grads_of(net):
    (W, b), h1, h2 = net.trunk[0].parameters(), net.h1, net.h2
    return {"W": W.grad, "b": b.grad, "w0": h1.weight.grad, "c0": h1.bias.grad, "w1": h2.weight.grad,
            "c1": h2.bias.grad}


@pytest.mark.parametrize("rep", [False, True], ids=["parameters", "representation"])
def test_combined_gradient_equals_the_float64_rule(rep):
    net, loss, model = build(UnitNorm(), rep)
    hapi_autoloss.attach(model)
    x, t1, t2 = data()
    alpha, want = reference(net, x, t1, t2, rep)
    (logged,) = model.train_batch([x], [t1, t2], update=False)
    for key, grad in grads_of(net).items():
        np.testing.assert_allclose(grad.numpy(), want[key].reshape(grad.shape), rtol=2e-5, atol=1e-7, err_msg=key)
    np.testing.assert_allclose(list(loss.weights().values()), alpha, rtol=1e-5)
    # The value hapi logs is the plain sum of the task losses.
    np.testing.assert_allclose(float(np.ravel(logged)[0]), sum(loss.last_losses().values()), rtol=1e-6)
    # The weighting changes the update: α is far from 1 here (task 2's gradient is ~8× larger).
    assert alpha[1] < 0.5 * alpha[0]


def test_shared_parameters_are_found_and_an_update_uses_them():
    net, loss, model = build(UnitNorm())
    hapi_autoloss.attach(model)
    x, t1, t2 = data()
    before = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    _, want = reference(net, x, t1, t2, rep=False)
    model.train_batch([x], [t1, t2])
    after = net.state_dict()
    np.testing.assert_allclose(after["trunk.0.weight"].numpy(), before["trunk.0.weight"] - 0.1 * want["W"], rtol=1e-5)
    np.testing.assert_allclose(after["h2.bias"].numpy(), before["h2.bias"] - 0.1 * want["c1"], rtol=1e-5)
    assert {id(p) for p in net.trunk.parameters()} == loss._pertask._shared_ids


def test_a_given_shared_list_is_used_as_given():
    paddle.seed(1)
    net = Net()
    only_w = [net.trunk[0].weight]
    loss = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method=UnitNorm(), shared=only_w)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(0.1, parameters=net.parameters()), loss)
    hapi_autoloss.attach(model)
    x, t1, t2 = data()
    model.train_batch([x], [t1, t2], update=False)
    # W alone is combined (its own α); b, reached by both tasks but not listed, gets the plain sum.
    per_w = [paddle.grad(loss_i, [net.trunk[0].weight], retain_graph=True)[0].numpy().astype(np.float64)
             for loss_i in _task_losses(net, x, t1, t2)]
    alpha = 1 / np.array([np.linalg.norm(g) for g in per_w])
    np.testing.assert_allclose(net.trunk[0].weight.grad.numpy(), alpha[0] * per_w[0] + alpha[1] * per_w[1], rtol=2e-5)
    plain_b = sum(paddle.grad(loss_i, [net.trunk[0].bias], retain_graph=True)[0].numpy()
                  for loss_i in _task_losses(net, x, t1, t2))
    np.testing.assert_allclose(net.trunk[0].bias.grad.numpy(), plain_b, rtol=2e-5)


def _task_losses(net, x, t1, t2):
    o1, o2 = net(paddle.to_tensor(x))
    mse = paddle.nn.functional.mse_loss
    return [mse(o1, paddle.to_tensor(t1)), mse(o2, paddle.to_tensor(t2))]


def test_evaluation_computes_no_task_gradient():
    _net, loss, model = build(UnitNorm())
    hapi_autoloss.attach(model)
    x, t1, t2 = data()
    model.train_batch([x], [t1, t2])
    calls = loss.weighting.calls
    (value,) = model.eval_batch([x], [t1, t2])
    assert loss.weighting.calls == calls
    np.testing.assert_allclose(float(np.ravel(value)[0]), sum(loss.last_losses().values()), rtol=1e-6)


class TwoNets(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.a, self.b = paddle.nn.Linear(3, 1), paddle.nn.Linear(3, 1)

    def forward(self, x):
        return self.a(x), self.b(x)


def test_nothing_shared_is_refused_before_any_update():
    paddle.seed(0)
    net = TwoNets()
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(0.1, parameters=net.parameters()),
                  AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method=UnitNorm()))
    hapi_autoloss.attach(model)
    before = net.a.weight.numpy().copy()
    x, t1, t2 = data()
    with pytest.raises(ValueError, match="No network parameter is reached by more than one task"):
        model.train_batch([x], [t1, t2])
    np.testing.assert_array_equal(net.a.weight.numpy(), before)


def test_bad_options_name_the_fix():
    with pytest.raises(ValueError, match="shared=/rep_grad= apply to gradient-level methods"):
        AutoWeight([paddle.nn.MSELoss()] * 2, method="kendall", task_types=["regression"] * 2, shared=[])
    with pytest.raises(ValueError, match="rep_grad=True differentiates with respect to the shared representation"):
        AutoWeight([paddle.nn.MSELoss()] * 2, method=UnitNorm(), rep_grad=True)
    with pytest.raises(TypeError, match=r"shared must be a paddle\.nn\.Layer or a list"):
        AutoWeight([paddle.nn.MSELoss()] * 2, method=UnitNorm(), shared="trunk")

    class NoRep(UnitNorm):
        rep_grad = False

    with pytest.raises(ValueError, match="has no representation mode"):
        AutoWeight([paddle.nn.MSELoss()] * 2, method=NoRep(), shared=paddle.nn.Linear(2, 2), rep_grad=True)


def test_a_loss_without_its_network_says_how_to_give_it():
    net = Net()
    loss = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method=UnitNorm())
    x, t1, t2 = data()
    with pytest.raises(RuntimeError, match="does not know the network"):
        loss(*net(paddle.to_tensor(x)), paddle.to_tensor(t1), paddle.to_tensor(t2))


def test_plain_loop_with_param_groups():
    net, loss, _ = build(UnitNorm())
    opt = paddle.optimizer.SGD(0.1, parameters=hapi_autoloss.param_groups(net, loss))
    x, t1, t2 = data()
    _, want = reference(net, x, t1, t2, rep=False)
    total = loss(*net(paddle.to_tensor(x)), paddle.to_tensor(t1), paddle.to_tensor(t2))
    total.backward()
    np.testing.assert_allclose(net.trunk[0].weight.grad.numpy(), want["W"], rtol=2e-5)
    opt.step()


class NaNOnce(paddle.io.Dataset):
    def __init__(self):
        self.x, self.t1, self.t2 = data(32)
        self.t1[9] = np.nan  # batch 1 of 4 (batch size 8)

    def __getitem__(self, i):
        return self.x[i], self.t1[i], self.t2[i]

    def __len__(self):
        return 32


def test_a_non_finite_step_is_skipped_and_the_method_keeps_its_state():
    net, loss, model = build(UnitNorm())
    snapshots = []

    class Snap(paddle.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            snapshots.append((net.trunk[0].weight.numpy().copy(), loss.weighting.calls))

    callback = AutoWeightCallback(on_nonfinite="skip")
    model.fit(NaNOnce(), epochs=1, batch_size=8, shuffle=False, verbose=0, callbacks=[callback, Snap()])
    assert callback.skipped == 1
    np.testing.assert_array_equal(snapshots[1][0], snapshots[0][0])  # the NaN batch updated nothing
    assert not np.array_equal(snapshots[2][0], snapshots[1][0])
    assert [calls for _, calls in snapshots] == [1, 1, 2, 3]  # α was not computed from the NaN batch


def test_a_non_finite_step_raises_by_default():
    _net, _loss, model = build(UnitNorm())
    with pytest.raises(FloatingPointError):
        model.fit(NaNOnce(), epochs=1, batch_size=8, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])


@pytest.mark.parametrize("rep", [False, True], ids=["parameters", "representation"])
def test_a_network_of_another_dtype_keeps_it(rep):
    """float64 here (the CPU has no float16 matmul): gradients come back in the parameters' dtype,
    combined in float32."""
    net, _loss, model = build(UnitNorm(), rep)
    net.to(dtype="float64")
    hapi_autoloss.attach(model)
    x, t1, t2 = (a.astype("float64") for a in data())
    _alpha, want = reference(net, x, t1, t2, rep)
    model.train_batch([x], [t1, t2], update=False)
    for key, grad in grads_of(net).items():
        assert grad.dtype == paddle.float64, key
        np.testing.assert_allclose(grad.numpy(), want[key].reshape(grad.shape), rtol=2e-5, atol=1e-7, err_msg=key)


def test_the_weights_each_step_used_reach_tensorboard(tmp_path):
    from helpers import tb_read

    from hapi_autoloss.callbacks import TensorBoardExport

    _net, loss, model = build(UnitNorm())
    used = []

    class Record(paddle.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            used.append(list(loss.used()[1].values()))

    x, t1, t2 = data(32)
    model.fit(paddle.io.TensorDataset([paddle.to_tensor(a) for a in (x, t1, t2)]), epochs=1, batch_size=8,
              shuffle=False, verbose=0, callbacks=[AutoWeightCallback(), TensorBoardExport(str(tmp_path)), Record()])
    tags = tb_read(tmp_path)
    for i, task in enumerate(loss.task_names):
        points = tags[f"autoloss/weight/{task}"]
        assert [s for s, _ in points] == [1, 2, 3, 4]
        np.testing.assert_allclose([v for _, v in points], [u[i] for u in used], rtol=1e-6)
    assert "autoloss/sigma/task0" not in tags  # no σ: the method has none
    assert used[0][1] < 0.5 * used[0][0]


def test_alphas_of_the_wrong_length_are_refused_with_the_fix():
    """A user's gradient-level method returning one α for two tasks failed in a raw matmul."""
    from hapi_autoloss.weighting.gradient import GradWeighting

    class OneAlpha(GradWeighting):
        name = "one_alpha_test"

        def alphas(self, gram, losses):
            return np.ones(1)

    method = OneAlpha()
    method.bind(["a", "b"], [None, None])
    with pytest.raises(ValueError, match=r"OneAlpha.alphas returned 1 value\(s\) for 2 tasks\. Fix: return one"):
        method.combine_gram(paddle.eye(2), paddle.ones([2]))
