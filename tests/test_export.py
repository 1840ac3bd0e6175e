"""TensorBoardExport and VisualDLExport: real fits, files read back by each tool's own reader."""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap

import numpy as np
import paddle
import pytest
from helpers import (
    ROOT,
    X_SPEC,
    Y_SPECS,
    TwoTaskData,
    TwoTaskNet,
    final_lines,
    kendall_loss,
    launch_two_ranks,
    run_python,
    tb_read,
    vdl_read,
)

import hapi_autoloss
from hapi_autoloss import AutoWeight, TopKLoss
from hapi_autoloss.callbacks import (
    AutoWeightCallback,
    TensorBoardExport,
    TopKScheduler,
    TqdmProgressBar,
    VisualDLExport,
)

STEPS = 6  # TwoTaskData(96) in batches of 16
TASK_TAGS = [f"autoloss/{kind}/{task}" for kind in ("sigma", "weight", "loss") for task in ("y1", "y2")]
TRAIN_TAGS = ["train/loss", "train/mae", "lr", *TASK_TAGS]
EVAL_TAGS = ["eval/loss", "eval/mae"]


class MAE(paddle.metric.Metric):
    """Mean absolute error of the first task, a real hapi metric named 'mae'."""

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def name(self):
        return "mae"

    def compute(self, o1, o2, y1, y2):
        return paddle.abs(o1 - y1).mean()

    def update(self, value):
        self.total += float(value)
        self.count += 1
        return self.accumulate()

    def reset(self):
        self.total, self.count = 0.0, 0

    def accumulate(self):
        return self.total / max(1, self.count)


def make_loss(topk: bool = True):
    if topk:
        return AutoWeight({"y1": TopKLoss(paddle.nn.MSELoss(reduction="none"), ratio=1.0),
                           "y2": paddle.nn.MSELoss()},
                          method="kendall", task_types=["regression", "regression"])
    return kendall_loss()


def make_model(loss=None, lr: float = 0.05, seed: int = 0) -> paddle.Model:
    paddle.seed(seed)
    model = paddle.Model(TwoTaskNet(), inputs=X_SPEC, labels=Y_SPECS)
    model.prepare(paddle.optimizer.Adam(learning_rate=lr, parameters=model.parameters()),
                  loss if loss is not None else make_loss(), metrics=MAE())
    return model


def all_callbacks(log_dir, **kw):
    return [AutoWeightCallback(), TopKScheduler(start=1.0, end=0.5), TensorBoardExport(log_dir, **kw),
            VisualDLExport(log_dir, **kw), TqdmProgressBar(file=io.StringIO())]


def steps(points):
    return [s for s, _ in points]


def assert_strictly_increasing(points, tag):
    s = steps(points)
    assert all(a < b for a, b in zip(s, s[1:])), f"{tag}: steps not strictly increasing: {s}"


@pytest.mark.parametrize("read", [tb_read, vdl_read], ids=["tensorboard", "visualdl"])
def test_fit_with_every_callback_writes_every_tag(tmp_path, read):
    model = make_model()
    model.fit(TwoTaskData(96), TwoTaskData(32, seed=1), epochs=2, batch_size=16, verbose=1,
              callbacks=all_callbacks(tmp_path / "logs"))
    points = read(tmp_path / "logs")
    # The configuration is text: TensorBoard files it under a plugin suffix, VisualDL does not.
    config = "autoloss/config/text_summary" if read is tb_read else "autoloss/config"
    expected = [*TRAIN_TAGS, "topk/ratio"]
    assert sorted(points) == sorted([*expected, *EVAL_TAGS, config])  # each tag, nothing else
    for tag in expected:
        assert steps(points[tag]) == list(range(1, 2 * STEPS + 1)), tag
    for tag in EVAL_TAGS:
        assert steps(points[tag]) == [STEPS, 2 * STEPS], tag
    for tag, pts in points.items():
        assert_strictly_increasing(pts, tag)
    assert steps(points[config]) == [0]
    # The values are the real ones: σ the last step's forward used (before its update).
    sigma = model._loss.used()[0]
    assert points["autoloss/sigma/y1"][-1][1] == pytest.approx(sigma["y1"], rel=1e-6)
    assert points["autoloss/sigma/y2"][-1][1] == pytest.approx(sigma["y2"], rel=1e-6)
    assert [v for _, v in points["lr"]] == pytest.approx([0.05] * 2 * STEPS)
    # TopKScheduler(start=1.0, end=0.5) by epoch over 2 epochs: epoch 1 at 1.0, epoch 2 at 0.5.
    assert [v for _, v in points["topk/ratio"]] == pytest.approx([1.0] * STEPS + [0.5] * STEPS)


def test_every_n_steps_and_eval_only_in_fit(tmp_path):
    model = make_model(make_loss(topk=False))
    model.fit(TwoTaskData(96), TwoTaskData(32, seed=1), epochs=2, batch_size=16, verbose=0,
              callbacks=[AutoWeightCallback(), TensorBoardExport(tmp_path, every_n_steps=4)])
    points = tb_read(tmp_path)
    assert steps(points["train/loss"]) == [4, 8, 12]
    assert steps(points["autoloss/sigma/y2"]) == [4, 8, 12]
    assert steps(points["eval/loss"]) == [6, 12]
    with pytest.warns(UserWarning, match="during fit"):
        model.evaluate(TwoTaskData(32, seed=1), batch_size=16, verbose=0,
                       callbacks=[TensorBoardExport(tmp_path / "eval_only")])


def crash_at(global_step: int, exc: type[BaseException]):
    class Crash(paddle.callbacks.Callback):
        """Raises at the start of a batch, as Ctrl-C or a failing step would."""

        count = 0

        def on_train_batch_begin(self, step, logs=None):
            Crash.count += 1
            if Crash.count == global_step:
                raise exc("boom")

    return Crash()


class FailingBatches:
    """Batches of TwoTaskData that raise on the n-th batch read, as a corrupt file would.

    An iterable, not a paddle.io.Dataset: in paddle 3.3.1 a Dataset that raises
    inside the DataLoader's prefetch thread hangs fit instead of raising.
    """

    def __init__(self, fail_at: int) -> None:
        self.data, self.reads, self.fail_at = TwoTaskData(96), 0, fail_at

    def __len__(self) -> int:
        return STEPS

    def __iter__(self):
        for batch in self.data.batches(16):
            self.reads += 1
            if self.reads == self.fail_at:
                raise OSError("corrupt sample")
            yield batch


@pytest.mark.parametrize("how", ["keyboard_interrupt", "dataset_error"])
def test_points_before_a_raise_are_readable_in_the_same_process(tmp_path, how):
    # 9 batches done, the 10th (epoch 2, step 4) fails before it is trained.
    if how == "keyboard_interrupt":
        data, extra, exc = TwoTaskData(96), [crash_at(10, KeyboardInterrupt)], KeyboardInterrupt
    else:
        data, extra, exc = FailingBatches(fail_at=10), [], OSError
    model = make_model(make_loss(topk=False))
    with pytest.raises(exc):
        model.fit(data, TwoTaskData(32, seed=1), epochs=3, batch_size=16, verbose=0,
                  callbacks=[*extra, AutoWeightCallback(), TensorBoardExport(tmp_path), VisualDLExport(tmp_path)])
    for read in (tb_read, vdl_read):
        points = read(tmp_path)
        for tag in TRAIN_TAGS:
            assert steps(points[tag]) == list(range(1, 10)), (read.__name__, tag)
        assert steps(points["eval/loss"]) == [STEPS]


def test_points_survive_the_process_dying(tmp_path):
    """os._exit mid-epoch: no atexit, no finally, no close; the points are on disk."""
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
        import paddle
        from helpers import TwoTaskData, build_model, kendall_loss
        from hapi_autoloss.callbacks import AutoWeightCallback, TensorBoardExport, VisualDLExport

        class Die(paddle.callbacks.Callback):
            def on_train_batch_begin(self, step, logs=None):
                if step == 3:  # 3 batches done
                    os._exit(7)

        model = build_model(kendall_loss())
        model.fit(TwoTaskData(96), epochs=1, batch_size=16, verbose=0,
                  callbacks=[Die(), AutoWeightCallback(), TensorBoardExport({str(tmp_path)!r}),
                             VisualDLExport({str(tmp_path)!r})])
    """)
    proc = run_python("-c", code, timeout=120)
    assert proc.returncode == 7, proc.stderr[-3000:]
    for read in (tb_read, vdl_read):
        points = read(tmp_path)
        for tag in ["train/loss", *TASK_TAGS]:
            assert steps(points[tag]) == [1, 2, 3], (read.__name__, tag)


def test_resumed_run_replaces_redone_steps(tmp_path):
    logs, ckpt = tmp_path / "logs", tmp_path / "ckpt"
    # Run 1 saves at each epoch end and dies at step 15 (epoch 3), after the
    # step-12 checkpoint: steps 13 and 14 are written, then redone by run 2.
    # Each run builds and trains under a fresh name guard, as a new process would
    # (Adam's moments are saved under names that must match).
    with paddle.utils.unique_name.guard():
        model = make_model(make_loss(topk=False))
        with pytest.raises(KeyboardInterrupt):
            model.fit(TwoTaskData(96), TwoTaskData(32, seed=1), epochs=3, batch_size=16, verbose=0,
                      save_dir=str(ckpt), callbacks=[crash_at(15, KeyboardInterrupt), AutoWeightCallback(),
                                                     TensorBoardExport(logs), VisualDLExport(logs)])
    assert steps(tb_read(logs)["train/loss"]) == list(range(1, 15))

    # Run 2: a new model, a smaller learning rate to tell its points apart.
    with paddle.utils.unique_name.guard():
        resumed = make_model(make_loss(topk=False), lr=0.01)
        path = str(ckpt / "1")  # saved after epoch 2 = step 12
        resumed.load(path)
        hapi_autoloss.load_state(resumed, path)
        tb, vdl = TensorBoardExport(logs), VisualDLExport(logs)
        resumed.fit(TwoTaskData(96), TwoTaskData(32, seed=1), epochs=1, batch_size=16, verbose=0,
                    callbacks=[AutoWeightCallback(), tb, vdl])
    assert tb.global_step == vdl.global_step == 18
    for read in (tb_read, vdl_read):
        points = read(logs)
        for tag in TRAIN_TAGS:
            assert steps(points[tag]) == list(range(1, 19)), (read.__name__, tag)  # each step once
            assert_strictly_increasing(points[tag], tag)
        assert steps(points["eval/loss"]) == [6, 12, 18]
        lr = dict(points["lr"])
        assert lr[12] == pytest.approx(0.05) and lr[13] == pytest.approx(0.01), read.__name__  # replaced
        config = next(t for t in points if t.startswith("autoloss/config"))
        assert steps(points[config]) == [0, 12]


def test_second_fit_with_the_same_callback_continues(tmp_path):
    model = make_model(make_loss(topk=False))
    tb, vdl = TensorBoardExport(tmp_path), VisualDLExport(tmp_path)
    for _ in range(2):
        model.fit(TwoTaskData(96), epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback(), tb, vdl])
    for read in (tb_read, vdl_read):
        assert steps(read(tmp_path)["autoloss/sigma/y1"]) == list(range(1, 13)), read.__name__


def test_a_fresh_run_replaces_an_old_one_in_the_same_folder(tmp_path):
    for epochs in (2, 1):
        model = make_model(make_loss(topk=False))
        model.fit(TwoTaskData(96), epochs=epochs, batch_size=16, verbose=0,
                  callbacks=[AutoWeightCallback(), TensorBoardExport(tmp_path), VisualDLExport(tmp_path)])
    for read in (tb_read, vdl_read):
        assert steps(read(tmp_path)["train/loss"]) == list(range(1, 7)), read.__name__


def test_state_round_trips_through_model_save(tmp_path):
    with paddle.utils.unique_name.guard():
        model = make_model(make_loss(topk=False))
        model.fit(TwoTaskData(96), epochs=1, batch_size=16, verbose=0,
                  callbacks=[AutoWeightCallback(), TensorBoardExport(tmp_path / "logs")])
        model.save(str(tmp_path / "m"))
    with paddle.utils.unique_name.guard():
        other = make_model(make_loss(topk=False))
        other.load(str(tmp_path / "m"))
        hapi_autoloss.load_state(other, str(tmp_path / "m"))
        fresh = TensorBoardExport(tmp_path / "logs")
        other.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback(), fresh])
    assert fresh.state_dict() == {"step": STEPS + 2, "epoch": 2}


def test_bad_log_dir_is_refused_before_training(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        TensorBoardExport(a_file)
    with pytest.raises(ValueError, match="local"):
        VisualDLExport("s3://bucket/runs")
    with pytest.raises(ValueError, match="every_n_steps"):
        TensorBoardExport(tmp_path, every_n_steps=0)

    class Count(paddle.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, step, logs=None):
            Count.batches += 1

    model = make_model(make_loss(topk=False))
    with pytest.raises(PermissionError, match="cannot write to log_dir"):
        model.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0,
                  callbacks=[AutoWeightCallback(), Count(), VisualDLExport(a_file / "sub")])
    assert Count.batches == 0


def test_missing_visualdl_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "visualdl", None)  # what Python does for an absent package
    with pytest.raises(ImportError, match=r'pip install "hapi-autoloss\[visualdl\]"'):
        VisualDLExport("runs/x")


@pytest.mark.distributed
def test_only_rank_0_writes(tmp_path):
    script = os.path.join(ROOT, "tests", "scripts", "dist_export.py")
    proc, logs = launch_two_ranks(script, str(tmp_path), log_dir=tmp_path / "launch", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-4000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    files = sorted(os.listdir(tmp_path / "logs"))
    # One TensorBoard and one VisualDL file, both opened by rank 0; rank 1 opened none.
    assert len(files) == 2 and "tfevents" in files[0] and "vdlrecords" in files[1], files
    assert ranks[0]["files"] == [str(tmp_path / "logs" / f) for f in files]
    assert ranks[1]["files"] == [None, None]
    assert ranks[0]["step"] == ranks[1]["step"] == 16  # both count; 8 batches per rank per epoch
    for read in (tb_read, vdl_read):
        points = read(tmp_path / "logs")
        for tag in ["train/loss", "lr", *TASK_TAGS]:
            assert steps(points[tag]) == list(range(1, 17)), (read.__name__, tag)
    # The progress bar: rank 0 draws both epochs to their 8 steps and the last step's σ, rank 1 is silent.
    # newline="": keep tqdm's carriage returns (read_text() turns them into line breaks, and a
    # loaded machine then shows the bar's last update and its redraw at close as two lines).
    with open(tmp_path / "bar0.txt", encoding="utf-8", newline="") as bar:
        done = [line for line in final_lines(bar.read()) if "| 8/8 [" in line]
    assert [line.split(":")[0] for line in done] == ["Epoch 1/2", "Epoch 2/2"]
    sigma = ranks[0]["used"]  # σ the last step's forward used
    assert done[-1].endswith(f"σ_y1={sigma[0]:.4g}, σ_y2={sigma[1]:.4g}]"), done[-1]
    assert (tmp_path / "bar1.txt").read_text() == ""
    np.testing.assert_array_equal(ranks[0]["sigma"], ranks[1]["sigma"])  # bit for bit


def test_visualdl_resume_copes_with_a_record_cut_short(tmp_path):
    """A machine crash can leave half a record at the end; VisualDL's LogReader then
    fails on the whole file, but the resumed run's copy keeps every whole record."""
    with paddle.utils.unique_name.guard():
        model = make_model(make_loss(topk=False))
        model.fit(TwoTaskData(96), epochs=2, batch_size=16, verbose=0,
                  callbacks=[AutoWeightCallback(), VisualDLExport(tmp_path / "logs")])
        model.save(str(tmp_path / "m"))
    (old,) = [f for f in (tmp_path / "logs").iterdir() if "vdlrecords" in f.name]
    os.truncate(old, old.stat().st_size - 5)  # the last record (step 12's lr) is cut
    with paddle.utils.unique_name.guard():
        resumed = make_model(make_loss(topk=False))
        resumed.load(str(tmp_path / "m"))
        hapi_autoloss.load_state(resumed, str(tmp_path / "m"))
        resumed.fit(TwoTaskData(96), epochs=1, batch_size=16, verbose=0,
                    callbacks=[AutoWeightCallback(), VisualDLExport(tmp_path / "logs")])
    points = vdl_read(tmp_path / "logs")
    assert steps(points["train/loss"]) == list(range(1, 19))
    assert steps(points["lr"]) == [*range(1, 12), *range(13, 19)]  # only the cut record is gone
