"""What is shown is one thing: hapi's logs, the tqdm bar and the exporters agree, on
real fits; eval/loss is the set's mean; an epoch without batches says so; gls's
weights are its true gradient."""

from __future__ import annotations

import io
import re

import numpy as np
import paddle
import pytest
from helpers import TwoTaskData, build_model

from hapi_autoloss import AutoWeight, TopKLoss
from hapi_autoloss.callbacks import (
    AutoWeightCallback,
    BackupAndRestore,
    TensorBoardExport,
    TopKScheduler,
    TqdmProgressBar,
    VisualDLExport,
)
from hapi_autoloss.plot import read_scalars
from hapi_autoloss.weighting.gls import GLS_FLOOR

TASKS = ("y1", "y2")
STEPS = 6  # TwoTaskData(96), batch_size 16


class Record(paddle.callbacks.Callback):
    """Listed after AutoWeightCallback: hapi's logs and σ after the update, per step."""

    def __init__(self) -> None:
        super().__init__()
        self.logs: list[dict[str, float]] = []
        self.after: list[dict[str, float]] = []

    def on_train_batch_end(self, step, logs=None):
        self.logs.append({k: float(v) for k, v in logs.items() if k.startswith(("sigma_", "weight_"))})
        self.after.append(self.model._loss.sigmas())


def make_loss(method: str) -> AutoWeight:
    kwargs = {"task_types": ["regression"] * 2} if method == "kendall" else {}
    if method == "rlw":
        kwargs["seed"] = 5
    return AutoWeight({t: paddle.nn.MSELoss() for t in TASKS}, method=method, **kwargs)


def fit_and_read(tmp_path, method: str, epochs: int = 2):
    record, bar = Record(), io.StringIO()
    model = build_model(make_loss(method))
    model.fit(TwoTaskData(96), TwoTaskData(32, seed=1), epochs=epochs, batch_size=16, shuffle=False,
              callbacks=[AutoWeightCallback(), record, TensorBoardExport(tmp_path), VisualDLExport(tmp_path),
                         TqdmProgressBar(verbose=2, log_freq=1, show_weights=True, file=bar)])
    points = {reader: read_scalars(tmp_path, reader) for reader in ("tensorboard", "visualdl")}
    lines = [line for line in bar.getvalue().splitlines() if line.startswith("Epoch")]
    return model, record, points, lines


def bar_values(lines: list[str], label: str) -> list[str]:
    return [re.search(rf"{label}=([^,\]]+)", line).group(1) for line in lines]


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("method", ["kendall", "rlw", "dwa"])
def test_logs_bar_and_exporters_show_what_each_step_used(tmp_path, method):
    epochs = 3 if method == "dwa" else 2
    model, record, points, lines = fit_and_read(tmp_path, method, epochs)
    n = epochs * STEPS
    assert len(record.logs) == len(lines) == n
    kinds = ("sigma", "weight") if method == "kendall" else ("weight",)
    for kind in kinds:
        for task in TASKS:
            tag, key = f"autoloss/{kind}/{task}", f"{kind}_{task}"
            logged = [step[key] for step in record.logs]
            for reader, series in points.items():
                assert series[tag][0] == list(range(1, n + 1)), reader
                np.testing.assert_allclose(series[tag][1], logged, rtol=1e-6, err_msg=f"{reader} {tag}")
            label = ("σ_" if kind == "sigma" else "w_") + task
            assert bar_values(lines, label) == [f"{v:.4g}" for v in logged], label
    if method == "kendall":
        # σ before each step's update: step 1 trained with the initial σ = 1, step t+1
        # with σ as step t's update left it; the last update is not shown yet.
        exported = np.array(points["tensorboard"]["autoloss/sigma/y1"][1])
        after = np.array([a["y1"] for a in record.after])
        assert exported[0] == 1.0
        np.testing.assert_allclose(exported[1:], after[:-1], rtol=1e-6)
        assert abs(exported[-1] - model._loss.sigmas()["y1"]) > 1e-4
        assert model._loss.used()[0]["y1"] == pytest.approx(exported[-1], rel=1e-6)
    if method == "rlw":
        # The draws of seed 5, one per train step; evaluation draws none.
        rng = np.random.default_rng(5)
        expected = np.array([softmax(rng.standard_normal(2)) for _ in range(n)])
        np.testing.assert_allclose(points["tensorboard"]["autoloss/weight/y1"][1], expected[:, 0], rtol=1e-6)
    if method == "dwa":
        weights = np.array(points["tensorboard"]["autoloss/weight/y1"][1])
        assert np.all(weights[: 2 * STEPS] == 1.0) and np.all(weights[2 * STEPS:] == weights[-1]) and weights[-1] != 1.0


def test_gls_exported_weight_is_the_gradient_of_that_step(tmp_path):
    _, record, points, _ = fit_and_read(tmp_path, "gls")
    tb = points["tensorboard"]
    losses = np.array([tb[f"autoloss/loss/{t}"][1] for t in TASKS])  # (task, step)
    weights = np.array([tb[f"autoloss/weight/{t}"][1] for t in TASKS])
    total = np.exp(np.log(losses).mean(axis=0))
    np.testing.assert_allclose(weights, total / (2 * losses), rtol=1e-5)
    # hapi's logs are filled right after the step, before its bar prints: the same step's gradient.
    logged = np.array([[step[f"weight_{t}"] for step in record.logs] for t in TASKS])
    np.testing.assert_allclose(logged, weights, rtol=1e-5)


# ---------------------------------------------------------------- eval/loss


def test_eval_loss_is_the_batch_size_weighted_mean(tmp_path):
    evaluation = TwoTaskData(40, seed=1)  # batches of 16, 16 and 8
    model, bar = build_model(make_loss("kendall")), io.StringIO()
    model.fit(TwoTaskData(96), evaluation, epochs=1, batch_size=16, verbose=0,
              callbacks=[AutoWeightCallback(), TensorBoardExport(tmp_path), VisualDLExport(tmp_path),
                         TqdmProgressBar(verbose=2, log_freq=1, file=bar)])
    s = model._loss.s.numpy().astype(np.float64)
    batch_losses, sizes = [], []
    model.network.eval()
    with paddle.no_grad():
        for x, y1, y2 in evaluation.batches(16):
            outs = [o.numpy().astype(np.float64) for o in model.network(x)]
            mse = np.array([((o - y.numpy()) ** 2).mean() for o, y in zip(outs, (y1, y2))])
            batch_losses.append((0.5 * np.exp(-s) * mse + 0.5 * s).sum())
            sizes.append(len(x))
    assert sizes == [16, 16, 8]
    expected = np.dot(batch_losses, sizes) / sum(sizes)
    for reader in ("tensorboard", "visualdl"):
        steps, values = read_scalars(tmp_path, reader)["eval/loss"]
        assert steps == [STEPS]
        assert values[0] == pytest.approx(expected, rel=1e-5), reader
    # The bar's Eval lines: the mean of the batches so far, the set's mean at the end.
    shown = [float(m) for m in re.findall(r"^Eval.* loss=([-0-9.e+]+)", bar.getvalue(), re.M)]
    running = np.cumsum(np.multiply(batch_losses, sizes)) / np.cumsum(sizes)
    np.testing.assert_allclose(shown, running, rtol=1e-3)
    assert running[-1] == pytest.approx(expected)
    # Neither hapi's last batch nor an unweighted mean of batches.
    assert abs(expected - batch_losses[-1]) > 1e-3 * expected
    assert abs(expected - np.mean(batch_losses)) > 1e-4 * expected


# ---------------------------------------------------------------- empty epoch


class Nothing(paddle.io.IterableDataset):
    """An iterable dataset that yields no sample: hapi cannot know its length."""

    def __iter__(self):
        return iter(())


def exporters(tmp_path):
    return [AutoWeightCallback(), TensorBoardExport(tmp_path / "tb"), VisualDLExport(tmp_path / "vdl")]


CALLBACKS = {  # each of ours says it alone
    "exporters": exporters,
    "bar": lambda tmp_path: [TqdmProgressBar(file=io.StringIO())],
    "autoweight": lambda tmp_path: [AutoWeightCallback()],
    "topk": lambda tmp_path: [TopKScheduler()],
    "backup": lambda tmp_path: [BackupAndRestore(tmp_path / "backup")],
}


def model_for(callbacks):
    if callbacks != "topk":
        return build_model(make_loss("kendall"))
    return build_model(AutoWeight({"y1": TopKLoss(paddle.nn.MSELoss(reduction="none")), "y2": paddle.nn.MSELoss()},
                                  method="equal"))


@pytest.mark.parametrize("callbacks", list(CALLBACKS))
@pytest.mark.parametrize("case", ["empty", "drop_last"])
def test_no_batches_is_an_error_before_training(tmp_path, case, callbacks):
    model = model_for(callbacks)
    data = TwoTaskData(0) if case == "empty" else paddle.io.DataLoader(TwoTaskData(10), batch_size=16, drop_last=True)
    cbs = CALLBACKS[callbacks](tmp_path)
    # verbose=2 is hapi's default; its own bar would fail with a TypeError about 'num'.
    with pytest.raises(ValueError, match=r"0 batches per epoch .*empty.*drop_last=True.*Fix:"):
        model.fit(data, epochs=2, batch_size=16, verbose=2, callbacks=cbs)
    assert not (tmp_path / "tb").exists() and not (tmp_path / "vdl").exists()  # nothing opened


@pytest.mark.parametrize("callbacks", ["exporters", "bar", "autoweight", "topk"])
def test_an_epoch_without_batches_from_data_without_length(tmp_path, callbacks):
    model = model_for(callbacks)
    loader = paddle.io.DataLoader(Nothing(), batch_size=16)
    cbs = CALLBACKS[callbacks](tmp_path)
    with pytest.raises(ValueError, match=r"^Epoch 0 had no training batches: the training data is empty"):
        model.fit(loader, epochs=2, verbose=0, callbacks=cbs)


# ---------------------------------------------------------------- gls weights


def identity(out, _label):
    return out


def gls_gradient(values):
    """d total / d L_i in float64, as paddle.clip passes it (L >= the float32 floor)."""
    floor = float(np.float32(GLS_FLOOR))
    values = np.asarray(values, dtype=np.float64)
    kept = np.maximum(values, floor)
    return np.where(values >= floor, np.exp(np.log(kept).mean()) / (len(values) * kept), 0.0)


FLOOR32 = float(np.float32(GLS_FLOOR))
BELOW = float(np.nextafter(np.float32(GLS_FLOOR), np.float32(0)))


@pytest.mark.parametrize("values", [[0.7, 2.5, 0.05], [0.0, 1.0, 2.0], [FLOOR32, 0.5, 3.0], [BELOW, 0.5, 3.0],
                                    [0.0, 0.0, 4.0]], ids=["plain", "zero", "at_floor", "below_floor", "two_zeros"])
def test_gls_weights_are_the_autograd_gradient(values):
    aw = AutoWeight([identity] * 3, method="gls")
    leaves = [paddle.to_tensor(np.float32(v), stop_gradient=False) for v in values]
    aw(*leaves, *[paddle.zeros([]) for _ in values]).backward()
    autograd = np.array([float(t.grad) for t in leaves])
    weights = np.array(list(aw.weights().values()))
    np.testing.assert_allclose(weights, autograd, rtol=1e-5, atol=0)
    np.testing.assert_allclose(weights, gls_gradient(np.float32(values)), rtol=1e-12, atol=0)
    assert (weights == 0).tolist() == [v < FLOOR32 for v in values]  # exactly 0 where clipped
    np.testing.assert_allclose(list(aw.used()[1].values()), weights, rtol=0)


# ---------------------------------------------------------------- used()


def forward(aw, values):
    leaves = [paddle.to_tensor(np.float32(v), stop_gradient=False) for v in values]
    return aw(*leaves, *[paddle.zeros([]) for _ in values])


def test_used_is_before_the_update_and_sigmas_after():
    aw = AutoWeight([identity] * 2, method="kendall", task_types=["regression"] * 2)
    opt = paddle.optimizer.SGD(learning_rate=0.5, parameters=aw.parameters())
    forward(aw, [2.0, 0.1]).backward()
    opt.step()
    s = aw.s.numpy().astype(np.float64)
    assert list(aw.used()[0].values()) == [1.0, 1.0]  # σ = e^(s/2) at s = 0, as the forward used
    np.testing.assert_allclose(list(aw.used()[1].values()), [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(list(aw.sigmas().values()), np.exp(s / 2), rtol=1e-7)
    assert not np.allclose(s, 0.0)


def test_rlw_used_is_the_step_draw_and_looking_changes_nothing():
    looked, blind = (AutoWeight([identity] * 3, method="rlw", seed=9) for _ in range(2))
    rng = np.random.default_rng(9)
    for _ in range(4):
        w = softmax(rng.standard_normal(3))
        a, b = forward(looked, [1.0, 2.0, 3.0]), forward(blind, [1.0, 2.0, 3.0])
        assert float(a) == float(b) == pytest.approx(np.dot(w, [1.0, 2.0, 3.0]), rel=1e-6)
        assert list(looked.used()[1].values()) == list(looked.weights().values()) == pytest.approx(w, rel=1e-12)
        looked.used(), looked.weights()  # reading draws nothing
