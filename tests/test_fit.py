"""AutoWeight inside a real paddle.Model.fit: each hapi trap, failing naively, fixed now."""

import warnings

import numpy as np
import paddle
import pytest
from helpers import (
    NaiveUncertaintyLoss,
    TwoTaskData,
    build_model,
    kendall_loss,
    reference_sigma,
)

from hapi_autoloss.callbacks import AutoWeightCallback

DATA = TwoTaskData(96)
FIT = dict(batch_size=16, shuffle=False, verbose=0)


def fit(model, epochs=2, callbacks=(), **kw):
    model.fit(DATA, epochs=epochs, callbacks=list(callbacks), **{**FIT, **kw})


def test_naive_sigma_stays_frozen_silently():
    loss = NaiveUncertaintyLoss()
    model = build_model(loss)  # optimizer from model.parameters(): σ is not in it
    fit(model)
    np.testing.assert_array_equal(loss.s.numpy(), [0.0, 0.0])


def test_sigma_learns_with_the_callback_and_matches_a_hand_written_loop():
    loss = kendall_loss()
    model = build_model(loss)
    fit(model, epochs=3, callbacks=[AutoWeightCallback()])
    ref_s, ref_net = reference_sigma(DATA, epochs=3, batch_size=16)
    assert np.abs(loss.s.numpy()).min() > 0.1
    np.testing.assert_allclose(loss.s.numpy(), ref_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.network.h1.weight.numpy(), ref_net.h1.weight.numpy(), rtol=1e-5, atol=1e-6)


def test_naive_gradients_pile_up_but_not_with_the_callback():
    ref_s, _ = reference_sigma(DATA, epochs=3, batch_size=16)
    naive = NaiveUncertaintyLoss()
    model = build_model(naive, extra_params=naive.parameters())  # σ in the optimizer, by hand
    fit(model, epochs=3)
    assert np.abs(naive.s.numpy() - ref_s).max() > 0.1  # hapi never clears σ's gradient

    loss = kendall_loss()
    fit(build_model(loss), epochs=3, callbacks=[AutoWeightCallback()])
    np.testing.assert_allclose(loss.s.numpy(), ref_s, rtol=1e-5, atol=1e-6)


def test_accumulate_grad_batches_is_respected():
    ref_s, _ = reference_sigma(DATA, epochs=2, batch_size=16, accumulate=4)
    loss = kendall_loss()
    fit(build_model(loss), epochs=2, callbacks=[AutoWeightCallback()], accumulate_grad_batches=4)
    np.testing.assert_allclose(loss.s.numpy(), ref_s, rtol=1e-5, atol=1e-6)
    every_step, _ = reference_sigma(DATA, epochs=2, batch_size=16)
    assert np.abs(every_step - ref_s).max() > 1e-3


def check_decay_skips_sigma(opt, epochs, naive_gap, **decay):
    """σ under the callback equals a reference loop that exempts σ from ``decay``,
    which differs from one that decays σ (what the naive way gets)."""
    ref_s, _ = reference_sigma(DATA, epochs=epochs, batch_size=16, opt=opt, **decay)
    decayed, _ = reference_sigma(DATA, epochs=epochs, batch_size=16, opt=opt, decay_sigma=True, **decay)
    assert np.abs(decayed - ref_s).max() > naive_gap
    loss = kendall_loss()
    fit(build_model(loss, opt=opt, **decay), epochs=epochs, callbacks=[AutoWeightCallback()])
    np.testing.assert_allclose(loss.s.numpy(), ref_s, rtol=1e-5, atol=1e-6)
    return ref_s


def test_adamw_weight_decay_does_not_reach_sigma():
    ref_s = check_decay_skips_sigma("adamw", 3, 1e-3, weight_decay=0.5)
    # σ appended to the optimizer by hand, as seed 000 does: not added twice, not decayed.
    seedlike = kendall_loss()
    model = build_model(seedlike, opt="adamw", weight_decay=0.5, extra_params=seedlike.parameters())
    fit(model, epochs=3, callbacks=[AutoWeightCallback()])
    assert sum(p is seedlike.s for p in model._optimizer._parameter_list) == 1
    np.testing.assert_allclose(seedlike.s.numpy(), ref_s, rtol=1e-5, atol=1e-6)


def test_sgd_coupled_weight_decay_does_not_reach_sigma():
    ref_s, _ = reference_sigma(DATA, epochs=2, batch_size=16, opt="sgd", lr=0.1, weight_decay=0.5)
    loss = kendall_loss()
    fit(build_model(loss, opt="sgd", lr=0.1, weight_decay=0.5), callbacks=[AutoWeightCallback()])
    np.testing.assert_allclose(loss.s.numpy(), ref_s, rtol=1e-5, atol=1e-6)


def test_param_group_optimizer_and_lr_scale():
    loss = kendall_loss()
    paddle.seed(0)
    from helpers import X_SPEC, Y_SPECS, TwoTaskNet

    net = TwoTaskNet()
    model = paddle.Model(net, inputs=X_SPEC, labels=Y_SPECS)
    groups = [{"params": net.trunk.parameters()}, {"params": net.h1.parameters() + net.h2.parameters(),
                                                   "learning_rate": 0.5}]
    model.prepare(paddle.optimizer.SGD(learning_rate=0.1, parameters=groups, weight_decay=0.3), loss)
    s_before = loss.s.numpy().copy()
    fit(model, epochs=1, callbacks=[AutoWeightCallback(lr_scale=2.0)], batch_size=96)
    group = model._optimizer._param_groups[-1]
    assert group["params"] == [loss.s] and group["weight_decay"] == 0.0 and group["learning_rate"] == 2.0
    # One SGD step of lr 0.1 × 2.0, no decay: s1 = s0 − 0.2·g, g = −½e^(−s0)·L + ½.
    x, y1, y2 = (paddle.to_tensor(a) for a in (DATA.x, DATA.y1, DATA.y2))
    # recompute L at the initial weights: rebuild the same net
    paddle.seed(0)
    net0 = TwoTaskNet()
    o1, o2 = net0(x)
    mse = np.array([float(((o1 - y1) ** 2).mean()), float(((o2 - y2) ** 2).mean())])
    grad = -0.5 * np.exp(-s_before) * mse + 0.5
    np.testing.assert_allclose(loss.s.numpy(), s_before - 0.2 * grad, rtol=1e-5)


def test_fit_twice_injects_once_and_sigma_continues():
    loss = kendall_loss()
    model = build_model(loss)
    cb = AutoWeightCallback()
    fit(model, epochs=1, callbacks=[cb])
    after_one = loss.s.numpy().copy()
    fit(model, epochs=1, callbacks=[cb])
    plist = model._optimizer._parameter_list
    assert sum(p is loss.s for p in plist) == 1
    assert len(plist) == len(model.parameters()) + 1
    assert not np.array_equal(after_one, loss.s.numpy())
    ref_s, _ = reference_sigma(DATA, epochs=2, batch_size=16)
    np.testing.assert_allclose(loss.s.numpy(), ref_s, rtol=1e-5, atol=1e-6)


def test_without_the_callback_the_first_step_raises_and_nothing_moves():
    loss = kendall_loss()
    model = build_model(loss)
    w_before = model.network.h1.weight.numpy().copy()
    with pytest.raises(RuntimeError, match="AutoWeightCallback"):
        fit(model)
    np.testing.assert_array_equal(model.network.h1.weight.numpy(), w_before)
    np.testing.assert_array_equal(loss.s.numpy(), [0.0, 0.0])


def test_sigma_and_weights_reach_the_logs_and_hapi_progress_line(capsys):
    loss = kendall_loss()
    seen = {}

    class Spy(paddle.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            seen.update(logs)

    model = build_model(loss)
    model.fit(DATA, epochs=1, batch_size=16, shuffle=False, verbose=1, log_freq=1,
              callbacks=[AutoWeightCallback(), Spy()])
    out = capsys.readouterr().out
    assert "sigma_y1:" in out and "weight_y2:" in out
    assert set(seen) >= {"sigma_y1", "sigma_y2", "weight_y1", "weight_y2"}
    # the values of the last batch were read before its update
    assert seen["sigma_y1"] != pytest.approx(loss.sigmas()["y1"], abs=1e-9)


def test_toy_recovers_sigma_within_five_percent():
    import uncertainty_regression as toy

    sigmas = toy.main(["--verbose", "0"])
    for task, true in toy.TRUE_SIGMA.items():
        assert abs(sigmas[task] - true) / true < 0.05, sigmas


def test_a_new_model_takes_over_a_trained_loss_like_a_fresh_loss_started_there():
    """A notebook cell run again: a new paddle.Model with the loss of an earlier cell, while the
    old model is still alive. It was refused; now the new model trains it, with a warning, and
    exactly as a fresh loss holding the same σ would train (no state of the old optimizer)."""
    loss = kendall_loss()
    first = build_model(loss)  # kept alive, as a notebook's earlier cell keeps it
    fit(first, epochs=1, callbacks=[AutoWeightCallback()])
    state = {k: v.numpy().copy() for k, v in loss.state_dict().items()}
    with pytest.warns(UserWarning, match=r"trained by another paddle\.Model before.*Fix: build a new AutoWeight"):
        fit(build_model(loss, seed=1), epochs=2, callbacks=[AutoWeightCallback()])
    fresh = kendall_loss()
    fresh.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    reference = build_model(fresh, seed=1)
    fit(reference, epochs=2, callbacks=[AutoWeightCallback()])
    assert loss.sigmas() == fresh.sigmas()  # bit for bit
    moved = [np.abs(v.numpy() - state[k]).max() for k, v in loss.state_dict().items()]
    assert max(moved) > 1e-3  # the new model's optimizer trained σ on from the state
    # the first model, attached before, trains it no more unless it takes it back (it trained
    # σ with its own optimizer, unrefused; a gradient-level method crashed in Paddle's add_n)
    sigma = [p.numpy().copy() for p in loss.parameters()]
    for train in (lambda: fit(first, epochs=1), lambda: first.train_batch([DATA.x[:16]], [DATA.y1[:16], DATA.y2[:16]])):
        with pytest.raises(RuntimeError, match=r"taken over by another paddle\.Model.*Fix: pass "
                                               r"hapi_autoloss\.callbacks\.AutoWeightCallback"):
            train()
    assert all(np.array_equal(p.numpy(), q) for p, q in zip(loss.parameters(), sigma))
    with pytest.warns(UserWarning, match="trained by another paddle.Model before"):  # and back
        fit(first, epochs=1, callbacks=[AutoWeightCallback()])
    # re-prepared with a loss of its own, the model that lost it trains on (it was refused)
    first.prepare(first._optimizer, lambda a, b, y1, y2: paddle.nn.functional.mse_loss(a, y1)
                  + paddle.nn.functional.mse_loss(b, y2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(build_model(loss, seed=2), epochs=1, callbacks=[AutoWeightCallback()])
    before = first.network.parameters()[0].numpy().copy()
    fit(first, epochs=1)
    assert np.abs(first.network.parameters()[0].numpy() - before).max() > 0


def test_a_second_model_training_an_attached_loss_without_the_callback_is_refused():
    """Its σ gradient was never cleared by that model and went into the first model's next update."""
    loss = kendall_loss()
    first = build_model(loss)
    fit(first, epochs=1, callbacks=[AutoWeightCallback()])
    second = build_model(loss, seed=1)
    before = [p.numpy().copy() for p in [*loss.parameters(), *second.network.parameters()]]
    with pytest.raises(RuntimeError, match=r"trained by another paddle\.Model.*without AutoWeightCallback"
                                           r".*Fix: pass hapi_autoloss\.callbacks\.AutoWeightCallback"):
        fit(second, epochs=1)
    after = [p.numpy() for p in [*loss.parameters(), *second.network.parameters()]]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert all(p.grad is None or not p.grad.numpy().any() for p in loss.parameters())
    with paddle.no_grad():  # evaluating with it stays allowed
        second.evaluate(DATA, batch_size=16, verbose=0)


def test_prepare_without_optimizer_then_fit():
    model = paddle.Model(__import__("helpers").TwoTaskNet())
    model.prepare(loss=kendall_loss())
    with pytest.raises(RuntimeError, match="no optimizer"):
        fit(model, callbacks=[AutoWeightCallback()])


def test_dwa_gets_its_epoch_averages_from_the_callback():
    from hapi_autoloss import AutoWeight

    loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method="dwa")
    seen = []

    class Spy(paddle.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((loss.weighting.dwa_history.numpy().copy(), loss.weights()))

    fit(build_model(loss), epochs=3, callbacks=[AutoWeightCallback(), Spy()])
    assert int(loss.weighting.epochs_seen) == 3
    # seen[e]: after epoch e, the weights epoch e + 1 trains with
    assert seen[0][1] == {"y1": 1.0, "y2": 1.0}
    for history, weights in seen[1:]:
        r = history[1] / history[0]
        expected = 2 * np.exp(r / 2) / np.exp(r / 2).sum()
        np.testing.assert_allclose(list(weights.values()), expected, rtol=1e-5)
        assert abs(weights["y1"] - 1.0) > 1e-4


def test_lamb_weight_decay_does_not_reach_sigma():
    check_decay_skips_sigma("lamb", 2, 1e-4, lamb_weight_decay=0.5)


class Keys(paddle.callbacks.Callback):
    """The logs keys a user's callback sees at each train step of one fit."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, step, logs=None):
        self.seen.append(sorted(k for k in logs if k.startswith(("sigma_", "weight_"))))


def test_a_second_model_in_the_process_sees_no_sigma_of_the_first():
    """hapi's train logs dict is a mutable default shared by every fit: kendall's y1/y2 σ reached dwa's fit."""
    from hapi_autoloss import AutoWeight

    fit(build_model(kendall_loss()), epochs=1, callbacks=[AutoWeightCallback()])
    dwa = AutoWeight({"depth": paddle.nn.MSELoss(), "seg": paddle.nn.MSELoss()}, method="dwa")
    keys = Keys()
    fit(build_model(dwa), epochs=1, callbacks=[AutoWeightCallback(), keys])
    assert keys.seen[0] == ["weight_depth", "weight_seg"] and keys.seen[-1] == keys.seen[0]


def test_show_in_progress_bar_false_hides_sigma_from_the_line_not_from_logs(capsys):
    keys = Keys()
    fit(build_model(kendall_loss()), epochs=1, callbacks=[AutoWeightCallback(show_in_progress_bar=False), keys],
        verbose=1, log_freq=1)
    assert "sigma_y1" not in capsys.readouterr().out
    assert keys.seen[0] == ["sigma_y1", "sigma_y2", "weight_y1", "weight_y2"]


@pytest.mark.parametrize("same", [False, True], ids=["two", "one-listed-twice"])
def test_two_callbacks_in_one_fit_are_refused_before_any_step(same):
    """Each ended every epoch: stch counted 2 epochs per epoch."""
    from hapi_autoloss import AutoWeight

    loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method="stch", warmup_epochs=2)
    model = build_model(loss)
    before = model.network.trunk.weight.numpy().copy()
    one = AutoWeightCallback()
    with pytest.raises(ValueError, match=r"Two AutoWeightCallbacks.*Fix: pass one"):
        fit(model, epochs=1, callbacks=[one, one if same else AutoWeightCallback()])
    np.testing.assert_array_equal(model.network.trunk.weight.numpy(), before)


@pytest.mark.parametrize("first", ["checkpoint", "autoweight"])
def test_a_model_checkpoint_listed_first_holds_the_epoch_dwa_closed(tmp_path, first):
    """ModelCheckpoint saves at its own on_epoch_end: listed before AutoWeightCallback, it wrote dwa
    before the epoch's averages were taken in, so a resume trained with other weights."""
    import hapi_autoloss
    from hapi_autoloss import AutoWeight

    def dwa():
        return AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method="dwa")

    checkpoint = paddle.callbacks.ModelCheckpoint(save_freq=1, save_dir=str(tmp_path))
    order = [checkpoint, AutoWeightCallback()] if first == "checkpoint" else [AutoWeightCallback(), checkpoint]
    fit(build_model(dwa()), epochs=3, callbacks=order)
    two = dwa()  # the same run's first two epochs, uninterrupted
    fit(build_model(two), epochs=2, callbacks=[AutoWeightCallback()])
    resumed = dwa()
    model = build_model(resumed, seed=1)
    model.load(str(tmp_path / "1"), reset_optimizer=True)  # written after epochs 0 and 1
    hapi_autoloss.load_state(model, str(tmp_path / "1"))
    assert int(resumed.weighting.epochs_seen) == int(two.weighting.epochs_seen) == 2
    np.testing.assert_array_equal(resumed.weighting.dwa_history.numpy(), two.weighting.dwa_history.numpy())
    assert resumed.weights() == two.weights() and abs(two.weights()["y1"] - 1.0) > 1e-4
