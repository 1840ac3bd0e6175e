"""What a training step costs us, counted rather than timed: the host reads hapi_autoloss's
own code makes per step, that a line shows the values its step used all the same, and that
dropping σ's ``0·σ`` decay term leaves every update bit for bit as it was."""

from __future__ import annotations

import io
import re
import sys
from collections import Counter

import numpy as np
import paddle
import pytest
from helpers import TwoTaskData, TwoTaskNet, build_model, kendall_loss

from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback, TqdmProgressBar

STEPS = 6  # TwoTaskData(96), batch 16


class Mse(paddle.metric.Metric):
    """The first task's mean squared error, a metric TopKOnPlateau can monitor (hapi reads it, not us)."""

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, o1, o2, y1, y2) -> None:
        self.total += float(((np.asarray(o1) - np.asarray(y1)) ** 2).sum())
        self.count += len(y1)

    def accumulate(self) -> float:
        return self.total / max(self.count, 1)

    def name(self) -> str:
        return "mse"
READS = ("numpy", "item", "tolist", "__float__", "__int__", "__bool__", "__array__")


class StepReads:
    """Counts, per train step, the host reads made directly by hapi_autoloss's code (the real
    Tensor methods still run), split into the non-finite check's (``_hapi.finite``) and the
    others; also keeps σ as each step starts, i.e. the σ that step's forward uses.

    A step runs from one entry into ``model.train_batch`` to the next (its callbacks and
    AutoWeightCallback's work after the batch included); the last one to the end of fit.
    Not a callback: a callback AutoWeightCallback does not know makes it fill logs every step.
    """

    def __init__(self, model: paddle.Model, loss: AutoWeight, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: list[Counter[str]] = []
        self.s_before: list[np.ndarray] = []
        for name in READS:
            monkeypatch.setattr(paddle.Tensor, name, self._spy(getattr(paddle.Tensor, name)))
        inner = model.train_batch

        def train_batch(*args, **kwargs):
            self.s_before.append(None if loss.s is None else loss.s.numpy().astype(np.float64))  # not counted
            self.steps.append(Counter())
            return inner(*args, **kwargs)

        model.train_batch = train_batch

    def _spy(self, original):
        def read(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("hapi_autoloss") and self.steps:
                self.steps[-1]["check" if caller == "hapi_autoloss._hapi.finite" else "other"] += 1
            return original(tensor, *args, **kwargs)

        return read


def fit(model, callbacks=(), **kwargs):
    model.fit(TwoTaskData(96), epochs=1, batch_size=16, shuffle=False, callbacks=[AutoWeightCallback(), *callbacks],
              **kwargs)


def printed(out: str, key: str) -> dict[int, str]:
    """{step: value} from hapi's verbose=2 lines, e.g. 'step 4/6 - ... - sigma_y1: 1.0673 - ...'."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(rf"step (\d+)/\d+ .*?{key}: (\S+)", out)}


def test_no_read_of_ours_but_the_check_on_steps_no_line_prints(monkeypatch, capsys):
    loss = kendall_loss()
    model = build_model(loss)
    reads = StepReads(model, loss, monkeypatch)
    fit(model, verbose=2, log_freq=4)  # hapi prints after step 4 and at the epoch's end (step 6)
    assert len(reads.steps) == STEPS
    # Before each update: the loss, σ's gradient and the task losses (kendall needs them >= 0), one read
    # each; nothing else.
    assert [r["check"] for r in reads.steps] == [3] * STEPS
    # σ and the weights of one step come from one read of the s it used, on the printed steps only.
    assert [r["other"] for r in reads.steps] == [0, 0, 0, 1, 0, 1]
    out = capsys.readouterr().out
    for step in (4, STEPS):
        s = reads.s_before[step - 1]  # clamp (-10, 10) is not reached here
        assert printed(out, "sigma_y1")[step] == f"{np.exp(s[0] / 2):.4f}"
        assert printed(out, "weight_y2")[step] == f"{0.5 * np.exp(-s[1]):.4f}"
    assert sorted(printed(out, "sigma_y1")) == [4, STEPS]


def test_without_a_line_only_the_epoch_end_reads(monkeypatch):
    loss = kendall_loss()
    model = build_model(loss)
    reads = StepReads(model, loss, monkeypatch)
    fit(model, verbose=0)
    assert [r["other"] for r in reads.steps] == [0] * (STEPS - 1) + [1]  # logs hold the last step's at epoch end
    assert [r["check"] for r in reads.steps] == [3] * STEPS


def test_our_topk_callbacks_do_not_make_sigma_read_every_step(monkeypatch):
    """TopKScheduler and TopKOnPlateau never read σ from logs: AutoWeightCallback still fills
    them at the epoch's end only (a callback it does not know makes it read every step)."""
    from hapi_autoloss import TopKLoss
    from hapi_autoloss.callbacks import TopKOnPlateau, TopKScheduler

    for topk_callback in (TopKScheduler(start=1.0, end=0.5), TopKOnPlateau(monitor="mse", patience=0, verbose=0)):
        loss = AutoWeight({"y1": TopKLoss(paddle.nn.MSELoss(reduction="none"), ratio=1.0), "y2": paddle.nn.MSELoss()},
                          method="kendall", task_types=["regression", "regression"])  # fmt: skip
        model = build_model(loss)
        model.prepare(model._optimizer, loss, metrics=[Mse()])  # the plateau monitors the evaluation's mse
        reads = StepReads(model, loss, monkeypatch)
        fit(model, [topk_callback], verbose=0, eval_data=TwoTaskData(32))
        assert [r["other"] for r in reads.steps][:-1] == [0] * (STEPS - 1), type(topk_callback).__name__
        monkeypatch.undo()


def test_equal_reads_the_loss_only(monkeypatch):
    loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method="equal")
    model = build_model(loss)
    counts = Counter()
    for name in READS:
        original = getattr(paddle.Tensor, name)

        def read(tensor, *args, _original=original, _name=name, **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("hapi_autoloss"):
                counts[_name] += 1
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(paddle.Tensor, name, read)
    fit(model, verbose=2, log_freq=1)
    assert counts == Counter(numpy=STEPS)  # the check's read of the loss; equal's weights are known


class Spy(paddle.callbacks.Callback):
    """A callback AutoWeightCallback does not know: it may read logs at any step."""

    def __init__(self) -> None:
        super().__init__()
        self.sigma: list[float] = []

    def on_train_batch_end(self, step, logs=None):
        self.sigma.append(logs["sigma_y1"])


@pytest.mark.parametrize("reader", ["unknown callback", "tqdm"])
def test_a_reader_at_every_step_gets_every_step(monkeypatch, reader):
    loss = kendall_loss()
    model = build_model(loss)
    reads = StepReads(model, loss, monkeypatch)
    spy = Spy()
    extra = [spy] if reader == "unknown callback" else [TqdmProgressBar(verbose=2, log_freq=1, file=io.StringIO())]
    fit(model, extra, verbose=0)
    assert [r["other"] for r in reads.steps] == [1] * STEPS
    if reader == "unknown callback":
        np.testing.assert_allclose(spy.sigma, [np.exp(s[0] / 2) for s in reads.s_before], rtol=1e-6)


def train_batches(net, loss, opt):
    for x, y1, y2 in TwoTaskData(96).batches(16):
        loss(*net(x), y1, y2).backward()
        opt.step()
        opt.clear_grad()


@pytest.mark.parametrize("name, options", [("Adam", {}), ("AdamW", {"weight_decay": 0.0}),
                                           ("Lamb", {"lamb_weight_decay": 0.0})])
def test_sigma_updates_bit_for_bit_as_with_its_zero_decay_term(name, options):
    # The reference: Paddle adds σ's L2Decay(0.0) term (0·σ) to its gradient before each update.
    paddle.seed(0)
    net, ref = TwoTaskNet(), kendall_loss()
    cls = getattr(paddle.optimizer, name)
    opt = cls(learning_rate=0.05, parameters=[*net.parameters(), *ref.parameters()], **options)
    assert ref.s.regularizer is not None
    for _ in range(2):
        train_batches(net, ref, opt)
    loss = kendall_loss()
    model = build_model(loss)
    model.prepare(cls(learning_rate=0.05, parameters=model.parameters(), **options), loss)
    model.fit(TwoTaskData(96), epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
    np.testing.assert_array_equal(loss.s.numpy(), ref.s.numpy())
    for ours, theirs in zip(model.network.parameters(), net.parameters()):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert is_zero_decay(loss.s.regularizer)  # dropped for each update only


def is_zero_decay(regularizer) -> bool:
    return isinstance(regularizer, paddle.regularizer.L2Decay) and regularizer._coeff == 0.0


def test_an_update_that_raises_leaves_the_regularizer_in_place():
    class Broken(paddle.optimizer.Adam):
        def _append_optimize_op(self, block, param_and_grad):
            raise RuntimeError("update failed")

    loss = kendall_loss()
    model = build_model(loss)
    model.prepare(Broken(learning_rate=0.05, parameters=model.parameters()), loss)
    with pytest.raises(RuntimeError, match="update failed"):
        model.fit(TwoTaskData(96), epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback()])
    assert is_zero_decay(loss.s.regularizer)


@pytest.mark.parametrize("method, clamp", [("kendall", (-10.0, 10.0)), ("simple", (-0.5, 0.5)),
                                           ("liebel", (0.01, 100.0))])
def test_the_clamp_gives_the_former_values_and_gradient(method, clamp):
    options = {"task_types": ["regression"] * 5} if method == "kendall" else {}
    aw = AutoWeight([paddle.nn.MSELoss()] * 5, method=method, clamp=clamp, **options)
    lo, hi = clamp
    s = np.array([lo - 3.7, lo, 0.3 * lo + 0.7 * hi, hi, hi + 12.1], dtype=np.float32)
    aw.s.set_value(s)
    p = aw.weighting.clamped()
    np.testing.assert_array_equal(p.numpy(), s + (np.clip(s, lo, hi) - s))  # float32 arithmetic, as before
    p.sum().backward()
    np.testing.assert_array_equal(aw.s.grad.numpy(), np.ones(5, dtype=np.float32))  # straight through


@pytest.mark.parametrize("method, per_step", [
    ("mgda", 2),  # the finite flags, then the Gram matrix and losses for the float64 rule
    ("imtl", 2),  # the same as mgda: its scales e^s stay on the device
    ("db_mtl", 1),  # the finite flags only: its rule runs on the device, α is read when shown
    ("gradnorm", 1),  # the same; L(0) is kept on the device
])
def test_a_gradient_level_step_reads_the_host_once_or_twice(monkeypatch, method, per_step):
    loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method=method)
    model = build_model(loss)
    steps: list[Counter[str]] = []
    for name in READS:
        original = getattr(paddle.Tensor, name)

        def read(tensor, *args, _original=original, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("hapi_autoloss") and caller != "hapi_autoloss._hapi.finite" and steps:
                steps[-1]["other"] += 1
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(paddle.Tensor, name, read)
    inner = model.train_batch

    def train_batch(*args, **kwargs):
        steps.append(Counter())
        return inner(*args, **kwargs)

    model.train_batch = train_batch
    fit(model, verbose=0)
    assert [s["other"] for s in steps[:-1]] == [per_step] * (STEPS - 1)  # the last step holds the epoch end's


@pytest.mark.parametrize("method", ["kendall", "rlw"])
def test_accumulation_reads_the_batches_since_the_last_update_once(monkeypatch, method):
    """Their losses, so a NaN (or, for kendall, a loss < 0) among them never reaches the update: with
    kendall's read of its batch's losses, in that same read; the reset after it reads nothing."""
    loss = kendall_loss() if method == "kendall" else AutoWeight(
        {"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method="rlw", seed=0)
    model = build_model(loss)
    reads = StepReads(model, loss, monkeypatch)
    fit(model, verbose=0, accumulate_grad_batches=2)  # updates after steps 2, 4 and 6
    if method == "kendall":  # the loss, σ's gradient, both batches' losses
        assert [r["check"] for r in reads.steps] == [0, 3, 0, 3, 0, 3]
        assert [r["other"] for r in reads.steps] == [0, 0, 0, 0, 0, 1]  # the epoch end's σ at step 6
    else:  # no σ: the loss and the earlier batch's losses
        assert [r["check"] for r in reads.steps] == [0, 2, 0, 2, 0, 2]


class Twice(paddle.nn.Layer):
    """Deep supervision: one AutoWeight called on two sets of outputs in one forward."""

    def __init__(self, aw: AutoWeight) -> None:
        super().__init__()
        self.aw = aw

    def forward(self, o1, o2, y1, y2):
        return self.aw(o1, o2, y1, y2) + 0.4 * self.aw(o1 * 0.5, o2 * 0.5, y1, y2)


def test_one_loss_called_twice_per_forward_reads_nothing_more(monkeypatch):
    """Both calls are the batch whose losses the check reads: one read of both, nothing more."""
    aw = kendall_loss()
    model = build_model(Twice(aw))
    reads = StepReads(model, aw, monkeypatch)
    fit(model, verbose=0)
    assert [r["check"] for r in reads.steps] == [3] * STEPS
    assert [r["other"] for r in reads.steps] == [0] * (STEPS - 1) + [1]
