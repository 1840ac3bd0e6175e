"""Loaded optimizer moments are found under the names the optimizer creates at its first
update, not at load time: Paddle numbers accumulator names with a process-wide counter
(``unique_name``), which another optimizer or a ``unique_name.guard()`` moves in between."""

import os
import warnings

import numpy as np
import paddle
import pytest
from helpers import X_SPEC, Y_SPECS, TwoTaskData, TwoTaskNet, build_model, kendall_loss
from paddle.base import unique_name
from test_optimizers import BATCH, FAMILY, build_optimizer, network_params

import hapi_autoloss
from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback

DATA = TwoTaskData(96)


def fit(model, epochs, save_dir=None):
    model.fit(DATA, epochs=epochs, batch_size=16, verbose=0, shuffle=False, save_dir=save_dir,
              callbacks=[AutoWeightCallback()])


def straight_and_checkpoint(tmp_path):
    straight = build_model(kendall_loss())
    fit(straight, 4)
    fit(build_model(kendall_loss()), 2, str(tmp_path / "ck"))
    return straight, str(tmp_path / "ck" / "final")


def assert_same(model, straight):
    assert model._loss.sigmas() == straight._loss.sigmas()
    for got, want in zip(model.network.parameters(), straight.network.parameters()):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def loaded(model, path):
    model.load(path)
    hapi_autoloss.load_state(model, path)
    return model


def test_a_model_loaded_inside_a_name_guard_trains_outside_it(tmp_path):
    """Failed at the first update: "Optimizer set error, linear_0.w_0_moment1_1 should in state dict"."""
    straight, path = straight_and_checkpoint(tmp_path)
    with unique_name.guard():
        model = loaded(build_model(kendall_loss()), path)
    fit(model, 2)
    assert_same(model, straight)


def test_two_optimizers_over_one_network_loaded_then_trained_in_turn(tmp_path):
    """Both predicted the same suffix at load time; the second to train failed at its first update."""
    straight, path = straight_and_checkpoint(tmp_path)
    first = loaded(build_model(kendall_loss()), path)
    second = paddle.Model(first.network, first._inputs, first._labels)
    second.prepare(paddle.optimizer.Adam(0.05, parameters=second.parameters()), kendall_loss())
    loaded(second, path)
    fit(first, 2)
    assert_same(first, straight)
    # the reference for the second: a fresh model holding the same network and the checkpoint's moments
    reference = loaded(build_model(kendall_loss()), path)
    reference.network.set_state_dict(first.network.state_dict())
    fit(second, 1)
    fit(reference, 1)
    assert_same(second, reference)


def test_model_load_without_load_state_warns_that_sigma_starts_afresh(tmp_path):
    """A new process's habit from hapi: model.load(path) alone. σ went back to its initial value
    while its Adam moments went on, with no word. A checkpoint without σ gives no warning."""
    with unique_name.guard():  # the names a new process gives
        fit(build_model(kendall_loss()), 2, str(tmp_path / "sigma"))
    with unique_name.guard():
        fit(build_model(AutoWeight([paddle.nn.MSELoss()] * 2, method="equal")), 1, str(tmp_path / "plain"))
    for folder, call_load_state, warns in (("sigma", False, True), ("sigma", True, False), ("plain", False, False)):
        path = str(tmp_path / folder / "final")
        with unique_name.guard():
            model = build_model(kendall_loss())
            model.load(path)
            if call_load_state:
                hapi_autoloss.load_state(model, path)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit(model, 1)
                fit(model, 1)  # the moments are in use now: no second warning
        said = [str(w.message) for w in caught if "load_state was not called" in str(w.message)]
        assert len(said) == int(warns), (folder, call_load_state, said)
        if said:
            assert "Fix: call hapi_autoloss.load_state(model, path)" in said[0]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("name", FAMILY)
def test_a_checkpoint_without_sigma_continues_with_fresh_sigma_moments(tmp_path, name, grouped):
    """A run with a fixed-weight loss, continued with a learned one: model.load gave the optimizer
    the network's moments and none of σ's, and the first update failed ("Optimizer set error,
    kendall_0.w_0_moment1_0 should in state dict"). σ now starts with fresh moments: the run equals
    a hand-written loop, the network's optimizer loaded and σ under a fresh one (the library's rule)."""
    def built(loss):
        paddle.seed(0)
        net = TwoTaskNet()
        return net, build_optimizer(name, network_params(net, grouped, name))

    path = str(tmp_path / "fixed")
    with unique_name.guard():
        net, opt = built(None)
        model = paddle.Model(net, inputs=X_SPEC, labels=Y_SPECS)
        model.prepare(opt, AutoWeight([paddle.nn.MSELoss()] * 2, method="equal"))
        # the callback: hapi's own minimize fails on param groups (paddle 3.3.1)
        model.fit(DATA, epochs=1, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
        model.save(path)
    with unique_name.guard():
        net, opt = built(None)
        loss = kendall_loss()
        model = paddle.Model(net, inputs=X_SPEC, labels=Y_SPECS)
        model.prepare(opt, loss)
        model.load(path)
        model.fit(DATA, epochs=1, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
    with unique_name.guard():
        ref_net, net_opt = built(None)
        ref_loss = kendall_loss()
        ref_net.set_state_dict(paddle.load(path + ".pdparams"))
        if os.path.exists(path + ".pdopt"):  # SGD has no state: hapi writes none
            net_opt.set_state_dict(paddle.load(path + ".pdopt"))
        sigma_opt = build_optimizer(name, ref_loss.parameters(), clip=False, decay=False)
        for x, y1, y2 in DATA.batches(BATCH):
            ref_loss(*ref_net(x), y1, y2).backward()
            for o in (net_opt, sigma_opt):
                o.step()
                o.clear_grad()
    np.testing.assert_array_equal(loss.s.numpy(), ref_loss.s.numpy())
    assert np.abs(loss.s.numpy()).max() > 1e-4  # σ learned
    for got, want in zip(net.parameters(), ref_net.parameters()):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_the_loaded_moments_are_renamed_at_the_first_update_only(tmp_path):
    """hapi's load leaves keys in the optimizer's holder that no update takes (its converted
    copies), so the holder never empties, and the renaming rebuilt it on every update."""
    straight, path = straight_and_checkpoint(tmp_path)
    model = loaded(build_model(kendall_loss()), path)
    opt = model._optimizer
    holders = []

    class Holders(paddle.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            holders.append(opt._accumulators_holder)

    model.fit(DATA, epochs=2, batch_size=16, verbose=0, shuffle=False, callbacks=[AutoWeightCallback(), Holders()])
    assert len(holders) == 12 and opt._accumulators_holder  # the leftovers: never empty
    assert all(h is holders[0] for h in holders)  # not rebuilt after the first update
    assert_same(model, straight)
