"""Methods that learn at epoch ends (dwa, stch) in PaddleSeg's own ``train``: an epoch is
``len(batch_sampler)`` iterations, ended before the next epoch's first forward as
AutoWeightCallback's ``on_epoch_end`` does; resumed from ``iter_N`` (in mid-epoch too) exactly."""

import pickle

import numpy as np
import paddle
import pytest
from seg_helpers import SegData, build, run, train

import hapi_autoloss.paddleseg as hp


def spy(aw, what):
    """Record, at each training forward, the losses and ``what(weighting)`` the combine used."""
    rows, combine = [], aw.weighting.combine

    def recorded(losses):
        if paddle.is_grad_enabled():
            rows.append((losses.numpy().astype(np.float64), what(aw.weighting)))
        return combine(losses)

    aw.weighting.combine = recorded
    return rows


def dwa_rule(before, last, temperature=2.0):
    r = last / before
    e = np.exp(r / temperature - (r / temperature).max())
    return len(r) * e / e.sum()


def test_dwa_weights_come_from_the_epoch_averages(tmp_path):
    data = SegData(n=8)  # batch 4: 2 iterations per epoch
    model, losses, opt = build(method="dwa", iters=8)
    aw = losses["types"][0]
    rows = spy(aw, lambda w: w.dwa_weights.numpy().astype(np.float64))
    train(model, losses, opt, data, tmp_path, iters=8)
    losses_, used = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    assert losses_.shape == (8, 2)
    means = losses_.reshape(4, 2, 2).mean(axis=1)  # [epoch, task]: equal batches, so the plain mean
    want = np.ones((4, 2))
    want[2], want[3] = dwa_rule(means[0], means[1]), dwa_rule(means[1], means[2])
    print("dwa max |used - float64 rule|", np.abs(used - np.repeat(want, 2, axis=0)).max(), "weights", want[2:])
    np.testing.assert_allclose(used, np.repeat(want, 2, axis=0), rtol=0, atol=1e-6)
    assert np.abs(want[2:] - 1).max() > 1e-3  # the rule moved the weights
    assert int(aw.weighting.epochs_seen) == 3  # the last epoch ends at the next run's first forward
    np.testing.assert_allclose(aw.weighting.dwa_history.numpy(), means[1:3], rtol=1e-6)


def test_stch_counts_epochs_and_takes_its_nadir(tmp_path):
    data = SegData(n=8)
    model, losses, opt = build(method="stch", iters=8, warmup_epochs=1)
    aw = losses["types"][0]
    rows = spy(aw, lambda w: w._epoch)
    train(model, losses, opt, data, tmp_path, iters=8)
    assert [r[1] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert int(aw.weighting.epochs_seen) == 3
    nadir = np.mean([r[0] for r in rows[2:4]], axis=0)  # epoch 1, the nadir epoch
    np.testing.assert_allclose(aw.weighting.nadir.numpy(), nadir, rtol=1e-6)


@pytest.mark.parametrize("method,options", [("dwa", {}), ("stch", {"warmup_epochs": 1})])
def test_resume_in_mid_epoch_is_exact(tmp_path, method, options):
    data = SegData(n=8, same=True)  # train's sampler restarts its shuffle on resume: order-free batches
    kw = {"method": method, "options": options, "schedule": 8, "save_interval": 3}
    full_model, full = run("attach", data, tmp_path / "full", iters=8, **kw)
    run("attach", data, tmp_path / "cut", iters=3, **kw)  # iteration 3: the middle of epoch 1
    saved = paddle.load(str(tmp_path / "cut" / "iter_3" / "model.pdparams"))
    assert int(saved["hapi_autoloss_0.seg_iter"]) == 3
    model, resumed = run("attach", data, tmp_path / "resumed", iters=8, resume_model=str(tmp_path / "cut" / "iter_3"),
                         **kw)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        np.testing.assert_allclose(b.numpy().astype(np.float64), a.numpy().astype(np.float64),
                                   rtol=1e-5, atol=1e-7, err_msg=name)
    for a, b in zip(full_model.parameters(), model.parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
    if method == "dwa":
        assert int(resumed.weighting.epochs_seen) == 3 and abs(resumed.weighting.dwa_weights.numpy()[0] - 1) > 1e-4


def test_famo_is_still_refused():
    with pytest.raises(ValueError, match=r"^method='famo' needs a forward after each update, which PaddleSeg's "
                                         r"train never makes\. Fix: use one of .*dwa.*stch"):
        hp.AutoWeight([hp.SafeCrossEntropyLoss(), hp.SafeDiceLoss()], method="famo")


def test_epoch_methods_refuse_a_forward_outside_train_and_a_loss_not_attached(tmp_path):
    aw = hp.AutoWeight([hp.SafeCrossEntropyLoss(), hp.SafeDiceLoss()], method="dwa")
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("float32"))
    y = paddle.to_tensor(SegData(n=2).y)
    with paddle.no_grad():
        aw(x, y)  # an evaluation forward: nothing to end
    with pytest.raises(RuntimeError, match=r"outside train, so no epoch would ever end\. Fix: train it with "
                                           r"paddleseg\.core\.train after hapi_autoloss\.paddleseg\.attach"):
        aw(x, y)
    with pytest.raises(RuntimeError, match=r"not a sublayer of train's model.*Fix: call hapi_autoloss\.paddleseg"
                                           r"\.attach"):
        run("none", SegData(n=8), tmp_path, iters=2, method="dwa")


def test_a_checkpoint_without_the_loss_state_is_refused(tmp_path):
    data = SegData(n=8, same=True)
    run("attach", data, tmp_path / "cut", iters=3, method="dwa", schedule=8, save_interval=3)
    path = tmp_path / "cut" / "iter_3" / "model.pdparams"
    saved = paddle.load(str(path))
    paddle.save({k: v for k, v in saved.items() if not k.startswith("hapi_autoloss_")}, str(path))
    with pytest.raises(RuntimeError, match=r"is at iteration 0, but train resumes at iteration 3: the checkpoint's "
                                           r"model\.pdparams lacks this loss's state.*; from a checkpoint saved "
                                           r"without it, load the network's weights with model\.set_state_dict"
                                           r"\(paddle\.load\('.*iter_3/model\.pdparams'\)\) and train without "
                                           r"resume_model"):
        run("attach", data, tmp_path / "resumed", iters=8, method="dwa", schedule=8,
            resume_model=str(tmp_path / "cut" / "iter_3"))


class TwoHeads(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.c1 = paddle.nn.Conv2D(3, 8, 3, padding=1)
        self.c2, self.c3 = paddle.nn.Conv2D(8, 3, 3, padding=1), paddle.nn.Conv2D(8, 3, 3, padding=1)

    def forward(self, x):
        z = paddle.nn.functional.relu(self.c1(x))
        return [self.c2(z), self.c3(z)]


def test_one_dwa_loss_on_two_outputs_ends_each_epoch_once(tmp_path):
    """types: [aw, aw]: the second forward of an iteration was taken for a resume from another
    run ("is at iteration 2, but train resumes at iteration 1") and failed at iteration 2."""
    paddle.seed(0)
    model = TwoHeads()
    aw = hp.AutoWeight([{"type": "SafeCrossEntropyLoss"}, {"type": "SafeDiceLoss"}], method="dwa")
    rows = spy(aw, lambda w: int(w.epochs_seen))
    losses = {"types": [aw, aw], "coef": [1, 0.4]}
    opt = paddle.optimizer.SGD(0.05, parameters=model.parameters())
    hp.attach(model, losses, opt)
    train(model, losses, opt, SegData(n=8), tmp_path, iters=8)
    assert [r[1] for r in rows] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    losses_ = np.array([r[0] for r in rows]).reshape(4, 4, 2)  # [epoch, forward, task]
    np.testing.assert_allclose(aw.weighting.dwa_history.numpy(), losses_[1:3].mean(axis=1), rtol=1e-5)


def test_a_second_train_ends_the_first_runs_last_epoch(tmp_path):
    """That epoch was complete, but it ends only at the next iteration's forward, and a new train
    (from iteration 1) forgot its sums: 3 epochs seen after 4."""
    model, losses, opt = build(method="dwa", iters=8)
    aw = losses["types"][0]
    train(model, losses, opt, SegData(n=8), tmp_path / "a", iters=8)
    assert int(aw.weighting.epochs_seen) == 3
    train(model, losses, opt, SegData(n=8), tmp_path / "b", iters=1)
    assert int(aw.weighting.epochs_seen) == 4


@pytest.mark.parametrize("n_first,iters_first,n_second,seen", [
    (8, 1, 8, 0),    # 1 iteration, then a new train: its sums dropped (it was taken for the same iteration)
    (4, 1, 4, 1),    # 1 iteration per epoch: that complete epoch ended once
    (8, 4, 12, 2),   # the last run's epochs were 2 iterations, this one's 3: its complete last epoch ends
    (8, 3, 12, 1),   # its incomplete last epoch does not (it ended as a 3-iteration one)
])
@pytest.mark.parametrize("process", ["same", "new"])
def test_a_new_train_judges_the_last_run_by_that_runs_own_epochs(tmp_path, n_first, iters_first, n_second, seen,
                                                                  process):
    """In a new process (the checkpoint's model.pdparams loaded into new objects) too: the last
    run's epoch length was a Python attribute, so there it was this run's."""
    model, losses, opt = build(method="dwa", iters=8)
    train(model, losses, opt, SegData(n=n_first), tmp_path / "a", iters=iters_first)
    if process == "new":
        state = paddle.load(str(tmp_path / "a" / f"iter_{iters_first}" / "model.pdparams"))
        model, losses, opt = build(method="dwa", iters=8)
        model.set_state_dict(state)
    aw = losses["types"][0]
    train(model, losses, opt, SegData(n=n_second), tmp_path / "b", iters=1)
    assert int(aw.weighting.epochs_seen) == seen
    np.testing.assert_array_equal(aw.weighting.dwa_count.numpy(), [4.0, 4.0])  # this train's one batch only
    pickle.dumps(aw)  # the run marker is not on the loss (a weakref does not pickle)
