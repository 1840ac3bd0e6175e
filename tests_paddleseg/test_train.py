"""PaddleSeg's own ``train`` with a learned loss: σ trained like a plain loop's, no decay, grads cleared,
resumed exactly from an iter_N checkpoint; seed 000's hand-appended σ refused."""

import numpy as np
import paddle
import pytest
from seg_helpers import SegData, build, hand_loop, run, train

from hapi_autoloss import param_groups


def reference(data, iters=8, batch_size=4, weight_decay=0.1, lr=0.05, seed=0):
    """What train should do, as a plain loop: σ in its own no-decay group, every gradient cleared."""
    paddle.seed(seed)
    model, losses, _ = build("none", seed=seed, weight_decay=weight_decay, iters=iters, lr=lr)
    aw = losses["types"][0]
    sched = paddle.optimizer.lr.PolynomialDecay(lr, decay_steps=iters, end_lr=0.0)
    opt = paddle.optimizer.AdamW(sched, parameters=param_groups(model, aw), weight_decay=weight_decay)
    return hand_loop(model, aw, data, [opt], iters, batch_size, sched)


def test_sigma_trained_like_a_plain_loop_with_no_decay(tmp_path):
    data = SegData()
    model, losses, opt = build("attach")
    aw = losses["types"][0]
    train(model, losses, opt, data, tmp_path)
    ref_model, ref_aw = reference(data)
    np.testing.assert_allclose(aw.s.numpy(), ref_aw.s.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.c1.weight.numpy(), ref_model.c1.weight.numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(aw.s.numpy() - 1.0).max() > 0.05  # σ (liebel's c, from 1.0) did move
    assert aw.s.grad is None or not np.any(aw.s.grad.numpy())  # cleared after the last update


@pytest.mark.parametrize("resume", [False, True])
def test_seed_000_way_is_refused_before_any_update(tmp_path, resume):
    """σ appended by hand (no attach): it was decayed, its gradient never cleared, and lost at a
    resume; now train's first training forward refuses it, before any update."""
    data = SegData(same=True)
    if resume:
        run("attach", data, tmp_path / "cut", iters=2, save_interval=2)
    with paddle.utils.unique_name.guard():  # the checkpoint's optimizer names, as a fresh process
        model, losses, opt = build("naive")
    w = model.c1.weight.numpy()
    with pytest.raises(RuntimeError, match=r"^AutoWeight\(method='liebel'\) has trainable parameters \(σ\), but it "
                                           r"is not attached to train's model.*Fix: call hapi_autoloss\.paddleseg\."
                                           r"attach\(model, losses, optimizer\) before train\.$"):
        train(model, losses, opt, data, tmp_path / "naive", iters=4,
              resume_model=str(tmp_path / "cut" / "iter_2") if resume else None)
    np.testing.assert_array_equal(losses["types"][0].s.numpy(), [1.0, 1.0])
    assert losses["types"][0].s.grad is None
    if not resume:
        np.testing.assert_array_equal(model.c1.weight.numpy(), w)


def test_weight_decay_does_not_reach_sigma(tmp_path):
    """With attach, σ ends the same whatever the network's weight decay (the network does not)."""
    data = SegData(same=True)
    runs = []
    for wd in (0.0, 0.9):
        model, losses, opt = build("attach", weight_decay=wd, iters=1)
        train(model, losses, opt, data, tmp_path / f"wd{wd}", iters=1)  # one step: the same gradient
        runs.append((losses["types"][0].s.numpy(), model.c1.weight.numpy()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert np.abs(runs[0][1] - runs[1][1]).max() > 1e-4


def test_resume_from_iter_checkpoint(tmp_path):
    data = SegData(same=True)  # train's sampler restarts its shuffle on resume: make batches order-free
    _, aw = run("attach", data, tmp_path / "full", save_interval=4)
    full = aw.s.numpy()
    run("attach", data, tmp_path / "cut", iters=4, schedule=8, save_interval=4)  # stopped at iter 4 of 8
    _, aw = run("attach", data, tmp_path / "resumed", resume_model=str(tmp_path / "cut" / "iter_4"))
    resumed = aw.s.numpy()
    saved = paddle.load(str(tmp_path / "full" / "iter_4" / "model.pdparams"))
    np.testing.assert_allclose(resumed, full, rtol=1e-6, atol=1e-7)
    assert "hapi_autoloss_0.weighting.s" in saved
