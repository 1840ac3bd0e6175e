"""What ``train`` refuses at its first training forward (σ in an optimizer attach did not set up), and
``resume_model`` into a loss built another way; the checks cost one stack walk per train call."""

import warnings

import numpy as np
import paddle
import pytest
from seg_helpers import SegData, TinyNet, run, train

import hapi_autoloss.paddleseg as hp
from hapi_autoloss.paddleseg import _train_frame

LR = 0.1
SECOND = (r"Fix: call attach\(model, losses, optimizer\) with the optimizer you pass to train \(again after "
          r"building a new one\)\.$")


def liebel(order=("ce", "dice"), method="liebel"):
    parts = {"ce": {"type": "SafeCrossEntropyLoss"}, "dice": {"type": "SafeDiceLoss"}}
    return hp.AutoWeight([parts[k] for k in order], method=method)


def setup():
    paddle.seed(0)
    model, aw = TinyNet(), liebel()
    return model, aw, {"types": [aw], "coef": [1]}


@pytest.mark.parametrize("case", ["built_after_attach", "built_before_attach"])
def test_an_optimizer_attach_did_not_set_up_is_refused(tmp_path, case):
    model, aw, losses = setup()
    first = paddle.optimizer.AdamW(LR, parameters=model.parameters(), weight_decay=0.5)
    hp.attach(model, losses, first)
    if case == "built_before_attach":  # σ not in it: σ never moved
        other = paddle.optimizer.AdamW(LR, parameters=[p for p in model.parameters() if p.name not in
                                                       {q.name for q in aw.parameters()}], weight_decay=0.5)
        why = r"is not in the optimizer given to train, so σ would never move\. "
    else:  # from model.parameters() after attach: σ in it, with AdamW's decay
        other = paddle.optimizer.AdamW(LR, parameters=model.parameters(), weight_decay=0.5)
        why = r"is in the optimizer given to train, but attach did not set that optimizer up.*"
    w = model.c1.weight.numpy()
    with pytest.raises(RuntimeError, match=r"^AutoWeight\(method='liebel'\)'s σ " + why + SECOND):
        train(model, losses, other, SegData(same=True), tmp_path, iters=1)
    np.testing.assert_array_equal(aw.s.numpy(), [1.0, 1.0])  # refused before any update
    np.testing.assert_array_equal(model.c1.weight.numpy(), w)


def test_attach_again_with_the_new_optimizer_trains_sigma_by_the_rule(tmp_path):
    """Re-attached to a second SGD(weight_decay=0.5): one step is the float64 liebel rule, no decay."""
    model, aw, losses = setup()
    hp.attach(model, losses, paddle.optimizer.AdamW(LR, parameters=model.parameters()))
    second = paddle.optimizer.SGD(LR, parameters=model.parameters(), weight_decay=0.5)
    hp.attach(model, losses, second)
    data = SegData(same=True)
    x = paddle.to_tensor(np.stack([data[0]["img"]] * 4))
    y = paddle.to_tensor(np.stack([data[0]["label"]] * 4))
    with paddle.no_grad():
        out = model(x)[0]
        task = np.array([float(f(out, y)) for f in aw.losses], dtype=np.float64)
    s0 = aw.s.numpy().astype(np.float64)
    train(model, losses, second, data, tmp_path, iters=1)
    grad = -task / s0**3 + 2 * s0 / (1 + s0**2)  # d/dσ [L/(2σ²) + ln(1 + σ²)]
    np.testing.assert_allclose(aw.s.numpy(), s0 - LR * grad, rtol=1e-6, atol=1e-7)
    assert np.abs(aw.s.numpy() - 1.0).min() > 1e-2


def test_one_stack_walk_per_train_call(tmp_path, monkeypatch):
    """Attached: the frame is read at each train call's first training forward, never per step."""
    calls = []
    walk = _train_frame.train_locals

    def counted():
        calls.append(1)
        return walk()

    monkeypatch.setattr(_train_frame, "train_locals", counted)
    model, aw, losses = setup()
    opt = paddle.optimizer.AdamW(LR, parameters=model.parameters())
    hp.attach(model, losses, opt)
    for k in range(2):
        train(model, losses, opt, SegData(same=True), tmp_path / str(k), iters=4)
    assert len(calls) == 3  # our check once per call (8 iterations), check_ema once ever
    aw.train()
    x = paddle.to_tensor(SegData(n=2).x)
    aw(model(x)[0], paddle.to_tensor(SegData(n=2).y)).backward()  # a plain loop: not refused


def test_resume_into_another_loss_is_refused_before_anything_loads(tmp_path):
    data = SegData(same=True)
    model, _ = run("attach", data, tmp_path / "cut", iters=2, save_interval=2)
    resume = str(tmp_path / "cut" / "iter_2")
    for order, method in ((("dice", "ce"), "liebel"), (("ce", "dice"), "kendall")):
        with paddle.utils.unique_name.guard():
            paddle.seed(0)
            net, aw = TinyNet(), liebel(order, method)
            losses = {"types": [aw], "coef": [1]}
            opt = paddle.optimizer.SGD(LR, parameters=net.parameters())
            hp.attach(net, losses, opt)
            before = [p.numpy() for p in net.parameters()]
            with pytest.raises(ValueError, match=r"^The checkpoint's hapi_autoloss_0\.seg_identity was saved by "
                                                 rf"another loss than this AutoWeight\(method='{method}', .*Fix: build "
                                                 r"the same loss \(method=\.\.\., tasks=\[\.\.\.\]\) as the "
                                                 r"checkpoint, or train without resume_model\.$"):
                train(net, losses, opt, data, tmp_path / method, iters=4, resume_model=resume)
            for p, b in zip(net.parameters(), before):
                np.testing.assert_array_equal(p.numpy(), b)  # nothing loaded
    assert np.abs(model.hapi_autoloss_0.s.numpy() - 1.0).max() > 1e-3


def test_an_older_checkpoint_without_the_identity_resumes_bit_for_bit(tmp_path):
    data = SegData(same=True)
    _, aw = run("attach", data, tmp_path / "full", iters=4)
    run("attach", data, tmp_path / "cut", iters=2, schedule=4, save_interval=2)
    path = tmp_path / "cut" / "iter_2" / "model.pdparams"
    saved = paddle.load(str(path))
    assert "hapi_autoloss_0.seg_identity" in saved
    paddle.save({k: v for k, v in saved.items() if not k.endswith("seg_identity")}, str(path))
    _, resumed = run("attach", data, tmp_path / "resumed", iters=4, resume_model=str(path.parent))
    np.testing.assert_array_equal(resumed.s.numpy(), aw.s.numpy())
    assert np.abs(aw.s.numpy() - 1.0).max() > 1e-3


def test_a_loss_used_outside_train_first_is_still_refused_unattached(tmp_path):
    """One grad-enabled call outside train (a smoke test) marked the loss checked for good: train
    then ran it unattached, σ stayed at 1 while its gradient added up."""
    model, aw, losses = setup()
    data = SegData(n=4)
    aw(model(paddle.to_tensor(data.x))[0], paddle.to_tensor(data.y))  # outside train: not refused
    opt = paddle.optimizer.SGD(LR, parameters=model.parameters())
    w = model.c1.weight.numpy()
    with pytest.raises(RuntimeError, match=r"is not attached to train's model.*Fix: call "
                                           r"hapi_autoloss\.paddleseg\.attach\(model, losses, optimizer\)"):
        train(model, losses, opt, data, tmp_path, iters=2)
    np.testing.assert_array_equal(model.c1.weight.numpy(), w)
    np.testing.assert_array_equal(aw.s.numpy(), [1.0, 1.0])


def test_the_identity_is_never_loaded_and_another_losss_state_is_refused(tmp_path):
    """AutoWeight.set_state_dict (README's read-σ-from-iter_N snippet) took another loss's identity:
    a kendall loss then passed for liebel's, and its own checkpoints were refused on resume."""
    data = SegData(same=True)
    run("attach", data, tmp_path / "cut", iters=2, save_interval=2)
    saved = paddle.load(str(tmp_path / "cut" / "iter_2" / "model.pdparams"))
    own = {k.removeprefix("hapi_autoloss_0."): v for k, v in saved.items() if k.startswith("hapi_autoloss_0.")}
    kendall = liebel(method="kendall")
    with pytest.raises(ValueError, match=r"another loss than this AutoWeight\(method='kendall'.*Fix: build the same "
                                         r"loss .*or load the state of a loss built like this one\.$"):
        kendall.set_state_dict(own)
    np.testing.assert_array_equal(kendall.s.numpy(), [0.0, 0.0])
    for state in (own, {k: v for k, v in own.items() if k != "seg_identity"}):  # older: no identity, no warning
        same = liebel()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            same.set_state_dict(state)
        np.testing.assert_array_equal(same.s.numpy(), own["weighting.s"].numpy())
    mine = liebel(method="kendall")
    mine.set_state_dict({**own, "seg_identity": mine.seg_identity})  # another loss's σ, said to be its own
    assert int(mine.seg_identity) != int(own["seg_identity"])  # its identity stays its own


def test_resume_with_an_optimizer_attach_did_not_set_up_is_refused_before_it_loads(tmp_path):
    data = SegData(same=True)
    run("attach", data, tmp_path / "cut", iters=2, save_interval=2)
    with paddle.utils.unique_name.guard():
        model, _aw, losses = setup()
        hp.attach(model, losses, paddle.optimizer.SGD(LR, parameters=model.parameters()))
        other = paddle.optimizer.SGD(LR, parameters=model.parameters())
        before = [p.numpy() for p in model.parameters()]
        with pytest.raises(RuntimeError, match=r"attach did not set that optimizer up.*" + SECOND):
            train(model, losses, other, data, tmp_path / "b", iters=4, resume_model=str(tmp_path / "cut" / "iter_2"))
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)  # resume had not loaded the checkpoint yet


def test_a_built_sub_loss_with_another_ignore_index_is_told_to_build_it_with_the_datasets():
    with pytest.raises(ValueError, match=r"Fix: build it with ignore_index=0, e\.g\. "
                                         r"SafeCrossEntropyLoss\(ignore_index=0\)\.$"):
        hp.AutoWeight([hp.SafeCrossEntropyLoss(), {"type": "SafeDiceLoss"}], method="liebel", ignore_index=0)
