"""hapi_autoloss.loop: σ in a plain Paddle loop gets no decay, no clip, and one value on every rank."""

import ast
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest
from helpers import TwoTaskData, TwoTaskNet, kendall_loss, reference_sigma

from hapi_autoloss import AutoWeight
from hapi_autoloss.loop import param_groups, sync_gradients

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPT = paddle.optimizer
FAMILY = ["SGD", "Momentum", "Adam", "AdamW", "Adamax", "Adagrad", "Adadelta", "RMSProp", "Lamb"]
CLIP = 0.1


def decay_kw(name, value):
    return {"lamb_weight_decay": value} if name == "Lamb" else {"weight_decay": value}


def train(make_opts, epochs=3, net_cls=TwoTaskNet):
    """A plain loop: every optimizer from make_opts(net, loss) steps after each backward."""
    paddle.seed(0)
    net, loss = net_cls(), kendall_loss()
    opts = make_opts(net, loss)
    for _ in range(epochs):
        for x, y1, y2 in TwoTaskData(64).batches(16):
            o1, o2 = net(x)
            loss(o1, o2, y1, y2).backward()
            for opt in opts:
                opt.step()
                opt.clear_grad()
    return loss.s.numpy(), [p.numpy() for p in net.parameters()]


def test_adamw_plain_loop_matches_the_no_decay_reference():
    ours, _ = train(lambda net, loss: [OPT.AdamW(0.05, parameters=param_groups(net, loss), weight_decay=0.5)])
    naive, _ = train(lambda net, loss: [OPT.AdamW(0.05, parameters=net.parameters() + loss.parameters(),
                                                weight_decay=0.5)])
    expected, _ = reference_sigma(TwoTaskData(64), epochs=3, batch_size=16, opt="adamw", weight_decay=0.5)
    np.testing.assert_array_equal(ours, expected)
    # A flat list hands σ to AdamW's decoupled decay, which pulls s = log σ² towards 0.
    assert np.abs(naive - ours).max() > 1e-2
    assert np.all(np.abs(naive) < np.abs(ours))


@pytest.mark.parametrize("name", FAMILY)
def test_every_optimizer_leaves_sigma_undecayed_unclipped_and_the_network_unchanged(name):
    cls, decay = getattr(OPT, name), decay_kw(name, 0.5)

    def ours(net, loss):
        return [cls(learning_rate=0.05, parameters=param_groups(net, loss),
                    grad_clip=paddle.nn.ClipGradByGlobalNorm(CLIP), **decay)]

    def reference(net, loss):
        # The network alone in its optimizer; σ in another, with no decay and no clip.
        return [cls(learning_rate=0.05, parameters=net.parameters(), grad_clip=paddle.nn.ClipGradByGlobalNorm(CLIP),
                    **decay),
                cls(learning_rate=0.05, parameters=loss.parameters(),
                    **({"weight_decay": 0.0} if name == "AdamW" else decay_kw(name, 0.0) if name == "Lamb" else {}))]

    def naive(net, loss):
        return [cls(learning_rate=0.05, parameters=net.parameters() + loss.parameters(),
                    grad_clip=paddle.nn.ClipGradByGlobalNorm(CLIP), **decay)]

    s, w = train(ours)
    s_ref, w_ref = train(reference)
    s_naive, _ = train(naive)
    # Same starting point, same gradients, elementwise updates: equal to the bit, every step.
    np.testing.assert_array_equal(s, s_ref)
    for a, b in zip(w, w_ref):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(s, s_naive)  # the flat list clips σ (and AdamW, Lamb decay it)


def test_the_clip_in_that_test_bites():
    paddle.seed(0)
    net, loss = TwoTaskNet(), kendall_loss()
    x, y1, y2 = next(TwoTaskData(64).batches(16))
    loss(*net(x), y1, y2).backward()
    norm = np.sqrt(sum(float((p.grad**2).sum()) for p in net.parameters()))
    assert norm > 3 * CLIP


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_weight_decay_argument_is_the_networks_decay(name):
    cls = getattr(OPT, name)
    s, w = train(lambda net, loss: [cls(0.05, parameters=param_groups(net, loss, weight_decay=0.5),
                                        weight_decay=0.0)])
    s_ref, w_ref = train(lambda net, loss: [cls(0.05, parameters=net.parameters(), weight_decay=0.5),
                                            cls(0.05, parameters=loss.parameters(), weight_decay=0.0)])
    np.testing.assert_array_equal(s, s_ref)
    for a, b in zip(w, w_ref):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_lr_scale_multiplies_sigmas_learning_rate(name):
    cls = getattr(OPT, name)
    s, _ = train(lambda net, loss: [cls(0.05, parameters=param_groups(net, loss, lr_scale=4.0))])
    s_ref, _ = train(lambda net, loss: [cls(0.05, parameters=net.parameters()),
                                        cls(0.2, parameters=loss.parameters())])
    np.testing.assert_array_equal(s, s_ref)


class NetWithNoDecayScale(TwoTaskNet):
    """A parameter that asks for no decay, as PaddleDetection's norm layers do."""

    def __init__(self):
        super().__init__()
        self.scale = self.create_parameter(
            [1], attr=paddle.ParamAttr(regularizer=paddle.regularizer.L2Decay(0.0)),
            default_initializer=paddle.nn.initializer.Constant(1.0))

    def forward(self, x):
        return [o * self.scale for o in super().forward(x)]


@pytest.mark.parametrize("name", ["Momentum", "AdamW"])
def test_a_network_parameter_that_asks_for_no_decay_keeps_it(name):
    cls = getattr(OPT, name)

    def scale_value(make_opts):
        _, w = train(make_opts, net_cls=NetWithNoDecayScale)
        return w[-1]

    ours = scale_value(lambda net, loss: [cls(0.05, parameters=param_groups(net, loss), weight_decay=0.5)])
    def skip(net):  # Momentum honours the ParamAttr with a flat list; AdamW needs apply_decay_param_fun
        return {"apply_decay_param_fun": lambda n: n != net.scale.name} if name == "AdamW" else {}

    ref = scale_value(lambda net, loss: [cls(0.05, parameters=net.parameters(), weight_decay=0.5, **skip(net)),
                                         cls(0.05, parameters=loss.parameters(), weight_decay=0.0)])
    # Hand-written groups: Paddle gives the group's decay to every parameter in it.
    hand = scale_value(lambda net, loss: [cls(0.05, parameters=[{"params": net.parameters()},
                                                                {"params": loss.parameters(), "weight_decay": 0.0}],
                                              weight_decay=0.5)])
    np.testing.assert_array_equal(ours, ref)
    assert abs(float(hand[0]) - float(ours[0])) > 1e-3


def test_bad_input_names_the_fix():
    net, loss = TwoTaskNet(), kendall_loss()
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"lr_scale must be a finite number > 0.*Fix"):
            param_groups(net, loss, lr_scale=bad)
    with pytest.raises(ValueError, match=r"both in network and in loss.*Fix"):
        param_groups(net.parameters() + loss.parameters(), loss)
    with pytest.raises(TypeError, match=r"weight_decay must be a float.*Fix"):
        param_groups(net, loss, weight_decay=paddle.regularizer.L2Decay(0.1))
    with pytest.raises(TypeError, match=r"network must be a paddle.nn.Layer.*Fix"):
        param_groups("net", loss)
    with pytest.raises(ValueError, match=r"network has no trainable parameters.*Fix"):
        param_groups([], loss)
    with pytest.raises(TypeError, match=r"loss_or_params must be.*Fix"):
        sync_gradients(None)


def test_an_autoweight_with_nothing_to_learn_keeps_the_network_silently_and_another_loss_warns():
    """The README's loop with famo, stch or equal warned on every run ("nothing to fix if that is
    intended"); the plain-loop checks now tell a loop that forgets a method's calls."""
    import warnings

    net = TwoTaskNet()
    for method in ("equal", "famo", "stch"):
        loss = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method=method)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            groups = param_groups(net, loss)
        assert len(groups) == 1 and len(groups[0]["params"]) == len(net.parameters())
    with pytest.warns(UserWarning, match=r"The loss \(MSELoss\) has no trainable parameters and is no "
                                         r"AutoWeight.*Fix: pass the AutoWeight instance as loss"):
        groups = param_groups(net, paddle.nn.MSELoss())
    assert len(groups) == 1 and len(groups[0]["params"]) == len(net.parameters())


def test_a_network_parameter_with_its_own_decay_warns():
    net = TwoTaskNet()
    net.trunk.weight.regularizer = paddle.regularizer.L2Decay(1e-3)
    with pytest.warns(UserWarning, match="carry their own regularizer.*Fix"):
        param_groups(net, kendall_loss())


def test_sync_gradients_on_one_process_changes_nothing():
    paddle.seed(0)
    net, loss = TwoTaskNet(), kendall_loss()
    x, y1, y2 = next(TwoTaskData(64).batches(16))
    loss(*net(x), y1, y2).backward()
    before = loss.s.grad.numpy().copy()
    sync_gradients(loss)
    sync_gradients(list(loss.parameters()))
    np.testing.assert_array_equal(loss.s.grad.numpy(), before)


# ---------------------------------------------------------------- real processes


def run(tmp_path, name, script, *args, nproc=2):
    out = tmp_path / name
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=ROOT)
    for key in ("PADDLE_TRAINER_ID", "PADDLE_TRAINERS_NUM", "PADDLE_TRAINER_ENDPOINTS"):
        env.pop(key, None)
    launch = ["-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc), "--log_dir", str(out / "log")]
    cmd = [sys.executable, *(launch if nproc > 1 else []), script, *[str(a).replace("OUT", str(out)) for a in args]]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=600)
    logs = {f: (out / "log" / f).read_text() for f in sorted(os.listdir(out / "log"))} if nproc > 1 else {}
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + "".join(logs.values())[-4000:]
    return out, proc.stdout, logs


@pytest.mark.distributed
def test_two_process_plain_loop_keeps_sigma_identical(tmp_path):
    script = os.path.join(ROOT, "tests", "scripts", "dist_plain.py")
    out, _, _ = run(tmp_path, "naive", script, "OUT", "naive")
    naive = [np.load(out / f"rank{r}.npz") for r in (0, 1)]
    out, _, _ = run(tmp_path, "synced", script, "OUT", "synced")
    synced = [np.load(out / f"rank{r}.npz") for r in (0, 1)]
    out, _, _ = run(tmp_path, "single", script, "OUT", "synced", nproc=1)
    single = np.load(out / "rank0.npz")

    np.testing.assert_array_equal(naive[0]["w"], naive[1]["w"])  # DataParallel syncs the network...
    assert np.abs(naive[0]["s"] - naive[1]["s"]).max() > 1e-3  # ...but not σ
    np.testing.assert_array_equal(synced[0]["s"], synced[1]["s"])
    np.testing.assert_array_equal(synced[0]["w"], synced[1]["w"])
    # Two halves averaged = the whole batch on one process, to float32 rounding.
    np.testing.assert_allclose(synced[0]["s"], single["s"], rtol=1e-5)
    np.testing.assert_allclose(synced[0]["w"], single["w"], rtol=1e-5, atol=1e-6)


@pytest.mark.distributed
def test_a_rank_without_sigmas_gradient_takes_the_mean_of_the_others(tmp_path):
    out, _, _ = run(tmp_path, "missing", os.path.join(ROOT, "tests", "scripts", "dist_plain.py"), "OUT", "missing")
    ranks = [np.load(out / f"rank{r}.npz") for r in (0, 1)]
    np.testing.assert_array_equal(ranks[0]["s"], ranks[1]["s"])


def sigmas_printed(text, word="sigmas"):
    return [ast.literal_eval(m) for m in re.findall(rf"^{word} (\{{.*\}})$", text, re.M)]


def test_readme_example_learns_saves_and_resumes(tmp_path):
    script = os.path.join(ROOT, "examples", "plain_loop.py")
    out, stdout, _ = run(tmp_path, "ex", script, nproc=1)
    (first,) = sigmas_printed(stdout)
    assert first["y1"] == pytest.approx(2.0, rel=0.1) and first["y2"] == pytest.approx(0.3, rel=0.15)
    saved = paddle.load(str(out / "plain.autoloss.pdparams"))
    np.testing.assert_allclose(np.exp(0.5 * saved["weighting.s"].numpy()), [first["y1"], first["y2"]], rtol=1e-6)
    opt_state = paddle.load(str(out / "plain.pdopt"))
    sigma_moments = [k for k in opt_state if k.startswith("kendall") and "moment" in k]
    assert len(sigma_moments) == 2  # σ's AdamW moments are in the optimizer's file

    # A second process in the same folder resumes from exactly what the first saved.
    proc = subprocess.run([sys.executable, script], cwd=out, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sigmas_printed(proc.stdout, "resumed sigmas") == [first]


@pytest.mark.distributed
def test_readme_example_under_the_launcher_gives_one_sigma(tmp_path):
    _, _, logs = run(tmp_path, "ex2", os.path.join(ROOT, "examples", "plain_loop.py"))
    ranks = [sigmas_printed(logs[f"workerlog.{r}"]) for r in (0, 1)]
    assert len(ranks[0]) == 1 and ranks[0] == ranks[1]
    assert ranks[0][0]["y1"] == pytest.approx(2.0, rel=0.1)


def test_readme_shows_the_plain_loop_example_verbatim():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = readme.split("## Your own training loop", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert block == open(os.path.join(ROOT, "examples", "plain_loop.py"), encoding="utf-8").read()


def test_famo_in_a_plain_loop_learns_with_the_calls_param_groups_names():
    """famo has no parameter: param_groups warned 'nothing to learn', and its logits stayed at 0. The
    calls are named by training_calls(), and a loop that forgets one is warned (test_plain_checks)."""
    import warnings

    paddle.seed(0)
    net, loss = TwoTaskNet(), AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method="famo")
    assert loss.training_calls()[0].startswith("with paddle.no_grad(): loss.after_update")
    warnings.simplefilter("error")  # the correct loop warns nothing (pytest restores the filters)
    groups = param_groups(net, loss)
    opt = OPT.Adam(learning_rate=0.01, parameters=groups)
    for x, y1, y2 in TwoTaskData(64).batches(16):
        o1, o2 = net(x)
        loss(o1, o2, y1, y2).backward()
        opt.step()
        opt.clear_grad()
        with paddle.no_grad():  # the README's line
            loss.after_update(*net(x), y1, y2)
    logits = loss.weighting.logits.numpy()
    assert np.abs(logits).max() > 1e-3 and np.isfinite(logits).all()
    stch = AutoWeight([paddle.nn.MSELoss()], method="stch")
    assert stch.training_calls() == ["loss.end_epoch() after each epoch"]
    assert AutoWeight([paddle.nn.MSELoss()], method="kendall", task_types=["regression"]).training_calls() == []
