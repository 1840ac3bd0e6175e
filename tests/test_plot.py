"""hapi-autoloss plot: a real PNG from real logs, and its error cases."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import matplotlib.image
import paddle
import pytest
from helpers import TwoTaskData, build_model
from tensorboardX import SummaryWriter

from hapi_autoloss import AutoWeight, TopKLoss
from hapi_autoloss.callbacks import AutoWeightCallback, TensorBoardExport, TopKScheduler, VisualDLExport
from hapi_autoloss.plot import (
    DPI,
    FIGSIZE,
    LogDirNotFoundError,
    NoKnownTagsError,
    NoLogsError,
    main,
    plot_curves,
    read_scalars,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The PNG is the figure's size in inches times its dpi, as the plot module sets them.
WIDTH, HEIGHT = round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI)


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """One real fit, logged to TensorBoard and VisualDL in the same folder."""
    paddle.disable_static()
    paddle.set_device("cpu")
    folder = tmp_path_factory.mktemp("runs") / "exp"
    loss = AutoWeight({"y1": TopKLoss(paddle.nn.MSELoss(reduction="none")), "y2": paddle.nn.MSELoss()},
                      method="kendall", task_types=["regression", "regression"])
    model = build_model(loss)
    model.fit(TwoTaskData(96), epochs=3, batch_size=16, verbose=0,
              callbacks=[AutoWeightCallback(), TopKScheduler(start=1.0, end=0.5),
                         TensorBoardExport(folder), VisualDLExport(folder)])
    return folder


def assert_png(path):
    data = open(path, "rb").read()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 30_000  # four panels of lines, not an empty canvas
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (HEIGHT, WIDTH)


@pytest.mark.parametrize("reader", ["tensorboard", "visualdl"])
def test_plot_command_writes_a_png_from_real_logs(logdir, tmp_path, capsys, reader):
    out = tmp_path / f"{reader}.png"
    assert main(["plot", str(logdir), "-o", str(out), "--reader", reader]) == 0
    assert f"Wrote {out}" in capsys.readouterr().out
    assert_png(out)


def test_both_readers_see_the_same_curves(logdir):
    tb, vdl = read_scalars(logdir, "tensorboard"), read_scalars(logdir, "visualdl")
    for tag in ("autoloss/sigma/y1", "autoloss/weight/y2", "autoloss/loss/y1", "topk/ratio"):
        assert tb[tag][0] == vdl[tag][0] == list(range(1, 19))
        assert tb[tag][1] == pytest.approx(vdl[tag][1], rel=1e-6)
    assert tb["topk/ratio"][1][0] == 1.0 and tb["topk/ratio"][1][-1] == pytest.approx(0.5)


def test_without_the_word_plot_and_default_output(logdir):
    assert main([str(logdir)]) == 0
    assert_png(logdir / "curves.png")


def test_console_script_and_module_entry_points(logdir, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    runs = [[sys.executable, "-m", "hapi_autoloss.plot", str(logdir), "-o", str(tmp_path / "m.png")]]
    script = os.path.join(os.path.dirname(sys.executable), "hapi-autoloss")
    if os.path.exists(script):  # installed with pip install -e .
        runs.append([script, "plot", str(logdir), "-o", str(tmp_path / "s.png")])
    for cmd in runs:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert_png(cmd[-1])


def test_missing_empty_and_foreign_logdirs(tmp_path, capsys):
    with pytest.raises(LogDirNotFoundError, match="does not exist"):
        plot_curves(tmp_path / "nope")
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoLogsError, match="empty") as info:
        plot_curves(empty)
    assert type(info.value).__module__ == "hapi_autoloss.plot"  # what a traceback names: the public module
    assert main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hapi-autoloss plot: error:") and "holds no TensorBoard or VisualDL log" in err

    # Logs of someone else's tags: a tensorboardX run that is not ours.
    foreign = tmp_path / "foreign"
    with SummaryWriter(str(foreign)) as writer:
        for step in range(3):
            writer.add_scalar("accuracy", 0.5 + step / 10, step)
    with pytest.raises(NoKnownTagsError, match="found: accuracy"):
        plot_curves(foreign)
    assert main([str(foreign), "-o", str(tmp_path / "x.png")]) == 2
    assert "none of the tags" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_parent_folder_of_runs_is_pointed_to_a_run(logdir):
    with pytest.raises(NoLogsError, match="pass one run folder"):
        plot_curves(logdir.parent)


def foreign_run(folder):
    """A TensorBoard run that is not ours: other tags only."""
    with SummaryWriter(str(folder)) as writer:
        for step in range(3):
            writer.add_scalar("accuracy", 0.5 + step / 10, step)


def test_parent_folder_suggests_only_runs_with_our_tags(logdir, tmp_path):
    parent = tmp_path / "parent"
    foreign_run(parent / "a_foreign")  # sorts first
    (parent / "b_empty").mkdir(parents=True)
    ours = parent / "c_ours"
    ours.mkdir()
    for f in logdir.iterdir():
        if "tfevents" in f.name:
            (ours / f.name).write_bytes(f.read_bytes())
    with pytest.raises(NoLogsError) as err:
        plot_curves(parent)
    message = str(err.value)
    assert f"Fix: pass one run folder, e.g. {ours}." in message
    assert "a_foreign" not in message and "b_empty" not in message
    # Only foreign runs: nothing to suggest.
    only_foreign = tmp_path / "only_foreign"
    foreign_run(only_foreign / "run1")
    with pytest.raises(NoLogsError) as err:
        plot_curves(only_foreign)
    assert "run1" not in str(err.value) and "Fix: train with TensorBoardExport" in str(err.value)


def test_only_visualdl_logs_and_wrong_reader(tmp_path):
    model = build_model(AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method="liebel"))
    model.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0,
              callbacks=[AutoWeightCallback(), VisualDLExport(tmp_path)])
    assert_png(plot_curves(tmp_path, tmp_path / "c.png"))  # auto picks VisualDL
    with pytest.raises(NoLogsError, match="no TensorBoard log"):
        plot_curves(tmp_path, reader="tensorboard")


def test_missing_matplotlib_names_the_extra(logdir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    assert main([str(logdir), "-o", str(logdir / "never.png")]) == 2
    assert 'pip install "hapi-autoloss[plot]"' in capsys.readouterr().err


def test_quickstart_trains_logs_and_plots(tmp_path, capsys):
    import quickstart  # examples/, on sys.path via conftest

    out = quickstart.main(["--log-dir", str(tmp_path / "q"), "--epochs", "2", "--verbose", "0"])
    assert out["png"] == str(tmp_path / "q" / "curves.png")
    assert_png(out["png"])
    assert set(out["sigma"]) == {"digit", "ink"} and 0.0 < out["accuracy"] <= 1.0
    printed = capsys.readouterr().out
    assert f"tensorboard --logdir {tmp_path / 'q'}" in printed and "visualdl --logdir" in printed
    points = read_scalars(tmp_path / "q")
    assert {"autoloss/sigma/digit", "autoloss/sigma/ink", "topk/ratio", "eval/acc"} <= set(points)


def test_a_resumed_run_is_read_without_tensorboards_purge_note(tmp_path, caplog):
    """A resume from step 6 after a run that reached 12: the purge is expected, not reported."""
    import hapi_autoloss

    model = build_model(AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method="liebel"))
    for epoch in range(2):
        model.fit(TwoTaskData(96), epochs=1, batch_size=16, verbose=0,
                  callbacks=[AutoWeightCallback(), TensorBoardExport(tmp_path)])
        if epoch == 0:
            model.save(str(tmp_path / "ckpt" / "m"))
    resumed = build_model(AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method="liebel"))
    resumed.load(str(tmp_path / "ckpt" / "m"))
    hapi_autoloss.load_state(resumed, str(tmp_path / "ckpt" / "m"))
    resumed.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0,
                callbacks=[AutoWeightCallback(), TensorBoardExport(tmp_path)])
    caplog.set_level(logging.INFO)
    steps, _ = read_scalars(tmp_path)["train/loss"]
    assert steps == list(range(1, 9))  # 1..6, then the resumed 7..8; the first run's 9..12 purged
    assert "out of order" not in caplog.text


def test_wrong_reader_names_the_logs_that_are_there(logdir, tmp_path):
    only_tb = tmp_path / "tb"
    only_tb.mkdir()
    for name in os.listdir(logdir):
        if "tfevents" in name:
            (only_tb / name).write_bytes((logdir / name).read_bytes())
    with pytest.raises(NoLogsError) as err:
        plot_curves(only_tb, reader="visualdl")
    assert "holds TensorBoard log files. Fix: use --reader auto or --reader tensorboard" in str(err.value)


def test_a_cut_short_visualdl_file_is_read_up_to_the_cut(logdir, tmp_path):
    cut = tmp_path / "cut"
    cut.mkdir()
    name = sorted(n for n in os.listdir(logdir) if "vdlrecords" in n)[-1]
    (cut / name).write_bytes((logdir / name).read_bytes()[:-5])  # a crash mid-record
    whole = read_scalars(logdir, "visualdl")["autoloss/sigma/y1"]
    with pytest.warns(UserWarning, match=f"The VisualDL file .*{name}.* is cut short"):
        assert read_scalars(cut, "visualdl")["autoloss/sigma/y1"] == whole


def test_parent_folder_lists_runs_at_any_depth(tmp_path):
    """A new model moved exp1's earlier run into exp1/earlier-run-*: the parent lists it too, as
    TensorBoard and VisualDL do, and a run two levels down."""
    for folder in (tmp_path / "exp1", tmp_path / "exp1", tmp_path / "group" / "exp2"):
        build_model(kendall_like()).fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0,
                                        callbacks=[AutoWeightCallback(), TensorBoardExport(folder)])
    [earlier] = [n for n in os.listdir(tmp_path / "exp1") if n.startswith("earlier-run-")]
    with pytest.raises(NoLogsError) as err:
        plot_curves(tmp_path)
    runs = f"{tmp_path / 'exp1'}, {tmp_path / 'exp1' / earlier}, {tmp_path / 'group' / 'exp2'}."
    assert f"Its subfolders hold runs: {runs}" in str(err.value)


def kendall_like():
    return AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method="kendall",
                      task_types=["regression", "regression"])
