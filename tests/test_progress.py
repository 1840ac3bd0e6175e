"""TqdmProgressBar: real fits, the bar's output captured."""

from __future__ import annotations

import io
import re

import paddle
import pytest
from helpers import TwoTaskData, build_model, kendall_loss

from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback, TqdmProgressBar

try:
    from hapi_autoloss.callbacks import TopKScheduler
    from hapi_autoloss.topk import TopKLoss
except ImportError:  # written in parallel
    TopKLoss = TopKScheduler = None


def fit(bar, verbose=1, epochs=2, eval_data=True, loss=None, extra=()):
    model = build_model(loss if loss is not None else kendall_loss())
    model.fit(TwoTaskData(96), TwoTaskData(32, seed=1) if eval_data else None, epochs=epochs, batch_size=16,
              verbose=verbose, callbacks=[AutoWeightCallback(), *extra, bar])
    return model


def final_lines(text: str) -> list[str]:
    """What a terminal shows at the end: the last redraw of each line."""
    return [line.split("\r")[-1] for line in text.split("\n") if line.strip()]


def test_bars_show_loss_sigma_and_replace_hapis_bar(capsys):
    out = io.StringIO()
    model = fit(TqdmProgressBar(file=out))
    lines = final_lines(out.getvalue())
    epochs = [line for line in lines if line.startswith("Epoch")]
    evals = [line for line in lines if line.startswith("Eval")]
    assert [line.split(":")[0] for line in epochs] == ["Epoch 1/2", "Epoch 2/2"]
    assert len(evals) == 2
    sigma = model._loss.sigmas()
    for line in epochs + evals:
        assert "6/6" in line or "2/2" in line
        assert "loss=" in line and "σ_y1=" in line and "σ_y2=" in line
        assert "w_y1" not in line  # weights only with show_weights=True
    # The last epoch line shows σ as the epoch ended.
    assert f"σ_y1={sigma['y1']:.4g}" in epochs[-1]
    # hapi's own ProgBarLogger was not added: none of its lines on stdout.
    captured = capsys.readouterr()
    assert "step 6/6" not in captured.out and "Epoch 1/2" not in captured.out
    assert "Eval begin" not in captured.out


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
    assert [re.search(r"\| (\d+/6) \[", line).group(1) for line in lines] == ["2/6", "4/6", "6/6"]
    assert all("loss=" in line and "σ_y1=" in line for line in lines)


def test_show_weights():
    out = io.StringIO()
    fit(TqdmProgressBar(show_weights=True, file=out), epochs=1, eval_data=False)
    assert "w_y1=" in final_lines(out.getvalue())[-1]


def test_plain_loss_without_autoweight():
    out = io.StringIO()
    paddle.seed(0)
    model = build_model(AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method="equal"))
    model.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=1, callbacks=[TqdmProgressBar(file=out)])
    last = final_lines(out.getvalue())[-1]
    assert "2/2" in last and "loss=" in last and "σ_" not in last


def test_evaluate_and_predict_bars():
    out = io.StringIO()
    model = fit(TqdmProgressBar(file=io.StringIO()), epochs=1, eval_data=False)
    model.evaluate(TwoTaskData(32, seed=1), batch_size=16, verbose=1, callbacks=[TqdmProgressBar(file=out)])
    model.predict(TwoTaskData(32, seed=1), batch_size=16, verbose=1, callbacks=[TqdmProgressBar(file=out)])
    lines = final_lines(out.getvalue())
    assert lines[0].startswith("Eval") and "2/2" in lines[0] and "loss=" in lines[0]
    assert lines[-1].startswith("Predict") and "2/2" in lines[-1]


@pytest.mark.skipif(TopKLoss is None, reason="hapi_autoloss.topk not available yet")
def test_topk_ratio_is_shown_as_k():
    out = io.StringIO()
    loss = AutoWeight({"y1": TopKLoss(paddle.nn.MSELoss(reduction="none")), "y2": paddle.nn.MSELoss()},
                      method="kendall", task_types=["regression", "regression"])
    fit(TqdmProgressBar(file=out), loss=loss, extra=[TopKScheduler(start=1.0, end=0.5)])
    epochs = [line for line in final_lines(out.getvalue()) if line.startswith("Epoch")]
    assert all("k=" in line for line in epochs)


def test_bad_arguments():
    with pytest.raises(ValueError, match="verbose"):
        TqdmProgressBar(verbose=5)
    with pytest.raises(ValueError, match="log_freq"):
        TqdmProgressBar(log_freq=0)
