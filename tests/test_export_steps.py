"""The exporters' step is the model's train step, not the exporter's: a notebook that runs a
cell again (a new model, the exporter of an earlier cell) or fits one model twice (a new
exporter each time) gets one curve per run, each step once. Files read back by each tool's
own reader."""

from __future__ import annotations

import os
import warnings

import paddle
import pytest
from helpers import TwoTaskData, build_model, kendall_loss, tb_read, vdl_read

from hapi_autoloss.callbacks import AutoWeightCallback, TensorBoardExport, VisualDLExport
from hapi_autoloss.plot import read_scalars

STEPS = 6  # TwoTaskData(96) in batches of 16
READERS = [tb_read, vdl_read]


class RecordSigma(paddle.callbacks.Callback):
    """σ_y1 that each train step's forward used, by the model's step (what the exporters show)."""

    def __init__(self) -> None:
        super().__init__()
        self.sigma: list[float] = []

    def on_train_batch_end(self, step, logs=None):
        self.sigma.append(self.model._loss.used()[0]["y1"])


class Interrupt(paddle.callbacks.Callback):
    """Ctrl-C after the ``at``-th train batch of the fit: hapi then calls no on_train_end."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.count = at, 0

    def on_train_batch_end(self, step, logs=None):
        self.count += 1
        if self.count == self.at:
            raise KeyboardInterrupt


def config_steps(points):
    return [s for s, _ in next(v for t, v in points.items() if t.startswith("autoloss/config"))]


def test_an_exporter_reused_by_a_new_model_replaces_the_earlier_run(tmp_path):
    """A cell run again: a new model (step 0) with the exporters defined once, earlier."""
    exporters = [TensorBoardExport(tmp_path), VisualDLExport(tmp_path)]
    for lr, epochs in ((0.05, 2), (0.01, 1)):
        record = RecordSigma()
        model = build_model(kendall_loss(), lr=lr)
        model.fit(TwoTaskData(96), epochs=epochs, batch_size=16, verbose=0,
                  callbacks=[AutoWeightCallback(), record, *exporters])
    assert record.sigma[0] == 1.0  # the second run starts again from the initial σ
    for read in READERS:
        points = read(tmp_path)
        # Only the second run: steps 1..6 once, its lr and σ; the first run's 12 steps are gone.
        assert points["train/loss"][-1][0] == STEPS, read.__name__
        assert [s for s, _ in points["lr"]] == list(range(1, STEPS + 1)), read.__name__
        assert [v for _, v in points["lr"]] == pytest.approx([0.01] * STEPS), read.__name__
        assert [s for s, _ in points["autoloss/sigma/y1"]] == list(range(1, STEPS + 1)), read.__name__
        assert [v for _, v in points["autoloss/sigma/y1"]] == pytest.approx(record.sigma, rel=1e-6)
    # (The text tag is left out: TensorBoard's legacy EventAccumulator purges no tensors.)
    assert config_steps(vdl_read(tmp_path)) == [0]
    assert [e.global_step for e in exporters] == [STEPS, STEPS]


def test_a_new_exporter_on_a_model_that_trained_continues_at_its_step(tmp_path):
    """One model fit twice, the exporters written inline (new instances each fit)."""
    model = build_model(kendall_loss())
    record = RecordSigma()
    for _ in range(2):
        model.fit(TwoTaskData(96), TwoTaskData(32, seed=1), epochs=1, batch_size=16, verbose=0,
                  callbacks=[AutoWeightCallback(), record, TensorBoardExport(tmp_path), VisualDLExport(tmp_path)])
    assert len(record.sigma) == 2 * STEPS and record.sigma[0] == 1.0
    for read in READERS:
        points = read(tmp_path)
        sigma = points["autoloss/sigma/y1"]
        # Steps 1..12, each once: the first fit's points are kept, the second's follow at 7.
        assert [s for s, _ in sigma] == list(range(1, 2 * STEPS + 1)), read.__name__
        assert [v for _, v in sigma] == pytest.approx(record.sigma, rel=1e-6), read.__name__
        assert [s for s, _ in points["train/loss"]] == list(range(1, 2 * STEPS + 1)), read.__name__
        assert [s for s, _ in points["eval/loss"]] == [STEPS, 2 * STEPS], read.__name__
        assert config_steps(points) == [0, STEPS], read.__name__


def test_evaluate_after_an_interrupted_fit_is_not_logged(tmp_path):
    """Ctrl-C mid-fit skips hapi's on_train_end; a later standalone evaluate with the
    same callbacks warns and writes nothing into the run's log."""
    model = build_model(kendall_loss())
    exporters = [TensorBoardExport(tmp_path), VisualDLExport(tmp_path)]
    callbacks = [AutoWeightCallback(), *exporters]
    with pytest.raises(KeyboardInterrupt):
        model.fit(TwoTaskData(96), TwoTaskData(32, seed=1), epochs=3, batch_size=16, verbose=0,
                  callbacks=[*callbacks, Interrupt(STEPS + 3)])
    before = [read(tmp_path)["eval/loss"] for read in READERS]
    assert [[s for s, _ in points] for points in before] == [[STEPS], [STEPS]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.evaluate(TwoTaskData(32, seed=5), batch_size=16, verbose=0, callbacks=callbacks)
    assert [read(tmp_path)["eval/loss"] for read in READERS] == before  # no point at step 9
    assert sum("model.evaluate(callbacks=[...]) is not logged" in str(w.message) for w in caught) == 2  # each
    # The next fit of the same model goes on logging, eval included, at the model's step.
    model.fit(TwoTaskData(96), TwoTaskData(32, seed=1), epochs=1, batch_size=16, verbose=0, callbacks=callbacks)
    for read in READERS:
        points = read(tmp_path)
        assert [s for s, _ in points["train/loss"]] == list(range(1, 2 * STEPS + 4)), read.__name__
        assert [s for s, _ in points["eval/loss"]] == [STEPS, 2 * STEPS + 3], read.__name__


def tags_in_each_file(folder):
    """The tags of every TensorBoard file directly in ``folder``, each read alone (no purge
    across files): what TensorBoard's default, fast loader keeps of tags a run never rewrites."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for name in os.listdir(folder):
        if "tfevents" in name:
            acc = EventAccumulator(os.path.join(folder, name), size_guidance={"scalars": 0})
            acc.Reload()
            tags.update(acc.Tags()["scalars"])
    return tags


def test_a_new_model_moves_the_earlier_run_into_a_subfolder(tmp_path):
    """Model A (with eval_data) then a new model B (none) into one folder: the folder holds B
    alone for every reader, A's files are kept whole in earlier-run-<time>/, and B's second
    fit (a continued run) still appends to the folder."""
    a = build_model(kendall_loss())
    a.fit(TwoTaskData(96), TwoTaskData(32, seed=1), epochs=1, batch_size=16, verbose=0,
          callbacks=[AutoWeightCallback(), TensorBoardExport(tmp_path), VisualDLExport(tmp_path)])
    b = build_model(kendall_loss(), lr=0.01)
    for _ in range(2):
        b.fit(TwoTaskData(96), epochs=1, batch_size=16, verbose=0,
              callbacks=[AutoWeightCallback(), TensorBoardExport(tmp_path), VisualDLExport(tmp_path)])
    assert not any(t.startswith("eval/") for t in tags_in_each_file(tmp_path))
    earlier = [n for n in os.listdir(tmp_path) if os.path.isdir(tmp_path / n)]
    assert len(earlier) == 1 and earlier[0].startswith("earlier-run-")
    for read in READERS:
        points = read(tmp_path)
        assert "eval/loss" not in points, read.__name__
        assert [s for s, _ in points["lr"]] == list(range(1, 2 * STEPS + 1)), read.__name__
        assert [v for _, v in points["lr"]] == pytest.approx([0.01] * 2 * STEPS), read.__name__
        old = read(tmp_path / earlier[0])
        assert [s for s, _ in old["eval/loss"]] == [STEPS], read.__name__
        assert [v for _, v in old["lr"]] == pytest.approx([0.05] * STEPS), read.__name__
    assert "eval/loss" not in read_scalars(tmp_path)


@pytest.mark.parametrize("scheduler_first", [False, True])
def test_lr_is_the_one_each_step_used(tmp_path, scheduler_first):
    """paddle's LRScheduler(by_step=True) callback listed before the exporters steps the
    schedule before their batch end: each point still holds the lr its step's update used."""
    model = build_model(kendall_loss())
    model._optimizer = opt = paddle.optimizer.SGD(paddle.optimizer.lr.ExponentialDecay(0.1, gamma=0.5),
                                                  parameters=model.parameters())
    used = []

    class Used(paddle.callbacks.Callback):
        def on_train_batch_begin(self, step, logs=None):
            used.append(opt.get_lr())

    scheduler = [paddle.callbacks.LRScheduler(by_step=True)] if scheduler_first else []
    model.fit(TwoTaskData(96), epochs=1, batch_size=16, verbose=0,
              callbacks=[Used(), *scheduler, AutoWeightCallback(),
                         TensorBoardExport(tmp_path), VisualDLExport(tmp_path)])
    assert used == pytest.approx([0.1 * 0.5**i for i in range(STEPS)])
    for read in READERS:
        assert [v for _, v in read(tmp_path)["lr"]] == pytest.approx(used, rel=1e-6), read.__name__
