"""Gradient-level methods in PaddleSeg's own ``train`` after ``attach``: one iteration's update is the
float64 NumPy rule on the per-task gradients (taken with paddle.grad on a copy of the model); the
others train, and their parameters and buffers resume from ``iter_N/model.pdparams``."""

from collections import defaultdict

import numpy as np
import paddle
import pytest
from paddle.amp.grad_scaler import _refresh_optimizer_state
from seg_helpers import SegData, TinyNet, train

import hapi_autoloss.paddleseg as hp
from hapi_autoloss import param_groups

LR = 10.0  # one SGD step: a large one, so that the float32 rounding of the parameters is far below lr·g
NAMES = ["c1.weight", "c1.bias", "c2.weight", "c2.bias"]


def conflicting(data, steps=50):
    """TinyNet after ``steps`` SGD steps on Dice alone: there CE's and Dice's gradients conflict
    (cosine −0.02: pcgrad projects) and MGDA's min-norm point is inside the segment."""
    paddle.seed(0)
    model = TinyNet()
    opt = paddle.optimizer.SGD(0.5, parameters=model.parameters())
    x, y = paddle.to_tensor(data.x), paddle.to_tensor(data.y)
    for _ in range(steps):
        hp.SafeDiceLoss()(model(x)[0], y).backward()
        opt.step()
        opt.clear_grad()
    return model


def build(method, opt="sgd", iters=1, model=None, **options):
    paddle.seed(0)
    model = model or TinyNet()
    aw = hp.AutoWeight([{"type": "SafeCrossEntropyLoss"}, {"type": "SafeDiceLoss"}], method=method, **options)
    losses = {"types": [aw], "coef": [1]}
    if opt == "sgd":
        optimizer = paddle.optimizer.SGD(LR, parameters=model.parameters())
    else:
        sched = paddle.optimizer.lr.PolynomialDecay(0.05, decay_steps=iters, end_lr=0.0)
        optimizer = paddle.optimizer.AdamW(sched, parameters=model.parameters(), weight_decay=0.1)
    return model, aw, losses, optimizer


def per_task_rows(model, data):
    """Each task's gradient of the network's parameters [2, n] in float64, on a copy of the model
    (the whole dataset is the one batch: its 4 images in any order give the same means)."""
    copy = TinyNet()
    copy.set_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("hapi_autoloss")})
    logits = copy(paddle.to_tensor(data.x))[0]
    y = paddle.to_tensor(data.y)
    params = [dict(copy.named_parameters())[n] for n in NAMES]
    rows = []
    for loss in (hp.SafeCrossEntropyLoss()(logits, y), hp.SafeDiceLoss()(logits, y)):
        rows.append(np.concatenate([g.numpy().astype(np.float64).ravel()
                                    for g in paddle.grad(loss, params, retain_graph=True)]))
    return np.stack(rows)


def pcgrad_rule(g, seed):
    """PCGrad (Yu et al. 2020) with the vectors themselves: each g_i projected off every g_j it
    conflicts with, in a random order per task; the sum."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(g)):
        pc = g[i].copy()
        for j in rng.permutation(len(g)):
            if pc @ g[j] < 0:
                pc = pc - (pc @ g[j]) / (g[j] @ g[j]) * g[j]
        out.append(pc)
    return np.sum(out, axis=0)


def mgda_rule(g):
    """The min-norm point of the segment [g_1, g_2] (MGDA's two-task closed form)."""
    w = np.clip((g[1] @ g[1] - g[0] @ g[1]) / ((g[0] - g[1]) @ (g[0] - g[1])), 0.0, 1.0)
    return w * g[0] + (1 - w) * g[1], np.array([w, 1 - w])


def flat(model):
    params = dict(model.named_parameters())
    return np.concatenate([params[n].numpy().astype(np.float64).ravel() for n in NAMES])


@pytest.mark.parametrize("method", ["pcgrad", "mgda"])
def test_one_iteration_is_the_rule_on_the_per_task_gradients(tmp_path, method):
    data = SegData(n=4)
    options = {"seed": 3} if method == "pcgrad" else {}
    model, aw, losses, opt = build(method, model=conflicting(data), **options)
    assert hp.attach(model, losses, opt) == [aw]  # a method without parameters is bound and taken in
    rows, before = per_task_rows(model, data), flat(model)
    train(model, losses, opt, data, tmp_path, iters=1)
    update = (before - flat(model)) / LR  # SGD: the update is −lr·g
    if method == "pcgrad":
        want = pcgrad_rule(rows, seed=3)
    else:
        want, alpha = mgda_rule(rows)
        np.testing.assert_allclose(list(aw.used()[1].values()), alpha, rtol=1e-5, atol=1e-6)
    assert rows[0] @ rows[1] < 0  # the tasks conflict
    print(method, "max |update - rule|", np.abs(update - want).max(), "max |rule - plain sum|",
          np.abs(want - rows.sum(0)).max(), "max |rule|", np.abs(want).max())
    np.testing.assert_allclose(update, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert np.abs(want - rows.sum(0)).max() > 100 * np.abs(update - want).max()  # the rule is not the plain sum


@pytest.mark.parametrize("method", ["cagrad", "imtl", "nash_mtl", "aligned_mtl", "db_mtl", "gradnorm"])
def test_the_others_train_with_finite_weights(tmp_path, method):
    data = SegData(n=8)
    model, aw, losses, opt = build(method, opt="adamw", iters=4)
    own = {n: p.numpy().copy() for n, p in aw.named_parameters()}
    hp.attach(model, losses, opt)
    before = flat(model)
    train(model, losses, opt, data, tmp_path, iters=4)
    weights = np.array(list(aw.weights().values()))
    assert np.isfinite(weights).all() and np.isfinite(flat(model)).all()
    assert np.abs(flat(model) - before).max() > 1e-3
    for name, start in own.items():  # imtl's s, gradnorm's p: trained
        assert np.abs(dict(aw.named_parameters())[name].numpy() - start).max() > 1e-4, name
    assert {n for n, _ in aw.named_parameters()} == ({"weighting.s"} if method == "imtl" else
                                                     {"weighting.p"} if method == "gradnorm" else set())


def run(method, data, save_dir, iters, schedule=8, **kw):
    with paddle.utils.unique_name.guard():  # optimizer state names as in a fresh process (resume matches them)
        model, aw, losses, opt = build(method, opt="adamw", iters=schedule)
        hp.attach(model, losses, opt)
        train(model, losses, opt, data, save_dir, iters=iters, save_interval=4, **kw)
    return model, aw


@pytest.mark.parametrize("method", ["imtl", "gradnorm", "db_mtl", "nash_mtl"])
def test_resume_from_iter_checkpoint(tmp_path, method):
    data = SegData(same=True)  # train's sampler restarts its shuffle on resume: make batches order-free
    full_model, full = run(method, data, tmp_path / "full", iters=8)
    run(method, data, tmp_path / "cut", iters=4)
    model, resumed = run(method, data, tmp_path / "resumed", iters=8, resume_model=str(tmp_path / "cut" / "iter_4"))
    saved = paddle.load(str(tmp_path / "cut" / "iter_4" / "model.pdparams"))
    assert any(k.startswith("hapi_autoloss_0.weighting.") for k in saved)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        np.testing.assert_allclose(b.numpy().astype(np.float64), a.numpy().astype(np.float64),
                                   rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(flat(model), flat(full_model), rtol=1e-5, atol=1e-6)


def test_nothing_to_attach_warns_and_returns_nothing():
    paddle.seed(0)
    model = TinyNet()
    aw = hp.AutoWeight([{"type": "SafeCrossEntropyLoss"}, {"type": "SafeDiceLoss"}], method="equal")
    with pytest.warns(UserWarning, match="nothing to do"):
        assert hp.attach(model, {"types": [aw], "coef": [1]},
                         paddle.optimizer.SGD(LR, parameters=model.parameters())) == []
    assert not any(True for _ in model.named_sublayers() if _[0].startswith("hapi_autoloss"))


def test_the_loss_parameters_are_not_the_network_ones(tmp_path):
    """After attach imtl's s is a parameter of the model (for PaddleSeg's optimizer and checkpoints)
    but never one of the network's that the per-task pass differentiates; and one iteration of
    train is one step of a plain loop whose optimizer holds the network and the loss apart."""
    data = SegData(n=4)
    model, aw, losses, opt = build("imtl")
    hp.attach(model, losses, opt)
    assert any(p is aw.weighting.s for p in model.parameters())
    assert [id(p) for p in aw._pertask._params()] == [id(dict(model.named_parameters())[n]) for n in NAMES]
    train(model, losses, opt, data, tmp_path, iters=1)
    ref_model, ref_aw, _, _ = build("imtl")
    ref_opt = paddle.optimizer.SGD(LR, parameters=param_groups(ref_model, ref_aw))
    ref_aw(ref_model(paddle.to_tensor(data.x))[0], paddle.to_tensor(data.y)).backward()
    ref_opt.step()
    np.testing.assert_allclose(flat(model), flat(ref_model), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(aw.weighting.s.numpy(), ref_aw.weighting.s.numpy(), rtol=1e-5, atol=1e-7)
    assert np.abs(aw.weighting.s.numpy()).max() > 1e-4  # s trained (from 0)


GRAD_SCALER = paddle.amp.GradScaler


def enabled_scaler(scale):
    """A static-scale GradScaler that scales on this CPU (paddle 3.3.1 disables one off a GPU):
    what PaddleSeg's ``train(precision="fp16")`` builds on a GPU."""
    scaler = GRAD_SCALER(enable=False, use_dynamic_loss_scaling=False)
    scaler._enable, scaler._scale = True, paddle.to_tensor([scale], dtype="float32")
    for name in ("_found_inf", "_temp_found_inf_value_false", "_temp_found_inf_fp16", "_temp_found_inf_bf16",
                 "_temp_found_inf_fp32"):
        setattr(scaler, name, paddle.to_tensor([False]))
    scaler._cache_found_inf, scaler._optimizer_states = None, defaultdict(_refresh_optimizer_state)
    return scaler


@pytest.mark.parametrize("scale", [1024.0, float("inf")])
def test_amp_the_per_task_pass_uses_trains_scaler(tmp_path, monkeypatch, scale):
    """precision="fp16": the forward reads the scale of train's own GradScaler (a local of train),
    scales each task's loss by it and unscales the gradients: the update is fp32's. An overflow
    (inf) is the scaler's to skip: nothing moves and the method does not see the step."""
    data = SegData(n=4)
    runs = {}
    for precision in ("fp32", "fp16"):
        model, aw, losses, opt = build("mgda", model=conflicting(data))
        hp.attach(model, losses, opt)
        seen, inner = [], aw._pertask._amp_scale
        aw._pertask._amp_scale = lambda inner=inner, seen=seen: seen.append(inner()) or seen[-1]
        if precision == "fp16":
            monkeypatch.setattr(paddle.amp, "GradScaler", lambda **kw: enabled_scaler(scale))
        before = flat(model)
        train(model, losses, opt, data, tmp_path / precision, iters=1, precision=precision)
        runs[precision] = (before, flat(model), [None if s is None else float(s) for s in seen], aw.used()[1])
    assert runs["fp32"][2] == [None] and runs["fp16"][2] == [scale]
    if np.isfinite(scale):
        np.testing.assert_allclose(runs["fp16"][1], runs["fp32"][1], rtol=1e-6, atol=1e-7)
        assert runs["fp16"][3] == runs["fp32"][3]
    else:
        np.testing.assert_array_equal(runs["fp16"][1], runs["fp16"][0])  # skipped
        assert list(runs["fp16"][3].values()) == [1.0, 1.0]  # mgda's α were never computed
    assert hp._grad.amp_scale() is None  # outside train
