"""TopKOnPlateau through real paddle.Model.fit runs, against paddle's own ReduceLROnPlateau rule."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from helpers import RaiseOnce, tb_read
from paddle.callbacks import Callback

import hapi_autoloss
from hapi_autoloss import TopKLoss
from hapi_autoloss.callbacks import BackupAndRestore, TensorBoardExport, TopKOnPlateau, TopKScheduler

BATCH = 8


class Blobs(paddle.io.Dataset):
    def __init__(self, n: int = 24, seed: int = 0, noise: float = 1.0) -> None:
        rng = np.random.default_rng(seed)
        self.y = rng.integers(0, 3, (n, 1)).astype("int64")
        self.x = (noise * rng.standard_normal((n, 4)) + self.y).astype("float32")

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __len__(self):
        return len(self.x)


class Recorder(Callback):
    """The eval logs hapi hands to the callbacks, and the ratio and drop of each training batch."""

    def __init__(self, layer):
        self.layer = layer
        self.evals: list[dict] = []
        self.ranges: list[tuple[float, float]] = []
        self.logged: list[float] = []

    def on_train_batch_begin(self, step, logs=None):
        self.ranges.append((self.layer.ratio, self.layer.drop))

    def on_train_batch_end(self, step, logs=None):
        self.logged.append(logs["topk_ratio"])

    def on_eval_end(self, logs=None):
        self.evals.append(dict(logs))


def ce():
    return paddle.nn.CrossEntropyLoss(reduction="none")


def build(loss, seed=0, lr=0.05):
    paddle.seed(seed)
    net = paddle.nn.Linear(4, 3)
    model = paddle.Model(net, inputs=[paddle.static.InputSpec([None, 4], "float32", "x")],
                         labels=[paddle.static.InputSpec([None, 1], "int64", "y")])
    model.prepare(paddle.optimizer.Adam(lr, parameters=net.parameters()), loss, metrics=[paddle.metric.Accuracy()])
    return model


def fit(model, epochs, callbacks, eval_data=True, **kwargs):
    model.fit(Blobs(), Blobs(16, seed=1, noise=2.0) if eval_data else None, epochs=epochs, batch_size=BATCH,
              shuffle=False, verbose=0, callbacks=callbacks, **kwargs)


def paddle_lr_factors(evals, monitor, **kw):
    """Paddle's ReduceLROnPlateau fed the same eval logs: lr / lr₀ after each evaluation."""
    net = paddle.nn.Linear(1, 1)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(1.0, parameters=net.parameters()))
    rl = paddle.callbacks.ReduceLROnPlateau(monitor=monitor, verbose=0, **kw)
    rl.set_model(model)
    rl.on_train_begin()
    out = []
    for logs in evals:
        rl.on_eval_end(logs)
        out.append(model._optimizer.get_lr())
    return out


@pytest.mark.parametrize(
    "monitor, kw",
    [
        ("acc", {"factor": 0.5, "patience": 1, "min_delta": 0.02, "cooldown": 0}),
        ("acc", {"factor": 0.7, "patience": 2, "min_delta": 0.05, "cooldown": 1}),
        ("acc", {"factor": 0.5, "patience": 1, "min_delta": 0.0, "cooldown": 2}),
    ],
)
def test_ratio_follows_paddles_plateau_rule_in_a_real_fit(monitor, kw):
    loss = TopKLoss(ce(), ratio=1.0, drop=0.2)
    rec = Recorder(loss)
    plateau = TopKOnPlateau(monitor=monitor, min_ratio=0.3, verbose=0, **kw)
    fit(build(loss), 12, [plateau, rec])
    factors = paddle_lr_factors(rec.evals, monitor, min_lr=0.3, **kw)
    # Epoch e trains with the ratio set by the evaluations of epochs < e.
    want = [1.0, *factors[:-1]]
    got = [r for r, _ in rec.ranges[::3]]
    assert got == pytest.approx(want, rel=1e-6)
    assert len(set(np.round(got, 6))) >= 2, "the run must reduce at least once for the test to mean anything"
    assert min(got) >= 0.3
    # drop is scaled with the ratio: m/k stays 0.2
    assert all(d == pytest.approx(0.2 * r) for r, d in rec.ranges)
    assert rec.logged == [r for r, _ in rec.ranges]
    assert plateau.evaluations == 12 and plateau.reductions == len(set(np.round([*got, loss.ratio], 6))) - 1


def test_state_round_trips_through_model_save_and_load_state(tmp_path):
    loss = TopKLoss(ce(), ratio=1.0)
    plateau = TopKOnPlateau(monitor="acc", factor=0.5, patience=1, min_delta=0.02, verbose=0)
    model = build(loss)
    fit(model, 8, [plateau])
    model.save(str(tmp_path / "ckpt"))
    saved = plateau.state_dict()
    assert saved["reductions"] >= 1 and saved["evaluations"] == 8

    other_loss = TopKLoss(ce(), ratio=1.0)
    other = build(other_loss, seed=3)
    other.load(str(tmp_path / "ckpt"), reset_optimizer=True)
    hapi_autoloss.load_state(other, str(tmp_path / "ckpt"))
    assert other_loss.ratio == loss.ratio  # the layer's own checkpoint state, at once
    again = TopKOnPlateau(monitor="acc", factor=0.5, patience=1, min_delta=0.02, verbose=0)
    rec = Recorder(other_loss)
    fit(other, 1, [again, rec])
    assert rec.ranges[0] == (loss.ratio, 0.0)
    state = again.state_dict()
    assert state["evaluations"] == 9 and state["reductions"] >= saved["reductions"]
    # the restored best is what the next evaluation was compared with
    assert (state["best"] == saved["best"]) or (state["best"] > saved["best"] + 0.02)

    wrong = TopKOnPlateau(monitor="err", mode="min")
    with pytest.raises(ValueError, match=r"monitored 'acc', this one monitors 'err'.*Fix: monitor='acc'"):
        wrong.set_state_dict(saved)



def test_backup_and_restore_resumes_the_plateau_as_if_uninterrupted(tmp_path):
    def plateau():
        return TopKOnPlateau(monitor="acc", factor=0.5, patience=1, min_delta=0.02, verbose=0)

    full_loss = TopKLoss(ce(), ratio=1.0, drop=0.1)
    full_model, full_cb = build(full_loss), plateau()
    fit(full_model, 8, [BackupAndRestore(tmp_path / "full"), full_cb])
    loss = TopKLoss(ce(), ratio=1.0, drop=0.1)
    model = build(loss)
    boom = RaiseOnce(5, 1)
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, 8, [BackupAndRestore(tmp_path / "run"), plateau(), boom])
    again = plateau()  # a fresh callback, as after a restart: the backup gives it its state
    fit(model, 8, [BackupAndRestore(tmp_path / "run"), again, boom])
    assert full_cb.reductions >= 1
    assert again.state_dict() == full_cb.state_dict()
    assert (loss.ratio, loss.drop) == (full_loss.ratio, full_loss.drop)
    for got, want in zip(model.network.parameters(), full_model.network.parameters()):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_topk_ratio_is_shown_and_exported(tmp_path, capsys):
    loss = TopKLoss(ce(), ratio=1.0)
    model = build(loss)
    model.fit(Blobs(), Blobs(16, seed=1, noise=2.0), epochs=6, batch_size=BATCH, shuffle=False, verbose=2,
              log_freq=1, callbacks=[TopKOnPlateau(monitor="acc", patience=0, min_delta=10.0, factor=0.5,
                                                   min_ratio=0.2),
                                     TensorBoardExport(tmp_path / "tb")])  # fmt: skip
    out = capsys.readouterr().out
    assert "topk_ratio: 1.0000" in out and "topk_ratio: 0.5000" in out and "TopKOnPlateau: acc has not" in out
    points = tb_read(tmp_path / "tb")
    # min_delta 10: only the first evaluation improves; patience 0 reduces at every other one
    assert [v for _, v in points["topk/ratio"]] == pytest.approx([1.0] * 6 + [0.5] * 3 + [0.25] * 3 + [0.2] * 6)


def test_a_ranked_range_exports_its_dropped_fraction_next_to_the_ratio(tmp_path):
    loss = TopKLoss(ce(), ratio=1.0, drop=0.1)
    model = build(loss)
    model.fit(Blobs(), Blobs(16, seed=1, noise=2.0), epochs=6, batch_size=BATCH, shuffle=False, verbose=0,
              callbacks=[TopKOnPlateau(monitor="acc", patience=0, min_delta=10.0, factor=0.5, min_ratio=0.2),
                         TensorBoardExport(tmp_path / "tb", every_n_steps=1)])  # fmt: skip
    points = tb_read(tmp_path / "tb")
    # drop is scaled with the ratio (scale_drop): 0.1, 0.05, 0.025, then 0.025·0.2/0.25
    assert [v for _, v in points["topk/drop"]] == pytest.approx([0.1] * 6 + [0.05] * 3 + [0.025] * 3 + [0.02] * 6)
    assert len(points["topk/drop"]) == len(points["topk/ratio"])


def test_errors_come_before_any_step():
    model = build(TopKLoss(ce(), ratio=1.0))
    before = [p.numpy().copy() for p in model.parameters()]
    plateau, scheduler = TopKOnPlateau(), TopKScheduler()
    cases = [
        (dict(callbacks=[TopKOnPlateau(monitor="acc")], eval_data=False),
         r"monitors 'acc' of the evaluation, but fit got no eval_data.*Fix: model.fit\(train_data, eval_data="),
        (dict(callbacks=[TopKOnPlateau(monitor="accuracy")]),
         r"monitors 'accuracy', which the evaluation logs will not have: they hold \['loss', 'acc'\]. "
         r"Fix: monitor one of them, e.g. monitor='acc'\.$"),
        (dict(callbacks=[TopKOnPlateau(), TopKScheduler()]), r"TopKOnPlateau and TopKScheduler both set.*Fix"),
        (dict(callbacks=[TopKOnPlateau(), TopKOnPlateau()]), r"Two TopKOnPlateau callbacks.*compound. Fix"),
        (dict(callbacks=[TopKScheduler(), TopKScheduler(1.0, 0.5)]), r"Two TopKSchedulers.*silently win. Fix"),
        (dict(callbacks=[plateau] * 2), r"Two TopKOnPlateau callbacks.*compound. Fix"),  # one instance twice
        (dict(callbacks=[scheduler] * 2), r"Two TopKSchedulers.*silently win. Fix"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            fit(model, 2, **kwargs)
    with pytest.raises(ValueError, match=r"no TopKLoss in the model's loss \(CrossEntropyLoss\).*Fix"):
        fit(build(paddle.nn.CrossEntropyLoss()), 1, [TopKOnPlateau()])
    with pytest.raises(ValueError, match=r"band=\(1.0, 2.0\), which has none.*Fix"):
        fit(build(TopKLoss(ce(), band=(1.0, 2.0))), 1, [TopKOnPlateau()])
    with pytest.raises(ValueError, match=r"drops 0.2 and scale_drop=False.*Fix"):
        fit(build(TopKLoss(ce(), ratio=1.0, drop=0.2)), 1, [TopKOnPlateau(scale_drop=False, min_ratio=0.2)])
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)  # nothing was trained


def test_a_key_missing_from_the_evaluation_logs_raises_at_the_first_eval_end():
    plateau = TopKOnPlateau(monitor="acc", verbose=0)
    fit(build(TopKLoss(ce(), ratio=1.0)), 1, [plateau])
    with pytest.raises(ValueError, match=r"monitors 'acc', but the evaluation logs hold \['loss'\]. Fix"):
        plateau.on_eval_end({"loss": [0.5], "batch_size": 8})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"factor": 1.0}, r"factor must be in \(0, 1\).*Fix"),
        ({"factor": 0}, r"factor must be in \(0, 1\)"),
        ({"patience": -1}, r"patience must be an int >= 0.*Fix"),
        ({"cooldown": 1.5}, r"cooldown must be an int >= 0"),
        ({"min_ratio": 0}, r"min_ratio must be in \(0, 1\].*Fix"),
        ({"mode": "up"}, r"Unknown mode 'up'.*Fix"),
        ({"min_delta": -1}, r"min_delta must be a finite number >= 0.*Fix"),
        ({"monitor": ""}, r"monitor must be a metric name.*Fix"),
        ({"monitor": "loss"}, r"cannot monitor 'loss'.*Fix: monitor a metric"),
        ({"monitor": "score"}, r"mode='auto' cannot tell whether a higher 'score' is better. Fix"),
        ({"verbose": "x"}, r"verbose must be an int >= 0, got 'x'.*Fix"),
    ],
)
def test_bad_arguments_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TopKOnPlateau(**kwargs)


def test_verbose_takes_ints_and_bools_like_reduce_lr_on_plateau():
    assert [TopKOnPlateau(verbose=v).verbose for v in (0, 2, True, False)] == [0, 2, 1, 0]


def test_mode_auto_follows_the_name():
    assert TopKOnPlateau(monitor="acc").mode == "max"
    assert TopKOnPlateau(monitor="err").mode == "min"
    assert TopKOnPlateau(monitor="err", mode="max").mode == "max"


def test_a_nan_evaluation_is_never_the_best():
    """Paddle's rule starts best at ±inf, so a NaN first evaluation changes nothing; ours too
    (a NaN stored as best would compare False forever and cut k every `patience` evaluations)."""
    values = [float("nan"), 1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    plateau = TopKOnPlateau(monitor="err", mode="min", patience=2, factor=0.5, min_ratio=0.1, verbose=0)
    loss = TopKLoss(ce(), ratio=1.0)
    plateau._layers = [loss]
    ours = []
    for v in values:
        plateau.step(v)
        ours.append(loss.ratio)
    assert ours == paddle_lr_factors([{"err": [v]} for v in values], "err", patience=2, factor=0.5, min_lr=0.1)
    assert ours == [1.0] * len(values)
