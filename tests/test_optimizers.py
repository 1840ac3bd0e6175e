"""Every Paddle optimizer, flat and grouped, with decay and clipping: σ trains inside fit
exactly like a hand-written loop that gives σ no decay and no clip, and the network's
update is exactly the plain optimizer's."""

import numpy as np
import paddle
import pytest
from helpers import X_SPEC, Y_SPECS, TwoTaskData, TwoTaskNet, kendall_loss

from hapi_autoloss.callbacks import AutoWeightCallback

DATA = TwoTaskData(96)
LR, EPOCHS, BATCH = 0.05, 2, 16
FAMILY = ["SGD", "Momentum", "Adam", "AdamW", "Adamax", "Adagrad", "Adadelta", "RMSProp", "Lamb"]


def decay_of(name, amount):
    """Decay as each optimizer takes it: coupled L2, AdamW's decoupled, Lamb's own."""
    if name == "Lamb":
        return {"lamb_weight_decay": amount}
    return {"weight_decay": amount}


def network_params(net, grouped, name, decay=True):
    """The user's layout: a flat list, or a backbone group at half lr with its own decay."""
    if not grouped:
        return net.parameters()
    return [{"params": net.trunk.parameters(), "learning_rate": 0.5, **(decay_of(name, 0.1) if decay else {})},
            {"params": net.h1.parameters() + net.h2.parameters()}]


def build_optimizer(name, params, clip=True, decay=True):
    cls = getattr(paddle.optimizer, name)
    # No decay: none given to coupled ones (regularization None); AdamW and Lamb decay by 0.01 unless told.
    kwargs = decay_of(name, 0.3) if decay else (decay_of(name, 0.0) if name in ("AdamW", "Lamb") else {})
    if clip:
        kwargs["grad_clip"] = paddle.nn.ClipGradByGlobalNorm(0.05)
    return cls(learning_rate=LR, parameters=params, **kwargs)


def reference(name, grouped, sigma_joins_clip=False, decay=True):
    """A hand-written loop: the network under the plain optimizer, σ under a second
    instance of the same class with no decay and no clip (the library's rule)."""
    paddle.seed(0)
    net, loss = TwoTaskNet(), kendall_loss()
    net_opt = build_optimizer(name, network_params(net, grouped, name, decay), decay=decay)
    if sigma_joins_clip:  # what a naive flat injection does: σ inside the network's global norm
        net_opt = build_optimizer(name, [*net.parameters(), *loss.parameters()])
        sigma_opt = None
    else:
        sigma_opt = build_optimizer(name, loss.parameters(), clip=False, decay=False)
    for _ in range(EPOCHS):
        for x, y1, y2 in DATA.batches(BATCH):
            loss(*net(x), y1, y2).backward()
            for opt in (net_opt, sigma_opt):
                if opt is not None:
                    opt.step()
                    opt.clear_grad()
    return loss.s.numpy().copy(), [p.numpy().copy() for p in net.parameters()]


def train_with_fit(name, grouped, decay=True):
    paddle.seed(0)
    net, loss = TwoTaskNet(), kendall_loss()
    model = paddle.Model(net, inputs=X_SPEC, labels=Y_SPECS)
    model.prepare(build_optimizer(name, network_params(net, grouped, name, decay), decay=decay), loss)
    model.fit(DATA, epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
    return loss.s.numpy().copy(), [p.numpy().copy() for p in net.parameters()], model


@pytest.mark.parametrize("grouped", [False, True], ids=["flat", "groups"])
@pytest.mark.parametrize("name", FAMILY)
def test_sigma_and_network_follow_the_reference_loop(name, grouped):
    s, weights, model = train_with_fit(name, grouped)
    ref_s, ref_weights = reference(name, grouped)
    assert np.abs(s).max() > 1e-4, f"σ did not move under {name}"
    np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-7)
    for got, want in zip(weights, ref_weights):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # σ is in the optimizer exactly once, without decay.
    opt = model._optimizer
    owned = [p for g in opt._param_groups for p in g["params"]] if grouped else opt._parameter_list
    assert sum(p is model._loss.s for p in owned) == 1


@pytest.mark.parametrize("name", ["Adam", "SGD", "Lamb"])
def test_the_reference_can_tell_a_clipped_or_decayed_sigma(name):
    """The comparison above fails for the naive ways: σ inside the network's clip norm."""
    ref_s, ref_w = reference(name, grouped=False)
    naive_s, naive_w = reference(name, grouped=False, sigma_joins_clip=True)
    assert np.abs(naive_s - ref_s).max() > 1e-4
    assert max(np.abs(a - b).max() for a, b in zip(naive_w, ref_w)) > 1e-5


def test_a_group_paddle_cannot_step_is_refused_before_any_update():
    """Paddle's own _add_param_group on a built Adam leaves 'grad_clip' out; stepping it
    fails after the groups before it were updated. Refused at train begin instead."""
    paddle.seed(0)
    net, loss = TwoTaskNet(), kendall_loss()
    opt = paddle.optimizer.Adam(LR, parameters=[{"params": net.trunk.parameters()}])
    opt._add_param_group({"params": net.h1.parameters() + net.h2.parameters(), "weight_decay": 0.0})
    model = paddle.Model(net, inputs=X_SPEC, labels=Y_SPECS)
    model.prepare(opt, loss)
    before = [p.numpy().copy() for p in net.parameters()]
    with pytest.raises(TypeError, match=r"param group 1 lacks \['grad_clip'\].*Fix: give every group"):
        model.fit(DATA, epochs=1, batch_size=BATCH, verbose=0, callbacks=[AutoWeightCallback()])
    for got, want in zip(net.parameters(), before):
        np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(loss.s.numpy(), [0.0, 0.0])


@pytest.mark.parametrize("grouped", [False, True], ids=["flat", "groups"])
@pytest.mark.parametrize("name", FAMILY)
def test_without_any_weight_decay_too(name, grouped):
    """With no coupled decay σ's zero regularizer is left out of each update (a saving): the same numbers."""
    s, weights, model = train_with_fit(name, grouped, decay=False)
    ref_s, ref_weights = reference(name, grouped, decay=False)
    np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-7)
    for got, want in zip(weights, ref_weights):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert model._loss.s.regularizer is not None  # σ keeps its own no-decay switch between updates
