"""Gradient-level methods in PaddleSeg's own ``train`` after ``attach``: one iteration's update is the
float64 NumPy rule on the per-task gradients (taken with paddle.grad on a copy of the model); the
others train, and their parameters and buffers resume from ``iter_N/model.pdparams``."""

import numpy as np
import paddle
import pytest
from grad_helpers import LR, NAMES, build, conflicting, flat, mgda_rule, pcgrad_rule, per_task_rows
from seg_helpers import SegData, TinyNet, train

import hapi_autoloss.paddleseg as hp
from hapi_autoloss import param_groups


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
        assert 0.05 < alpha[0] < 0.95, alpha  # inside the segment: both tasks count
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


def run(method, data, save_dir, iters, schedule=8, options=None, **kw):
    with paddle.utils.unique_name.guard():  # optimizer state names as in a fresh process (resume matches them)
        model, aw, losses, opt = build(method, opt="adamw", iters=schedule, **(options or {}))
        hp.attach(model, losses, opt)
        train(model, losses, opt, data, save_dir, iters=iters, save_interval=4, **kw)
    return model, aw


@pytest.mark.parametrize("method, options", [("imtl", {}), ("gradnorm", {}), ("db_mtl", {}), ("nash_mtl", {}),
                                             ("rlw", {"seed": 0})])  # rlw: its random stream resumes too
def test_resume_from_iter_checkpoint(tmp_path, method, options):
    data = SegData(same=True)  # train's sampler restarts its shuffle on resume: make batches order-free
    full_model, full = run(method, data, tmp_path / "full", iters=8, options=options)
    run(method, data, tmp_path / "cut", iters=4, options=options)
    model, resumed = run(method, data, tmp_path / "resumed", iters=8, options=options,
                         resume_model=str(tmp_path / "cut" / "iter_4"))
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


def test_without_attach_the_first_forward_says_to_attach(tmp_path):
    model, _aw, losses, opt = build("pcgrad")
    before = flat(model)
    with pytest.raises(RuntimeError, match=r"does not know the network\. Fix: .*hapi_autoloss\.paddleseg\.attach"):
        train(model, losses, opt, SegData(n=4), tmp_path, iters=1)
    np.testing.assert_array_equal(flat(model), before)  # raised before any update


def train_with_c1_frozen(model, losses, opt, data, save_dir):
    """One train iteration with the backbone's first layer frozen, then unfrozen for what follows."""
    for p in model.c1.parameters():
        p.stop_gradient = True
    train(model, losses, opt, data, save_dir, iters=1)
    for p in model.c1.parameters():
        p.stop_gradient = False


def test_a_backbone_unfrozen_for_a_second_train_is_combined_with_the_rest(tmp_path):
    """c1 frozen for a first train, unfrozen for a second one (same model, losses and optimizer):
    the second train's update on every shared parameter is MGDA's rule on all of them."""
    data = SegData(n=4)
    model, aw, losses, opt = build("mgda", model=conflicting(data))
    hp.attach(model, losses, opt)
    train_with_c1_frozen(model, losses, opt, data, tmp_path / "a")
    rows, before = per_task_rows(model, data), flat(model)
    train(model, losses, opt, data, tmp_path / "b", iters=1)
    update = (before - flat(model)) / LR
    want, alpha = mgda_rule(rows)
    np.testing.assert_allclose(list(aw.used()[1].values()), alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(update, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_db_mtl_resumed_after_the_backbone_is_unfrozen_continues_exactly(tmp_path):
    """c1 frozen for one iteration (saved as iter_1), unfrozen for the next: a run resumed from
    iter_1 keeps db_mtl's buffer of c2's columns, as the uninterrupted run does, bit for bit."""
    data = SegData(same=True)

    def first():
        model, aw, losses, opt = build("db_mtl")
        hp.attach(model, losses, opt)
        train_with_c1_frozen(model, losses, opt, data, tmp_path / "cut")
        return model, aw, losses, opt

    model, aw, losses, opt = first()  # saves iter_1
    train(model, losses, opt, data, tmp_path / "full", iters=1)  # uninterrupted: the same objects go on
    resumed_model, resumed, losses, opt = build("db_mtl")
    hp.attach(resumed_model, losses, opt)
    train(resumed_model, losses, opt, data, tmp_path / "resumed", iters=2,
          resume_model=str(tmp_path / "cut" / "iter_1"))
    assert resumed.weighting.db_grads.shape == aw.weighting.db_grads.shape and float(resumed.weighting.db_step) == 2
    np.testing.assert_array_equal(resumed.weighting.db_grads.numpy(), aw.weighting.db_grads.numpy())
    np.testing.assert_array_equal(flat(resumed_model), flat(model))
