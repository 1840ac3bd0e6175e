"""TqdmProgressBar: real fits, the bar's output captured."""

from __future__ import annotations

import io
import re

import numpy as np
import paddle
import pytest
from helpers import TwoTaskData, build_model, final_lines, kendall_loss

from hapi_autoloss import AutoWeight, TopKLoss
from hapi_autoloss.callbacks import AutoWeightCallback, TopKScheduler, TqdmProgressBar

SIGMAS = ["σ_y1", "σ_y2"]


def fit(bar, verbose=1, epochs=2, eval_data=True, loss=None, extra=()):
    model = build_model(loss if loss is not None else kendall_loss())
    model.fit(TwoTaskData(96), TwoTaskData(32, seed=1) if eval_data else None, epochs=epochs, batch_size=16,
              verbose=verbose, callbacks=[AutoWeightCallback(), *extra, bar])
    return model


def parse(line: str) -> tuple[str, str, dict[str, str]]:
    """A finished bar line, e.g. 'Epoch 1/2: 100%|###| 6/6 [00:00<00:00, 300step/s, loss=0.93, σ_y1=1.1]',
    as ('Epoch 1/2', '6/6', {'loss': '0.93', 'σ_y1': '1.1'})."""
    desc = line.split(":")[0]
    count = re.search(r"\| (\d+/\d+) \[", line).group(1)
    inside = line[line.rindex("[") + 1:].rstrip("]").split(", ")  # elapsed<left, rate, postfix...
    return desc, count, dict(item.split("=", 1) for item in inside if "=" in item)


def fmt(value: float) -> str:
    return f"{value:.4g}"  # how the bar writes every value


class LastLosses(paddle.callbacks.Callback):
    """The loss hapi logged at each epoch's last step, and each evaluation's mean loss
    (hapi's eval batch losses weighted by batch size; its own end log is the last batch's)."""

    def __init__(self):
        self.train, self.eval, self.batches = [], [], []

    def on_epoch_end(self, epoch, logs=None):
        self.train.append(float(np.ravel(logs["loss"])[0]))

    def on_eval_begin(self, logs=None):
        self.batches = []

    def on_eval_batch_end(self, step, logs=None):
        self.batches.append((float(np.ravel(logs["loss"])[0]), logs["batch_size"]))

    def on_eval_end(self, logs=None):
        losses, sizes = np.array(self.batches, dtype=np.float64).T
        self.eval.append(float(np.dot(losses, sizes) / sizes.sum()))


def test_bars_show_loss_sigma_and_replace_hapis_bar(capsys):
    out, losses = io.StringIO(), LastLosses()
    model = fit(TqdmProgressBar(file=out), extra=[losses])
    bars = [parse(line) for line in final_lines(out.getvalue())]
    assert [(desc, count) for desc, count, _ in bars] == [
        ("Epoch 1/2", "6/6"), ("Eval", "2/2"), ("Epoch 2/2", "6/6"), ("Eval", "2/2")]
    for _, _, values in bars:
        assert list(values) == ["loss", *SIGMAS]  # weights only with show_weights=True
    epochs, evals = [v for _, _, v in bars[0::2]], [v for _, _, v in bars[1::2]]
    assert [v["loss"] for v in epochs] == [fmt(x) for x in losses.train]
    assert [v["loss"] for v in evals] == [fmt(x) for x in losses.eval]
    # The eval bar shows σ as the epoch before it ended; the last one is what the last step used.
    for epoch, evaluation in zip(epochs, evals):
        assert [evaluation[k] for k in SIGMAS] == [epoch[k] for k in SIGMAS]
    sigma = model._loss.used()[0]
    assert [epochs[-1][k] for k in SIGMAS] == [fmt(sigma["y1"]), fmt(sigma["y2"])]
    # hapi's own ProgBarLogger was not added: none of its lines ("Epoch 1/2", "step 6/6", "Eval begin...") on stdout.
    assert capsys.readouterr().out == ""


def test_default_output_is_stderr_like_tqdm(capsys):
    fit(TqdmProgressBar(), epochs=1, eval_data=False)
    captured = capsys.readouterr()
    assert "Epoch 1/1" in captured.err and "σ_y1=" in captured.err
    assert "Epoch 1/1" not in captured.out


def test_verbose_0_is_silent_and_fit_verbose_is_honoured():
    out = io.StringIO()
    fit(TqdmProgressBar(file=out), verbose=0)
    assert out.getvalue() == ""
    out = io.StringIO()
    fit(TqdmProgressBar(verbose=0, file=out), verbose=1)
    assert out.getvalue() == ""


def test_verbose_2_prints_plain_lines_every_log_freq_steps():
    out = io.StringIO()
    fit(TqdmProgressBar(verbose=2, log_freq=2, file=out), epochs=1, eval_data=False)
    text = out.getvalue()
    assert "\r" not in text  # plain lines, fit for log files
    lines = [line for line in text.splitlines() if line]
    bars = [parse(line) for line in lines]
    assert [(desc, count) for desc, count, _ in bars] == [("Epoch 1/1", f"{n}/6") for n in (2, 4, 6)]
    assert all(list(values) == ["loss", *SIGMAS] for _, _, values in bars)


def test_show_weights():
    out = io.StringIO()
    model = fit(TqdmProgressBar(show_weights=True, file=out), epochs=1, eval_data=False)
    _, _, values = parse(final_lines(out.getvalue())[-1])
    assert list(values) == ["loss", *SIGMAS, "w_y1", "w_y2"]
    weights = model._loss.used()[1]  # what the last step's forward used
    assert [values["w_y1"], values["w_y2"]] == [fmt(weights["y1"]), fmt(weights["y2"])]


@pytest.mark.parametrize("method", ["dwa", "famo"])
def test_a_method_without_sigma_shows_its_weights_by_default(method):
    """The default bar showed nothing of ours for dwa, famo, mgda...: weights only with show_weights=True."""
    out = io.StringIO()
    loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method=method)
    fit(TqdmProgressBar(file=out), epochs=2, eval_data=False, loss=loss)
    _, _, values = parse(final_lines(out.getvalue())[-1])
    assert list(values) == ["loss", "w_y1", "w_y2"]
    weights = loss.used()[1]
    assert [values["w_y1"], values["w_y2"]] == [fmt(weights["y1"]), fmt(weights["y2"])]
    hidden = io.StringIO()
    fit(TqdmProgressBar(file=hidden, show_weights=False), epochs=1, eval_data=False, loss=loss)
    assert list(parse(final_lines(hidden.getvalue())[-1])[2]) == ["loss"]


def test_plain_loss_without_autoweight():
    out = io.StringIO()
    paddle.seed(0)
    model = build_model(AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method="equal"))
    model.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=1, callbacks=[TqdmProgressBar(file=out)])
    (last,) = final_lines(out.getvalue())
    desc, count, values = parse(last)
    assert (desc, count, list(values)) == ("Epoch 1/1", "2/2", ["loss"])  # no σ without AutoWeightCallback


def test_evaluate_and_predict_bars():
    out = io.StringIO()
    model = fit(TqdmProgressBar(file=io.StringIO()), epochs=1, eval_data=False)
    model.evaluate(TwoTaskData(32, seed=1), batch_size=16, verbose=1, callbacks=[TqdmProgressBar(file=out)])
    model.predict(TwoTaskData(32, seed=1), batch_size=16, verbose=1, callbacks=[TqdmProgressBar(file=out)])
    bars = [parse(line) for line in final_lines(out.getvalue())]
    assert [(desc, count, list(values)) for desc, count, values in bars] == [
        ("Eval", "2/2", ["loss"]), ("Predict", "2/2", [])]


def test_topk_ratio_is_shown_as_k():
    out = io.StringIO()
    loss = AutoWeight({"y1": TopKLoss(paddle.nn.MSELoss(reduction="none")), "y2": paddle.nn.MSELoss()},
                      method="kendall", task_types=["regression", "regression"])
    fit(TqdmProgressBar(file=out), loss=loss, extra=[TopKScheduler(start=1.0, end=0.5)])
    bars = [parse(line) for line in final_lines(out.getvalue())]
    # epoch 1 (and its eval) at start=1, epoch 2 at end=0.5
    assert [(desc, values["k"]) for desc, _, values in bars] == [
        ("Epoch 1/2", "1"), ("Eval", "1"), ("Epoch 2/2", "0.5"), ("Eval", "0.5")]
    assert all(list(values) == ["loss", *SIGMAS, "k"] for _, _, values in bars)


def test_bad_arguments():
    with pytest.raises(ValueError, match="verbose"):
        TqdmProgressBar(verbose=5)
    with pytest.raises(ValueError, match="log_freq"):
        TqdmProgressBar(log_freq=0)


class NoLength(paddle.io.IterableDataset):
    """TwoTaskData without a length: hapi's params['steps'] is None, the bar has no total."""

    def __init__(self, n):
        self.data = TwoTaskData(n)

    def __iter__(self):
        for i in range(len(self.data)):
            yield self.data[i]


def test_verbose_2_without_a_length_prints_each_line_once():
    out = io.StringIO()
    model = build_model(kendall_loss())
    model.fit(paddle.io.DataLoader(NoLength(96), batch_size=16), epochs=2, verbose=0,
              callbacks=[AutoWeightCallback(), TqdmProgressBar(verbose=2, log_freq=2, file=out)])
    counts = [re.search(r"(\d+)step", line).group(1) for line in out.getvalue().splitlines() if line]
    assert counts == ["2", "4", "6"] * 2  # the 6th step's line once per epoch (was twice)


def test_a_new_epoch_starts_without_the_last_epochs_values():
    out = io.StringIO()
    fit(TqdmProgressBar(verbose=1, file=out, mininterval=0), epochs=2, eval_data=False)
    start = [part for part in out.getvalue().split("\r") if part.startswith("Epoch 2/2:   0%")]
    assert start and not any("loss=" in part or "σ_" in part for part in start)
