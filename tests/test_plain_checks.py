"""A plain training loop is told (a UserWarning, once per loss) what AutoWeightCallback would have made
impossible: a call the method needs left out (famo's after_update, dwa's and stch's end_epoch), σ not
averaged over ranks, a gradient-level step zeroed for a non-finite loss; a correct loop hears nothing,
and neither does model.fit."""

import os
import re
import warnings

import numpy as np
import paddle
import pytest
from helpers import ROOT, TwoTaskData, TwoTaskNet, build_model, launch_two_ranks

from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback
from hapi_autoloss.loop import param_groups, sync_gradients
from hapi_autoloss.weighting import _plain

DATA = TwoTaskData(128)


def make(method, **options):
    paddle.seed(0)
    if method == "kendall":
        options["task_types"] = ["regression", "regression"]
    return TwoTaskNet(), AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method=method, **options)


def loop(net, loss, epochs, after_update=True, end_epoch=True, accumulate=1, nan_at=None):
    """The README's recipe (param_groups, sync_gradients, end_epoch, famo's after_update), with
    ``accumulate`` micro-batches of 16 rows per update (gradients added up by hand)."""
    grouped = loss.parameters() or loss.method in ("pcgrad", "mgda")  # else param_groups says there is no σ
    opt = paddle.optimizer.Adam(0.02, parameters=param_groups(net, loss) if grouped else net.parameters())
    steps = 0
    for _epoch in range(epochs):
        for x, y1, y2 in DATA.batches(32):
            for part in range(accumulate):
                rows = slice(part * 32 // accumulate, (part + 1) * 32 // accumulate)
                b1 = y1[rows].clone()
                if nan_at is not None and steps == nan_at:
                    b1[0, 0] = float("nan")
                loss(*net(x[rows]), b1, y2[rows]).backward()
            sync_gradients(loss)
            opt.step()
            opt.clear_grad()
            steps += 1
            if after_update and "after_update" in type(loss.weighting).training_hooks():
                with paddle.no_grad():
                    loss.after_update(*net(x[rows]), b1, y2[rows])
        if end_epoch:
            loss.end_epoch()
    return opt


@pytest.mark.parametrize("method", ["famo", "dwa", "stch", "kendall", "pcgrad"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_correct_plain_loop_warns_nothing(method, accumulate):
    net, loss = make(method, **({"warmup_epochs": 1} if method == "stch" else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop(net, loss, epochs=4, accumulate=accumulate)
    if method == "famo":
        assert np.abs(loss.weighting.logits.numpy()).max() > 0  # it learned
    if method in ("dwa", "stch"):
        assert int(loss.weighting.epochs_seen) == 4


def test_famo_without_after_update_warns_at_the_epoch_end():
    net, loss = make("famo")
    with pytest.warns(UserWarning, match=r"saw 8 training forwards \(more than this epoch's 4\) without "
                                         r"loss\.after_update") as rec:
        loop(net, loss, epochs=3, after_update=False)  # the second epoch's end: two epochs without it
    assert len([w for w in rec if "after_update" in str(w.message)]) == 1  # once per loss
    assert "Fix: call with paddle.no_grad(): loss.after_update(" in str(rec[0].message)
    np.testing.assert_array_equal(loss.weighting.logits.numpy(), [0.0, 0.0])  # what it warns about


@pytest.mark.parametrize("batches", [1, 4])
def test_famo_closing_each_epoch_before_its_one_update_warns_nothing(batches):
    """A full-batch loop (one forward, one update per epoch), or one update accumulated over a whole
    epoch, that calls end_epoch() before after_update(): correct, so silent."""
    net, loss = make("famo")
    opt = paddle.optimizer.Adam(0.05, parameters=net.parameters())
    x, y1, y2 = next(DATA.batches(32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _epoch in range(3):
            for part in range(batches):
                rows = slice(part * 32 // batches, (part + 1) * 32 // batches)
                loss(*net(x[rows]), y1[rows], y2[rows]).backward()
            opt.step()
            opt.clear_grad()
            loss.end_epoch()
            with paddle.no_grad():
                loss.after_update(*net(x), y1, y2)
    assert float(loss.weighting.adam_t) == 3  # every update reached famo


def test_one_training_forward_is_singular(monkeypatch):
    monkeypatch.setattr(_plain, "PER_UPDATE", 0)
    net, loss = make("famo")
    x, y1, y2 = next(DATA.batches(32))
    with pytest.warns(UserWarning, match=r"saw 1 training forward in a row without loss\.after_update"):
        loss(*net(x), y1, y2)


def _warned(run):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [w for w in caught if "AutoWeight(method=" in str(w.message)]


def test_each_warning_names_the_users_line(monkeypatch):
    """Whichever path warns (a forward inside paddle's Layer.__call__, end_epoch, a gradient-level
    method's step), the warning points at this file, not into hapi_autoloss or paddle."""
    monkeypatch.setattr(_plain, "PER_UPDATE", 2)
    monkeypatch.setattr(_plain, "PER_EPOCH", 2)
    monkeypatch.setattr(_plain, "world", lambda: (0, 2))  # "under the launcher": the σ check is on
    x, y1, y2 = next(DATA.batches(32))
    net, famo = make("famo")
    _, dwa = make("dwa")
    _, kendall = make("kendall")
    _, kendall_epoch = make("kendall")
    _, pcgrad = make("pcgrad")
    pcgrad.set_network(net)
    nan = y1.clone()
    nan[0, 0] = float("nan")

    def epochs(loss):  # two epochs of one forward: the epoch-end rule, not "in a row", warns
        for _ in range(2):
            loss(*net(x), y1, y2)
            loss.end_epoch()

    caught = (_warned(lambda: [famo(*net(x), y1, y2) for _ in range(3)])
              + _warned(lambda: [dwa(*net(x), y1, y2) for _ in range(3)])
              + _warned(lambda: [kendall(*net(x), y1, y2) for _ in range(3)])
              + _warned(lambda: epochs(kendall_epoch))
              + _warned(lambda: pcgrad(*net(x), nan, y2)))
    texts = [str(w.message)[:60] for w in caught]
    assert len(caught) == 5, texts
    assert "in an epoch" not in str(caught[3].message) and "more than this epoch's 1" in str(caught[3].message)
    assert {w.filename for w in caught} == {__file__}, [(w.filename, w.lineno) for w in caught]


def test_sigma_inside_one_data_parallel_with_the_network_is_not_warned(monkeypatch):
    """paddle.DataParallel(a layer holding the network and the loss) averages σ itself (a 2-rank
    launch checks the σ: tests/scripts/dist_plain_warn.py); one with the network alone does not."""
    monkeypatch.setattr(_plain, "PER_UPDATE", 2)
    monkeypatch.setattr(_plain, "world", lambda: (0, 2))

    class Full(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.net, self.loss = make("kendall")

        def forward(self, x, y1, y2):
            return self.loss(*self.net(x), y1, y2)

    x, y1, y2 = next(DATA.batches(32))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The program will return to single-card")  # one process here
        both, alone = paddle.DataParallel(Full()), Full()
        net_only = paddle.DataParallel(alone.net)
    assert not _warned(lambda: [both(x, y1, y2) for _ in range(4)])
    assert both._layers.loss._plain.sync is False
    assert len(_warned(lambda: [alone.loss(*net_only(x), y1, y2) for _ in range(4)])) == 1


def test_famo_without_after_update_warns_without_epoch_ends_past_the_limit():
    net, loss = make("famo")
    with pytest.warns(UserWarning, match=rf"saw {_plain.PER_UPDATE + 1} training forwards in a row without "):
        loop(net, loss, epochs=_plain.PER_UPDATE // 4 + 1, after_update=False, end_epoch=False)


@pytest.mark.parametrize("method", ["dwa", "stch"])
def test_epoch_methods_without_end_epoch_warn_past_the_limit(method, monkeypatch):
    monkeypatch.setattr(_plain, "PER_EPOCH", 10)  # a million forwards in the library
    net, loss = make(method)
    with pytest.warns(UserWarning, match=r"saw 11 training forwards without loss\.end_epoch\(\).*Fix: call "
                                         r"loss\.end_epoch\(\) after each epoch\."):
        loop(net, loss, epochs=3, end_epoch=False)
    assert int(loss.weighting.epochs_seen) == 0


@pytest.mark.parametrize("method", ["pcgrad", "mgda"])
def test_a_zeroed_gradient_level_step_warns_once_naming_the_task(method):
    net, loss = make(method)
    with pytest.warns(UserWarning) as rec:
        opt = loop(net, loss, epochs=1, nan_at=1)
        x, y1, y2 = next(DATA.batches(32))
        y1 = y1.clone()
        y1[0, 0] = float("nan")
        total = loss(*net(x), y1, y2)
        total.backward()
    texts = [str(w.message) for w in rec if "zero" in str(w.message)]
    assert len(texts) == 1, texts
    assert texts[0].startswith("task 'y1' = nan at a training forward")
    assert "still advance its moments" in texts[0] and "Fix: skip opt.step() for that batch" in texts[0]
    assert all(float(np.abs(p.grad.numpy()).max()) == 0.0 for p in net.parameters())  # what it warns about
    opt.clear_grad()


def test_the_unknown_network_error_names_set_network():
    net, loss = make("pcgrad")
    opt = paddle.optimizer.Adam(0.01, parameters=net.parameters())
    x, y1, y2 = next(DATA.batches(32))
    with pytest.raises(RuntimeError, match=r"param_groups\(network, loss\), or call loss\.set_network\(network\)"):
        loss(*net(x), y1, y2)
    loss.set_network(net)  # the fix it names: trains with its own optimizer
    loss(*net(x), y1, y2).backward()
    opt.step()


def test_fit_hears_none_of_it(monkeypatch):
    monkeypatch.setattr(_plain, "PER_UPDATE", 1)
    monkeypatch.setattr(_plain, "PER_EPOCH", 1)
    for method in ("famo", "dwa"):
        _, loss = make(method)
        model = build_model(loss)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(DATA, batch_size=32, epochs=2, verbose=0, callbacks=[AutoWeightCallback()])
        assert not [w for w in caught if "AutoWeight(method=" in str(w.message)]  # (hapi's own may warn)
        assert not loss._plain.in_epoch and not loss._plain.since_update


@pytest.mark.distributed
def test_two_ranks_without_sync_gradients_warn_once(tmp_path):
    script = os.path.join(ROOT, "tests", "scripts", "dist_plain_warn.py")
    proc, logs = launch_two_ranks(script, log_dir=tmp_path / "log", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-4000:]
    for rank in (0, 1):
        assert f"RANK{rank} synced-ok" in logs
        (line,) = re.findall(rf"^RANK{rank} warned .*$", logs, re.M)
        assert line.startswith(f"RANK{rank} warned 1 "), line
        assert "saw 8 training forwards (more than this epoch's 4) without hapi_autoloss.sync_gradients" in line
    sigmas = [re.search(rf"^RANK{r} warned 1 (\[.*?\])", logs, re.M).group(1) for r in (0, 1)]
    assert sigmas[0] != sigmas[1]  # what it warns about: each rank its own σ
    # one paddle.DataParallel of the network and the loss averages σ itself: the same σ, no warning
    both = [re.search(rf"^RANK{r} dp-full warned (\d+) (\[.*?\])", logs, re.M).groups() for r in (0, 1)]
    assert both[0] == both[1] and both[0][0] == "0", both
    assert both[0][1] not in sigmas
