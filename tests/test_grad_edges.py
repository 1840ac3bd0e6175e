"""Gradient-level methods at the edges: AMP's loss scale and its overflow, a non-finite
task-specific gradient, parameters inside the loss functions, a stem before the shared
Layer, bad shared= values, zero losses."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from test_grad_machinery import Net, UnitNorm, build, data, grads_of, reference

import hapi_autoloss
from hapi_autoloss import AutoWeight
from hapi_autoloss.weighting.gradient import GradWeighting


class Ones(GradWeighting):
    """α = 1: the combination is the plain sum, so every gradient must equal Σ∇L."""

    def alphas(self, gram, losses):
        return np.ones(len(losses))


def forward(net, loss, x, t1, t2):
    return loss(*net(paddle.to_tensor(x)), paddle.to_tensor(t1), paddle.to_tensor(t2))


def test_amp_loss_scale_is_undone_exactly():
    net, loss, _ = build(UnitNorm())
    loss.set_network(net, lambda: paddle.to_tensor(1024.0))
    x, t1, t2 = data()
    _, want = reference(net, x, t1, t2, rep=False)
    forward(net, loss, x, t1, t2).backward()  # hapi would scale this backward; the gradient is then 1×
    for key, grad in grads_of(net).items():
        np.testing.assert_allclose(grad.numpy(), want[key].reshape(grad.shape), rtol=2e-5, atol=1e-7, err_msg=key)


def test_an_amp_overflow_gives_the_scaler_inf_gradients_and_a_finite_loss():
    net, loss, _ = build(UnitNorm())
    loss.set_network(net, lambda: paddle.to_tensor(3e38))  # the scaled gradients overflow float32
    x, t1, t2 = data()
    total = forward(net, loss, x, t1, t2)
    np.testing.assert_allclose(float(total), sum(loss.last_losses().values()), rtol=1e-6)
    total.backward()
    assert all(np.isinf(g.numpy()).all() for g in grads_of(net).values())  # GradScaler: skip, lower the scale
    assert loss.weighting.calls == 0  # the method did not see the step


class SqrtOfZero(paddle.nn.Layer):
    """MSE + 0·√q with q = 0: a finite loss whose own parameter's gradient is NaN (0·inf)."""

    def __init__(self):
        super().__init__()
        self.q = self.create_parameter([1], default_initializer=paddle.nn.initializer.Constant(0.0))

    def forward(self, out, label):
        return paddle.nn.functional.mse_loss(out, label) + 0.0 * paddle.sqrt(self.q).sum()


def test_a_non_finite_task_specific_gradient_skips_the_step_before_the_method_sees_it():
    paddle.seed(1)
    net = Net()
    loss = AutoWeight([SqrtOfZero(), paddle.nn.MSELoss()], method=UnitNorm())
    loss.set_network(net)
    x, t1, t2 = data()
    total = forward(net, loss, x, t1, t2)
    assert np.isnan(float(total))  # AutoWeightCallback's on_nonfinite policy sees it
    assert loss.weighting.calls == 0


class Scaled(paddle.nn.Layer):
    """MSE·e^q: a loss function with a trainable parameter of its own."""

    def __init__(self):
        super().__init__()
        self.q = self.create_parameter([1], default_initializer=paddle.nn.initializer.Constant(0.5))

    def forward(self, out, label):
        return paddle.nn.functional.mse_loss(out, label) * paddle.exp(self.q).sum()


def test_parameters_inside_the_loss_functions_get_their_task_gradient():
    paddle.seed(1)
    net, scaled = Net(), Scaled()
    loss = AutoWeight([scaled, paddle.nn.MSELoss()], method=UnitNorm())
    loss.set_network(net)
    x, t1, t2 = data()
    forward(net, loss, x, t1, t2).backward()
    out = net(paddle.to_tensor(x))[0]
    mse = float(paddle.nn.functional.mse_loss(out, paddle.to_tensor(t1)))
    np.testing.assert_allclose(scaled.q.grad.numpy(), [mse * np.exp(0.5)], rtol=1e-5)  # d(MSE·e^q)/dq


class StemNet(Net):
    def __init__(self):
        super().__init__()
        self.stem = paddle.nn.Linear(3, 3)

    def forward(self, x):
        return super().forward(self.stem(x))


def test_rep_mode_trains_a_stem_before_the_shared_layer_once():
    paddle.seed(2)
    net = StemNet()
    loss = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method=Ones(), shared=net.trunk, rep_grad=True)
    loss.set_network(net)
    x, t1, t2 = data()
    o1, o2 = net(paddle.to_tensor(x))
    mse = paddle.nn.functional.mse_loss
    params = list(net.parameters())
    want = paddle.grad(mse(o1, paddle.to_tensor(t1)) + mse(o2, paddle.to_tensor(t2)), params)
    loss._pertask.forget()  # the reference forward ran the trunk too
    forward(net, loss, x, t1, t2).backward()
    for p, w in zip(params, want):
        np.testing.assert_allclose(p.grad.numpy(), w.numpy(), rtol=1e-5, atol=1e-7, err_msg=p.name)


def test_a_failed_forward_does_not_leave_its_representation_to_the_next():
    net, loss, _ = build(UnitNorm(), rep=True)
    loss.set_network(net)
    x, t1, t2 = data()
    with pytest.raises(ValueError, match="expects 4 tensors"):
        loss(*net(paddle.to_tensor(x)), paddle.to_tensor(t1))  # a label missing
    forward(net, loss, x, t1, t2).backward()  # not "ran twice"
    assert loss.weighting.calls == 1


def test_bad_shared_values_are_named():
    net = Net()
    with pytest.raises(TypeError, match="shared holds a Sequential, not parameters"):
        AutoWeight([paddle.nn.MSELoss()] * 2, method=UnitNorm(), shared=[net.trunk])
    outsider = paddle.nn.Linear(3, 5)
    loss = AutoWeight([paddle.nn.MSELoss()] * 2, method=UnitNorm(), shared=outsider)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(0.1, parameters=net.parameters()), loss)
    hapi_autoloss.attach(model)
    before = net.trunk[0].weight.numpy().copy()
    x, t1, t2 = data()
    with pytest.raises(ValueError, match="None of the parameters given as shared= is a trainable parameter"):
        model.train_batch([x], [t1, t2])
    np.testing.assert_array_equal(net.trunk[0].weight.numpy(), before)


def test_gradnorm_looks_at_the_last_shared_layer_however_shared_is_given():
    slices = []
    for shared in (None, "layer", "list"):
        paddle.seed(1)
        net = Net()
        given = {None: None, "layer": net.trunk, "list": net.trunk.parameters()}[shared]
        loss = AutoWeight([paddle.nn.MSELoss()] * 2, method="gradnorm", shared=given)
        loss.set_network(net)
        forward(net, loss, *data()).backward()
        slices.append(loss.weighting.last_shared)
    assert slices[0] == slices[1] == slices[2] == slice(0, 15 + 5)  # trunk.0: weight 3×5 and bias 5


def test_gradnorm_with_every_loss_zero_stays_finite():
    net, loss, _ = build("gradnorm")
    loss.set_network(net)
    x, _, _ = data()
    with paddle.no_grad():
        o1, o2 = net(paddle.to_tensor(x))
    total = loss(*net(paddle.to_tensor(x)), o1, o2)  # labels = outputs: every loss is 0
    total.backward()
    assert np.isfinite(float(total)) and np.isfinite(loss.weighting.p.grad.numpy()).all()


@pytest.mark.parametrize("method", ["mgda", "pcgrad", "cagrad", "nash_mtl", "db_mtl", "gradnorm", "imtl"])
def test_one_task_is_refused_at_construction(method):
    """It was refused at the first training step only, as 'no shared parameter' with a shared= fix."""
    with pytest.raises(ValueError, match=rf"method='{method}' combines the gradients of several tasks, but the "
                                         r"loss has one task \('y1' only\), so there is nothing to combine\. "
                                         r"Fix: method='equal'"):
        AutoWeight({"y1": paddle.nn.MSELoss()}, method=method)
