"""TopKScheduler through real paddle.Model.fit runs: values, nesting, errors, resume."""

from __future__ import annotations

import os

import numpy as np
import paddle
import pytest
from paddle.callbacks import Callback

import hapi_autoloss
from hapi_autoloss import AutoWeight, TopKLoss, schedules
from hapi_autoloss.callbacks import AutoWeightCallback, TopKScheduler

N, BATCH = 24, 8  # 3 steps per epoch


class Blobs(paddle.io.Dataset):
    def __init__(self, n: int = N, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.y = rng.integers(0, 3, (n, 1)).astype("int64")
        self.x = (rng.standard_normal((n, 4)) + self.y).astype("float32")

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __len__(self):
        return len(self.x)


class Stream(paddle.io.IterableDataset):
    """No length: hapi cannot know the steps per epoch."""

    def __iter__(self):
        data = Blobs()
        for i in range(len(data)):
            yield data[i]


class RecordingTopK(TopKLoss):
    """Records the ratio each training forward actually uses."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.used: list[float] = []

    def forward(self, *inputs):
        self.used.append(self.ratio)
        return super().forward(*inputs)


class LogRecorder(Callback):
    def __init__(self):
        self.logged: list[float] = []
        self.metrics: list[str] = []

    def on_train_begin(self, logs=None):
        self.metrics = self.params["metrics"]

    def on_train_batch_end(self, step, logs=None):
        self.logged.append(logs["topk_ratio"])


def ce():
    return paddle.nn.CrossEntropyLoss(reduction="none")


def build(loss, seed=0):
    paddle.seed(seed)
    net = paddle.nn.Linear(4, 3)
    model = paddle.Model(net, inputs=[paddle.static.InputSpec([None, 4], "float32", "x")],
                         labels=[paddle.static.InputSpec([None, 1], "int64", "y")])
    model.prepare(paddle.optimizer.Adam(0.01, parameters=net.parameters()), loss)
    return model


def fit(model, epochs, callbacks, data=None, **kwargs):
    model.fit(data if data is not None else Blobs(), epochs=epochs, batch_size=BATCH, shuffle=False,
              verbose=0, callbacks=callbacks, **kwargs)


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("schedule", schedules.SCHEDULES)
def test_by_epoch_every_epoch_follows_the_formula(schedule):
    loss = RecordingTopK(ce(), ratio=0.5)
    rec = LogRecorder()
    fit(build(loss), 5, [TopKScheduler(1.0, 0.1, schedule=schedule, by="epoch"), rec])
    want = [schedules.ratio_at(e, 5, schedule, 1.0, 0.1) for e in range(5) for _ in range(3)]
    assert loss.used == pytest.approx(want, abs=1e-12)
    assert rec.logged == loss.used  # the progress bar shows the value the batch used
    assert loss.used[0] == 1.0 and loss.used[-1] == 0.1
    assert "topk_ratio" in rec.metrics


@pytest.mark.parametrize("schedule", schedules.SCHEDULES)
def test_by_step_every_step_follows_the_formula(schedule):
    loss = RecordingTopK(ce())
    fit(build(loss), 3, [TopKScheduler(0.9, 0.2, schedule=schedule, by="step")])
    want = [schedules.ratio_at(t, 9, schedule, 0.9, 0.2) for t in range(9)]
    assert loss.used == pytest.approx(want, abs=1e-12)
    assert loss.used[0] == 0.9 and loss.used[-1] == 0.2
    if schedule == "linear":
        assert loss.used == pytest.approx([0.9 - 0.7 * t / 8 for t in range(9)])
    if schedule == "exp":
        assert loss.used == pytest.approx([0.9 * (0.2 / 0.9) ** (t / 8) for t in range(9)])


def test_fit_anneals_from_one_to_a_tenth():
    loss = RecordingTopK(ce())
    rec = LogRecorder()
    fit(build(loss), 10, [TopKScheduler(), rec])
    per_epoch = loss.used[::3]
    assert per_epoch == pytest.approx([1.0 - 0.1 * e for e in range(10)])
    assert rec.logged[0] == 1.0 and rec.logged[-1] == 0.1


def test_warmup_then_hold_after_total():
    loss = RecordingTopK(ce())
    fit(build(loss), 3, [TopKScheduler(1.0, 0.4, by="step", warmup=2, total=5)])
    assert loss.used == pytest.approx([1.0, 1.0, 0.8, 0.6, 0.4, 0.4, 0.4, 0.4, 0.4])


def test_deeplab_schedule():
    loss = RecordingTopK(ce())
    sched = TopKScheduler.deeplab(top_k=0.2, hard_example_mining_step=4)
    fit(build(loss), 2, [sched])
    assert loss.used == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2])


def test_single_epoch_trains_at_end_and_num_iters_sets_the_step_total():
    loss = RecordingTopK(ce())
    fit(build(loss), 1, [TopKScheduler(1.0, 0.3)])
    assert loss.used == [0.3, 0.3, 0.3]
    loss = RecordingTopK(ce())
    fit(build(loss), 1, [TopKScheduler(1.0, 0.2, by="step")], num_iters=5)
    assert loss.used == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def test_reaches_topk_losses_nested_in_autoweight():
    a, b = RecordingTopK(ce(), per="sample"), RecordingTopK(ce(), per="pixel")
    aw = AutoWeight({"hard": a, "soft": b}, method="liebel", routing="shared")
    model = build(aw)
    fit(model, 4, [AutoWeightCallback(), TopKScheduler(1.0, 0.1)])
    want = [schedules.ratio_at(e, 4) for e in range(4) for _ in range(3)]
    assert a.used == pytest.approx(want) and b.used == pytest.approx(want)
    assert a.ratio == b.ratio == 0.1


def test_progress_bar_shows_topk_ratio(capsys):
    fit_kwargs = {"verbose": 2, "log_freq": 1}
    model = build(TopKLoss(ce()))
    model.fit(Blobs(), epochs=2, batch_size=BATCH, shuffle=False, callbacks=[TopKScheduler()], **fit_kwargs)
    out = capsys.readouterr().out
    assert "topk_ratio: 1.0000" in out and "topk_ratio: 0.1000" in out


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"start": 0.1, "end": 0.5}, ValueError, r"end \(0.5\) is above start \(0.1\).*Fix"),
        ({"start": 0.0}, ValueError, r"start must be in \(0, 1\].*Fix"),
        ({"start": 1.5}, ValueError, r"start must be in \(0, 1\].*Fix"),
        ({"end": 0.0}, ValueError, r"end must be in \(0, 1\].*Fix"),
        ({"end": -0.2}, ValueError, r"end must be in \(0, 1\].*Fix"),
        ({"end": "low"}, TypeError, r"end must be a number in \(0, 1\].*Fix"),
        ({"schedule": "poly"}, ValueError, r"Unknown schedule 'poly'.*Fix: use one of linear, cosine"),
        ({"by": "batch"}, ValueError, r"Unknown by 'batch'.*Fix: by='epoch'"),
        ({"warmup": -1}, ValueError, r"warmup must be an int >= 0.*Fix"),
        ({"warmup": 1.5}, ValueError, r"warmup must be an int >= 0"),
        ({"total": 0}, ValueError, r"total must be an int >= 1.*Fix"),
        ({"drops": 0}, ValueError, r"drops must be an int >= 1.*Fix"),
        ({"warmup": 5, "total": 5}, ValueError, r"warmup \(5 epochs\) is not shorter.*Fix"),
    ],
)
def test_bad_arguments_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TopKScheduler(**kwargs)


def test_errors_at_train_begin_come_before_any_step():
    model = build(paddle.nn.CrossEntropyLoss())
    before = [p.numpy().copy() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"no TopKLoss in the model's loss \(CrossEntropyLoss\).*Fix"):
        fit(model, 1, [TopKScheduler()])
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)  # nothing was trained

    loader = paddle.io.DataLoader(Stream(), batch_size=BATCH)
    with pytest.raises(ValueError, match=r"needs the number of training steps.*Fix: pass total="):
        build(TopKLoss(ce())).fit(loader, epochs=2, verbose=0, callbacks=[TopKScheduler(by="step")])
    # ... which total= fixes
    loss = RecordingTopK(ce())
    build(loss).fit(loader, epochs=2, verbose=0, callbacks=[TopKScheduler(1.0, 0.5, by="step", total=6)])
    assert loss.used == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])

    with pytest.raises(ValueError, match=r"warmup \(3 epochs\) is not shorter than the schedule \(3 epochs\)"):
        fit(build(TopKLoss(ce())), 3, [TopKScheduler(warmup=3)])


# ---------------------------------------------------------------- resume


def test_resume_continues_the_schedule_from_a_checkpoint(tmp_path):
    full = RecordingTopK(ce())
    fit(build(full), 4, [TopKScheduler(schedule="cosine")], save_dir=str(tmp_path), save_freq=1)
    ckpt = str(tmp_path / "1")  # written after epochs 0 and 1
    assert os.path.exists(ckpt + hapi_autoloss._hapi.STATE_SUFFIX)

    resumed = RecordingTopK(ce())
    model = build(resumed, seed=1)
    # In one process the optimizer's accumulator names differ from the saving run's,
    # so only the weights are loaded here; the schedule's state is what is tested.
    model.load(ckpt, reset_optimizer=True)
    hapi_autoloss.load_state(model, ckpt)
    sched = TopKScheduler(schedule="cosine")
    fit(model, 2, [sched])  # hapi has no initial_epoch: the remaining 2 epochs
    assert resumed.used == full.used[6:]
    assert resumed.used[-1] == 0.1
    assert sched.state_dict() == {"by": "epoch", "epochs_done": 4, "steps_done": 12, "total": 4, "ratio": 0.1,
                                  "drop": None}


@pytest.mark.parametrize("first", ["checkpoint", "scheduler"])
def test_a_model_checkpoint_listed_first_holds_the_epoch_it_ends(tmp_path, first):
    """ModelCheckpoint saves at its own on_epoch_end: listed before the scheduler, it wrote the
    position before that epoch was counted, so a resume replayed one ratio and never reached end."""
    full = RecordingTopK(ce())
    checkpoint = paddle.callbacks.ModelCheckpoint(save_freq=1, save_dir=str(tmp_path))
    sched = TopKScheduler(1.0, 0.1)
    fit(build(full), 10, [checkpoint, sched] if first == "checkpoint" else [sched, checkpoint])
    ckpt = str(tmp_path / "4")  # written after epochs 0-4
    assert hapi_autoloss.checkpoint_info(ckpt)["epoch"] == 5
    resumed = RecordingTopK(ce())
    model = build(resumed, seed=1)
    model.load(ckpt, reset_optimizer=True)
    hapi_autoloss.load_state(model, ckpt)
    fit(model, 5, [TopKScheduler(1.0, 0.1)])
    assert resumed.used == full.used[15:] and resumed.used[-1] == pytest.approx(0.1)
    assert [full.used[3 * e] for e in range(10)] == pytest.approx([1.0 - 0.1 * e for e in range(10)])


def test_resume_by_step_after_model_save(tmp_path):
    full = RecordingTopK(ce())
    model = build(full)
    sched = TopKScheduler(1.0, 0.1, by="step", total=10)
    fit(model, 1, [sched])
    model.save(str(tmp_path / "mid"))
    state = sched.state_dict()
    assert state == {"by": "step", "epochs_done": 1, "steps_done": 3, "total": 10, "ratio": pytest.approx(0.8),
                     "drop": None}
    assert all(type(v) in (str, int, float, type(None)) for v in state.values())

    fit(model, 2, [sched])  # the uninterrupted run, continuing in place
    resumed = RecordingTopK(ce())
    other = build(resumed)
    other.load(str(tmp_path / "mid"), reset_optimizer=True)
    hapi_autoloss.load_state(other, str(tmp_path / "mid"))
    fit(other, 2, [TopKScheduler(1.0, 0.1, by="step")])  # total comes from the checkpoint
    assert resumed.used == pytest.approx(full.used[3:])
    assert resumed.used == pytest.approx([1.0 - 0.1 * t for t in range(3, 9)])


def test_load_state_gives_a_used_scheduler_its_state_when_it_starts_again(tmp_path):
    model = build(TopKLoss(ce()))
    fit(model, 3, [TopKScheduler()], save_dir=str(tmp_path))
    layer = TopKLoss(ce())
    other = build(layer)
    sched = TopKScheduler(end=0.5)
    fit(other, 1, [sched])
    assert layer.ratio == 0.5
    other.load(str(tmp_path / "0"), reset_optimizer=True)  # it updated: hapi loads no moments into it
    hapi_autoloss.load_state(other, str(tmp_path / "0"))
    assert layer.ratio == 1.0  # the k saved after epoch 0 (ratio 1.0), at once
    assert (sched.epochs_done, sched.total) == (1, 1)  # a finished fit's callback is left alone
    fit(other, 1, [sched])  # the same scheduler starts again: the saved position and total
    assert (sched.epochs_done, sched.total) == (2, 3)
    assert layer.ratio == sched.ratio == pytest.approx(0.75)  # position 1 of 3, from 1.0 to 0.5


def test_state_with_another_unit_is_refused():
    sched = TopKScheduler(by="step")
    with pytest.raises(ValueError, match=r"counted by='epoch'.*Fix: build the scheduler with by='epoch'"):
        sched.set_state_dict({"by": "epoch", "epochs_done": 1, "steps_done": 3, "total": 4})


# ---------------------------------------------------------------- example


def test_example_runs_and_reports_accuracies():
    import topk_classification

    results = topk_classification.main(["--epochs", "8", "--seeds", "1", "--minority-keep", "1.0"])
    for name in ("mean", "fixed", "annealed"):
        for metric in ("accuracy", "minority_accuracy", "balanced_accuracy"):
            assert 0.5 < results[name][metric] <= 1.0  # 10 classes: chance is 0.1
    assert len(results["per_seed"]["annealed"]) == 1


# ---------------------------------------------------------------- ranked range: drop annealed too


class RecordingRange(TopKLoss):
    """Records (ratio, drop) each training forward uses."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.used: list[tuple[float, float]] = []

    def forward(self, *inputs):
        self.used.append((self.ratio, self.drop))
        return super().forward(*inputs)


class DropRecorder(LogRecorder):
    def __init__(self):
        super().__init__()
        self.drops: list[float] = []

    def on_train_batch_end(self, step, logs=None):
        super().on_train_batch_end(step, logs)
        self.drops.append(logs["topk_drop"])


@pytest.mark.parametrize("schedule", ["linear", "cosine", "step"])
def test_both_bounds_follow_the_schedule(schedule):
    loss = RecordingRange(ce(), ratio=1.0)
    rec = DropRecorder()
    fit(build(loss), 5, [TopKScheduler(1.0, 0.2, schedule=schedule, drop_end=0.1), rec])
    want = [(schedules.ratio_at(e, 5, schedule, 1.0, 0.2), schedules.ratio_at(e, 5, schedule, 0.0, 0.1))
            for e in range(5) for _ in range(3)]
    assert [r for r, _ in loss.used] == pytest.approx([r for r, _ in want], abs=1e-12)
    assert [d for _, d in loss.used] == pytest.approx([d for _, d in want], abs=1e-12)
    assert loss.used[0] == (1.0, 0.0) and loss.used[-1] == pytest.approx((0.2, 0.1))
    assert rec.drops == [d for _, d in loss.used] and "topk_drop" in rec.metrics
    if schedule == "linear":
        assert [d for _, d in loss.used[::3]] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])


def test_constant_drop_exp_ratio_and_drop_saved_in_state(tmp_path):
    loss = RecordingRange(ce(), ratio=1.0)
    sched = TopKScheduler(1.0, 0.25, schedule="exp", by="step", drop_start=0.05)
    model = build(loss)
    fit(model, 2, [sched])
    assert [d for _, d in loss.used] == [0.05] * 6
    assert [r for r, _ in loss.used] == pytest.approx([0.25 ** (t / 5) for t in range(6)])
    model.save(str(tmp_path / "ckpt"))
    assert sched.state_dict()["drop"] == 0.05
    other_loss = TopKLoss(ce(), ratio=1.0)
    other = build(other_loss)
    other.load(str(tmp_path / "ckpt"), reset_optimizer=True)
    hapi_autoloss.load_state(other, str(tmp_path / "ckpt"))
    assert (other_loss.ratio, other_loss.drop) == (pytest.approx(0.25), 0.05)  # the layer's own state


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"end": 0.1, "drop_end": 0.1}, r"At progress 1 the scheduled drop \(0.1\) is not below the ratio.*Fix"),
        ({"start": 0.5, "drop_start": 0.6}, r"At progress 0 the scheduled drop \(0.6\).*Fix"),
        ({"drop_end": 1.0}, r"drop_end must be a number in \[0, 1\).*Fix"),
        ({"drop_start": -0.1}, r"drop_start must be a number in \[0, 1\).*Fix"),
        ({"schedule": "exp", "drop_end": 0.05}, r"schedule='exp'.*cannot start or end at a drop of 0.*Fix"),
    ],
)
def test_bad_drop_bounds_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TopKScheduler(**kwargs)


def test_drop_clashes_found_before_any_step():
    model = build(TopKLoss(ce(), ratio=1.0, drop=0.3))
    before = [p.numpy().copy() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"drops 0.3 of the hardest losses.*down to 0.2.*Fix"):
        fit(model, 2, [TopKScheduler(1.0, 0.2)])
    with pytest.raises(ValueError, match=r"band=\(1.0, 2.0\), which has neither.*Fix"):
        fit(build(TopKLoss(ce(), band=(1.0, 2.0))), 2, [TopKScheduler()])
    threshold = build(TopKLoss(ce(), ratio=0.5, threshold=0.3))
    with pytest.raises(ValueError, match=r"contradict \(TopKScheduler takes drop to 0.2 on a TopKLoss with threshold"):
        fit(threshold, 2, [TopKScheduler(1.0, 0.5, drop_start=0.0, drop_end=0.2)])
    fit(threshold, 1, [TopKScheduler(1.0, 0.5, drop_start=0.0)])  # a drop held at 0 is allowed
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)


def test_driven_by_hand_each_epoch_end_counts():
    """Outside hapi's fit (no CallbackList, so no hook before the epoch ends) every on_epoch_end ends an
    epoch, on_epoch_begin or not: the epoch-close hook's bookkeeping made them count nothing."""
    loss = TopKLoss(ce())
    model = build(loss)
    sched = TopKScheduler(1.0, 0.5, total=3)
    sched.set_model(model)
    sched.set_params({"epochs": 3, "steps": 1, "verbose": 0, "metrics": ["loss"]})
    sched.on_train_begin()
    for epoch in range(3):
        sched.on_train_batch_begin(0, {})
        sched.on_train_batch_end(0, {})
        sched.on_epoch_end(epoch)
        assert sched.epochs_done == epoch + 1
