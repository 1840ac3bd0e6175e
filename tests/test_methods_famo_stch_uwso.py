"""famo, stch and uw_so against float64 numpy reimplementations of the official rules
(Cranial-XIX/FAMO, Xi-L/STCH, lukaskirchdorfer/MTL4PPM), and through real ``model.fit`` runs."""

import numpy as np
import paddle
import pytest
from helpers import TwoTaskData, TwoTaskNet, build_model, feed_losses, identity

import hapi_autoloss
from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback
from hapi_autoloss.weighting.famo import FAMO

EPS = 1e-8


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def mse_pair(net, x, y1, y2):
    o1, o2 = net(x)
    return paddle.stack([((o1 - y1) ** 2).mean(), ((o2 - y2) ** 2).mean()])


# ------------------------------------------------------------------ famo


def famo_total(w, losses):
    """Official weighted loss: total and d total / d L (c detached)."""
    z, d = softmax(np.asarray(w, np.float64)), np.asarray(losses, np.float64) + EPS
    c = (z / d).sum()
    return (np.log(d) * z / c).sum(), z / (c * d)


class FamoAdam:
    """Official w update: the vector-Jacobian product of softmax with δ, then torch's Adam
    (coupled L2 weight decay γ, betas (0.9, 0.999), eps 1e-8, bias correction), float64."""

    def __init__(self, n, lr=0.025, gamma=1e-3):
        self.w, self.m, self.v, self.t = np.zeros(n), np.zeros(n), np.zeros(n), 0
        self.lr, self.gamma = lr, gamma

    def step(self, before, after):
        delta = np.log(np.asarray(before, np.float64) + EPS) - np.log(np.asarray(after, np.float64) + EPS)
        z = softmax(self.w)
        jac = np.diag(z) - np.outer(z, z)  # d softmax / d w
        g = jac.T @ delta + self.gamma * self.w
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        denom = np.sqrt(self.v) / np.sqrt(1 - 0.999**self.t) + 1e-8
        self.w = self.w - self.lr / (1 - 0.9**self.t) * self.m / denom


def test_famo_total_gradient_and_weights():
    aw = AutoWeight([identity] * 3, method="famo")
    w, losses = np.array([0.4, -1.1, 0.7]), np.array([0.7, 2.5, 0.05])
    aw.weighting.logits.set_value(w.astype("float32"))
    total, dl = feed_losses(aw, losses)
    want_total, want_dl = famo_total(w, losses)
    np.testing.assert_allclose(float(total), want_total, rtol=1e-6)
    np.testing.assert_allclose(dl, want_dl, rtol=1e-6)
    np.testing.assert_allclose(dl.sum(), 1.0, rtol=1e-6)  # the effective weights sum to 1
    np.testing.assert_allclose(list(aw.weights().values()), dl, rtol=1e-6)
    np.testing.assert_allclose(list(aw.used()[1].values()), dl, rtol=1e-6)
    assert aw.used()[0] == {} and aw.sigmas() == {}


# before, after: task 1's loss rises in the first steps, task 2's in the last.
STEPS = [
    ([1.0, 2.0, 0.5], [0.8, 2.2, 0.45]),
    ([0.9, 2.1, 0.4], [0.7, 2.3, 0.39]),
    ([0.6, 2.4, 0.35], [0.55, 2.6, 0.2]),
    ([0.5, 2.5, 0.3], [0.2, 2.3, 0.33]),
    ([0.4, 2.0, 0.4], [0.35, 1.5, 0.45]),
]


@pytest.mark.parametrize("options,lr,gamma", [({}, 0.025, 1e-3), ({"w_lr": 0.05, "gamma": 0.01}, 0.05, 0.01)],
                         ids=["defaults", "options"])
def test_famo_w_update_is_torch_adam_on_the_official_gradient(options, lr, gamma):
    method = AutoWeight([identity] * 3, method="famo", **options).weighting
    ref = FamoAdam(3, lr=lr, gamma=gamma)
    for i, (before, after) in enumerate(STEPS):
        method.record(paddle.to_tensor(before, dtype="float32"), training=True)
        method.after_update(paddle.to_tensor(after, dtype="float32"))
        ref.step(np.float32(before), np.float32(after))
        np.testing.assert_allclose(method.logits.numpy(), ref.w, rtol=5e-5, atol=1e-7)
        np.testing.assert_allclose(method.adam_m.numpy(), ref.m, rtol=5e-5, atol=1e-9)
        np.testing.assert_allclose(method.adam_v.numpy(), ref.v, rtol=5e-5, atol=1e-12)
        assert float(method.adam_t) == i + 1
        if i == 0:  # the task whose loss rose gets more weight
            z = softmax(method.logits.numpy().astype(np.float64))
            assert z[1] > 1 / 3 + 0.01 and z[0] < 1 / 3 and z[2] < 1 / 3


@pytest.mark.parametrize("bad", ["after_nan", "after_inf", "before_inf"])
def test_famo_a_nonfinite_loss_leaves_w_and_adam_unchanged(bad):
    method = AutoWeight([identity] * 3, method="famo").weighting
    ref = FamoAdam(3)
    for before, after in STEPS[:2]:
        method.record(paddle.to_tensor(before, dtype="float32"), training=True)
        method.after_update(paddle.to_tensor(after, dtype="float32"))
        ref.step(np.float32(before), np.float32(after))
    kept = {k: v.numpy().copy() for k, v in method.state_dict().items()}
    before, after = [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]
    if bad == "after_nan":
        after[1] = float("nan")
    elif bad == "after_inf":
        after[2] = float("inf")
    else:
        before[0] = float("inf")
    method.record(paddle.to_tensor(before, dtype="float32"), training=True)
    method.after_update(paddle.to_tensor(after, dtype="float32"))
    for k, v in method.state_dict().items():
        assert v.numpy().tobytes() == kept[k].tobytes(), k
    # and the next finite step is Adam's step 3, not 4
    before, after = STEPS[2]
    method.record(paddle.to_tensor(before, dtype="float32"), training=True)
    method.after_update(paddle.to_tensor(after, dtype="float32"))
    ref.step(np.float32(before), np.float32(after))
    np.testing.assert_allclose(method.logits.numpy(), ref.w, rtol=5e-5, atol=1e-7)


class RecordingFAMO(FAMO):
    """FAMO that keeps the after-update losses it was given (unnamed: not registered)."""

    def __init__(self):
        super().__init__()
        self.after = []

    def after_update(self, losses_after):
        self.after.append(losses_after.numpy().astype(np.float64))
        super().after_update(losses_after)


def test_famo_through_fit_equals_a_hand_written_loop():
    data, epochs, bs = TwoTaskData(80), 2, 16
    loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method=RecordingFAMO())
    model = build_model(loss)
    model.fit(data, epochs=epochs, batch_size=bs, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])

    # The official loop: forward, backward, step, the same batch again under no_grad, update w.
    paddle.seed(0)
    net = TwoTaskNet()
    opt = paddle.optimizer.Adam(learning_rate=0.05, parameters=net.parameters())
    ref, afters = FamoAdam(2), []
    for _ in range(epochs):
        for x, y1, y2 in data.batches(bs):
            losses = mse_pair(net, x, y1, y2)
            z = paddle.to_tensor(softmax(ref.w), dtype="float32")
            d = losses + EPS
            c = (z / d).sum().detach()
            (paddle.log(d) * z / c).sum().backward()
            opt.step()
            opt.clear_grad()
            with paddle.no_grad():
                after = mse_pair(net, x, y1, y2).numpy().astype(np.float64)
            last = (ref.w.copy(), losses.numpy().astype(np.float64))
            ref.step(last[1], after)
            afters.append(after)

    assert len(loss.weighting.after) == len(afters) == epochs * 5
    np.testing.assert_allclose(np.array(loss.weighting.after), np.array(afters), rtol=1e-5)
    logits = loss.weighting.logits.numpy()
    assert np.abs(logits).max() > 0.05  # w moved
    np.testing.assert_allclose(logits, ref.w, rtol=1e-4, atol=1e-6)
    for got, want in zip(model.network.parameters(), net.parameters()):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    # used(): the last step's weights, before its w update, at its losses
    np.testing.assert_allclose(list(loss.used()[1].values()), famo_total(*last)[1], rtol=1e-4)


def test_famo_after_update_twice_for_one_step_moves_w_once_and_warns():
    """A plain loop calling after_update twice per update moved w twice (adam_t 64 instead of 32)."""
    data = TwoTaskData(64)
    runs = []
    for twice in (False, True):
        paddle.seed(0)
        net = TwoTaskNet()
        loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method="famo")
        opt = paddle.optimizer.Adam(learning_rate=0.05, parameters=net.parameters())
        for x, y1, y2 in data.batches(16):
            loss(*net(x), y1, y2).backward()
            opt.step()
            opt.clear_grad()
            loss.after_update(*net(x), y1, y2)
            if twice:
                with pytest.warns(UserWarning, match=r"after_update was called again with no training forward "
                                                     r"since the last call; this call is ignored.*Fix: call"):
                    loss.after_update(*net(x), y1, y2)
        runs.append((float(loss.weighting.adam_t), loss.weighting.logits.numpy()))
    assert runs[0][0] == runs[1][0] == 4.0
    assert np.abs(runs[0][1]).max() > 1e-3
    np.testing.assert_array_equal(runs[1][1], runs[0][1])


# ------------------------------------------------------------------ stch


def stch_total(losses, nadir, mu):
    """Official STCH after warm-up: value (shifted by the detached max, as the official code) and d/dL."""
    losses, nadir = np.asarray(losses, np.float64), np.asarray(nadir, np.float64)
    n, ratio = len(losses), losses / nadir
    scaled = np.log(ratio + 1e-20)
    value = n * mu * np.log(np.exp((scaled - scaled.max()) / mu).sum())
    grad = n * softmax(scaled / mu) / (ratio + 1e-20) / nadir
    return value, grad


def test_stch_warmup_nadir_epoch_then_smooth_tchebycheff():
    aw = AutoWeight([identity] * 3, method="stch", mu=0.5, warmup_epochs=2)
    assert (AutoWeight([identity], method="stch").weighting.mu, aw.weighting.warmup_epochs) == (1.0, 2)
    warm = np.array([0.7, 2.5, 0.05])
    for _ in range(2):  # warm-up: Σ log(L + 1e-20)
        total, dl = feed_losses(aw, warm)
        np.testing.assert_allclose(float(total), np.log(warm + 1e-20).sum(), rtol=1e-6)
        np.testing.assert_allclose(dl, 1 / (warm + 1e-20), rtol=1e-6)
        aw.end_epoch()
    np.testing.assert_array_equal(aw.weighting.nadir.numpy(), [1.0, 1.0, 1.0])
    batches = np.array([[0.9, 3.0, 0.2], [0.5, 1.0, 0.1], [1.3, 2.0, 0.6]])
    for values in batches:  # the nadir epoch: still Σ log L
        total, dl = feed_losses(aw, values)
        np.testing.assert_allclose(dl, 1 / values, rtol=1e-6)
    with paddle.no_grad():  # an evaluation forward does not count
        feed_losses(aw, [50.0, 50.0, 50.0], grad=False)
    aw.end_epoch()
    nadir = batches.mean(axis=0)
    np.testing.assert_allclose(aw.weighting.nadir.numpy(), nadir, rtol=1e-6)
    assert int(aw.weighting.epochs_seen) == 3
    for values in ([0.4, 2.9, 0.3], [0.8, 0.5, 0.05]):
        total, dl = feed_losses(aw, values)
        want, want_dl = stch_total(values, nadir, 0.5)
        np.testing.assert_allclose(float(total), want, rtol=1e-5)
        np.testing.assert_allclose(dl, want_dl, rtol=1e-5)
        np.testing.assert_allclose(list(aw.weights().values()), want_dl, rtol=1e-5)


class LossesPerEpoch(paddle.callbacks.Callback):
    """Each training step's raw losses (the forward before the update), per epoch."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.epochs = loss, []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([])

    def on_train_batch_end(self, step, logs=None):
        self.epochs[-1].append(list(self.loss.last_losses().values()))


def stch_loss():
    return AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method="stch", warmup_epochs=1)


@pytest.mark.parametrize("saved_after", [1, 2], ids=["resume-into-nadir-epoch", "resume-into-stch"])
def test_stch_nadir_and_epoch_survive_a_checkpoint_and_resume_in_phase(tmp_path, saved_after):
    data, bs = TwoTaskData(88), 16  # 16 × 5 + 8: the nadir is a plain mean over batches
    with paddle.utils.unique_name.guard():
        loss = stch_loss()
        model = build_model(loss)
        seen = LossesPerEpoch(loss)
        model.fit(data, epochs=saved_after, batch_size=bs, shuffle=False, verbose=0,
                  save_dir=str(tmp_path / "ck"), save_freq=1, callbacks=[AutoWeightCallback(), seen])
        saved = {k: v.numpy().copy() for k, v in loss.state_dict().items()}
        model.fit(data, epochs=3 - saved_after, batch_size=bs, shuffle=False, verbose=0,
                  callbacks=[AutoWeightCallback(), seen])
    nadir_epoch = np.array(seen.epochs[1])
    nadir = nadir_epoch.mean(axis=0)
    sizes = np.array([16] * 5 + [8])
    assert np.abs(nadir / ((nadir_epoch * sizes[:, None]).sum(0) / sizes.sum()) - 1).max() > 1e-3
    np.testing.assert_allclose(loss.weighting.nadir.numpy(), nadir, rtol=1e-5)
    assert int(loss.weighting.epochs_seen) == 3

    with paddle.utils.unique_name.guard():
        fresh = stch_loss()
        other = build_model(fresh)
        path = str(tmp_path / "ck" / str(saved_after - 1))  # hapi's ModelCheckpoint, at that epoch's end
        other.load(path)
        hapi_autoloss.load_state(other, path)
        for k, v in fresh.state_dict().items():
            assert v.numpy().tobytes() == saved[k].tobytes(), k
        assert int(fresh.weighting.epochs_seen) == saved_after
        probe = np.array([0.9, 0.03])
        want = stch_total(probe, nadir, 1.0)[0] if saved_after == 2 else np.log(probe).sum()
        got = fresh.weighting.combine(paddle.to_tensor(probe, dtype="float32"))
        np.testing.assert_allclose(float(got), want, rtol=1e-5)
        other.fit(data, epochs=3 - saved_after, batch_size=bs, shuffle=False, verbose=0,
                  callbacks=[AutoWeightCallback()])
    np.testing.assert_allclose(fresh.weighting.nadir.numpy(), loss.weighting.nadir.numpy(), rtol=1e-6)
    assert int(fresh.weighting.epochs_seen) == 3
    for got, want in zip(other.network.parameters(), model.network.parameters()):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ uw_so


@pytest.mark.parametrize("temperature", [1.0, 5.0])
def test_uw_so_weights_are_a_detached_softmax_of_inverse_losses(temperature):
    aw = AutoWeight([identity] * 3, method="uw_so", temperature=temperature)
    for losses in (np.array([0.4, 1.3, 2.0]), np.array([0.7, 2.5, 0.05])):
        w = softmax((1 / (losses + EPS)) / temperature)
        total, dl = feed_losses(aw, losses)
        np.testing.assert_allclose(float(total), (w * losses).sum(), rtol=1e-6)
        np.testing.assert_allclose(dl, w, rtol=1e-6, atol=1e-12)  # no gradient through the weights
        np.testing.assert_allclose(dl.sum(), 1.0, rtol=1e-6)
        np.testing.assert_allclose(list(aw.weights().values()), w, rtol=1e-6, atol=1e-12)
    assert not aw.weighting.needs_callback


def test_stch_a_skipped_nonfinite_step_does_not_poison_the_nadir():
    data = TwoTaskData(80)
    data.y1[20] = np.nan  # batch 1 of every epoch: y1's loss is NaN, the step is skipped
    loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method="stch", warmup_epochs=0)
    model = build_model(loss)
    seen, guard = LossesPerEpoch(loss), AutoWeightCallback(on_nonfinite="skip")
    model.fit(data, epochs=3, batch_size=16, shuffle=False, verbose=0, callbacks=[guard, seen])
    finite = [step[0] for step in seen.epochs[0] if np.isfinite(step[0])]
    assert len(finite) == 4
    np.testing.assert_allclose(loss.weighting.nadir.numpy()[0], np.mean(finite), rtol=1e-5)
    assert guard.skipped == 3  # the NaN batch of each epoch, nothing else


@pytest.mark.parametrize("method", ["stch", "dwa"])
def test_an_end_epoch_after_a_validation_loop_is_not_an_epoch(method):
    """A plain loop calling end_epoch after its no_grad validation loop too: stch counted an epoch with no
    training batch, stored the neutral nadir 1 and left warm-up after half the epochs (dwa skipped it)."""
    options = {"warmup_epochs": 1} if method == "stch" else {}
    states = []
    for twice in (False, True):
        paddle.seed(0)
        net = TwoTaskNet()
        loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method=method, **options)
        opt = paddle.optimizer.Adam(0.01, parameters=net.parameters())
        data = TwoTaskData(64)
        x, y1, y2 = (paddle.to_tensor(np.stack(col)) for col in zip(*[data[i] for i in range(64)]))
        for _ in range(4):
            for i in range(0, 64, 16):
                loss(*net(x[i:i + 16]), y1[i:i + 16], y2[i:i + 16]).backward()
                opt.step()
                opt.clear_grad()
            loss.end_epoch()
            if twice:
                with paddle.no_grad():
                    loss(*net(x[:16]), y1[:16], y2[:16])
                loss.end_epoch()
        states.append({k: v.numpy() for k, v in loss.state_dict().items()})
    assert int(states[1]["weighting.epochs_seen"]) == 4
    for key, value in states[0].items():
        np.testing.assert_array_equal(states[1][key], value, err_msg=key)
    if method == "stch":
        assert np.abs(states[1]["weighting.nadir"] - 1.0).min() > 1e-3  # a real nadir, not the neutral 1
