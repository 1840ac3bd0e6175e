"""A new model moves only the earlier run's files our exporters wrote (their names end in the
mark) into ``earlier-run-<time>/``: a user's own tensorboardX / VisualDL writer in the folder,
its other files, and a marked file another process may still be writing stay where they are.
Files read back by each tool's own reader."""

from __future__ import annotations

import os
import shutil
import time
import warnings

import pytest
import tensorboardX
from helpers import TwoTaskData, build_model, kendall_loss, tb_read, vdl_read
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from visualdl import LogReader, LogWriter

from hapi_autoloss.callbacks import AutoWeightCallback, TensorBoardExport, VisualDLExport
from hapi_autoloss.plot import read_scalars

STEPS = 6  # TwoTaskData(96) in batches of 16
MARK = ".hapi-autoloss"


def fit(model, log_dir):
    model.fit(TwoTaskData(96), epochs=1, batch_size=16, verbose=0,
              callbacks=[AutoWeightCallback(), TensorBoardExport(log_dir), VisualDLExport(log_dir)])


def earlier_runs(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("earlier-run-"))


def test_a_users_own_writers_and_files_stay(tmp_path):
    tb = tensorboardX.SummaryWriter(str(tmp_path))
    tb.add_scalar("user/tb", 1.0, 0)
    tb.flush()
    vdl = LogWriter(logdir=str(tmp_path))
    vdl.add_scalar("user/vdl", 1.0, 0)
    vdl.flush()
    (tmp_path / "tfevents_readme.txt").write_text("the user's notes")
    users = sorted(os.listdir(tmp_path))
    fit(build_model(kendall_loss()), tmp_path)  # a new model: nothing of ours to move yet
    assert earlier_runs(tmp_path) == []
    fit(build_model(kendall_loss(), lr=0.01), tmp_path)  # model A's run moves, alone
    tb.add_scalar("user/tb", 2.0, 1)
    tb.close()
    vdl.add_scalar("user/vdl", 2.0, 1)
    vdl.close()
    [earlier] = earlier_runs(tmp_path)
    moved = sorted(os.listdir(tmp_path / earlier))
    assert len(moved) == 2 and all(n.endswith(MARK) for n in moved)
    assert set(users) <= set(os.listdir(tmp_path))
    assert (tmp_path / "tfevents_readme.txt").read_text() == "the user's notes"
    # The user's writers kept writing into their files, in place.
    [tb_file] = [n for n in users if "tfevents" in n and not n.endswith(".txt")]
    acc = EventAccumulator(str(tmp_path / tb_file))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("user/tb")] == [(0, 1.0), (1, 2.0)]
    [vdl_file] = [n for n in users if "vdlrecords" in n]
    reader = LogReader(file_path=str(tmp_path / vdl_file))
    assert [(v.id, v.value) for v in reader.get_data("scalar", "user/vdl")] == [(0, 1.0), (1, 2.0)]
    # Each reader finds both runs: the folder's (lr 0.01) and the moved one (lr 0.05).
    for read in (tb_read, vdl_read):
        assert [v for _, v in read(tmp_path)["lr"]] == pytest.approx([0.01] * STEPS), read.__name__
        assert [v for _, v in read(tmp_path / earlier)["lr"]] == pytest.approx([0.05] * STEPS), read.__name__
    assert read_scalars(tmp_path, "visualdl")["lr"][1] == pytest.approx([0.01] * STEPS)
    assert read_scalars(tmp_path / earlier)["lr"][1] == pytest.approx([0.05] * STEPS)


def test_a_marked_file_another_process_may_write_stays(tmp_path):
    """A marked file last written before this process started moves; one written since, by no
    exporter of this process, stays, and the warning names it."""
    source, run = tmp_path / "a", tmp_path / "run"
    fit(build_model(kendall_loss()), source)
    run.mkdir()
    [old] = [n for n in os.listdir(source) if "tfevents" in n]
    [busy] = [n for n in os.listdir(source) if "vdlrecords" in n]
    shutil.copy(source / old, run / old)
    os.utime(run / old, (1e9, 1e9))  # 2001: a dead process's run
    shutil.copy(source / busy, run / busy)  # now: a process still writing it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(build_model(kendall_loss(), lr=0.01), run)
    [earlier] = earlier_runs(run)
    assert os.listdir(run / earlier) == [old]
    assert busy in os.listdir(run)
    assert any(busy in str(w.message) and "Fix:" in str(w.message) for w in caught)
    assert [v for _, v in tb_read(run / earlier)["lr"]] == pytest.approx([0.05] * STEPS)
    assert [v for _, v in vdl_read(run)["lr"]] == pytest.approx([0.01] * STEPS)  # the newest file


def test_a_file_another_process_wrote_just_before_this_one_started_stays(tmp_path, monkeypatch):
    """In a script training starts ms after the import, so "written since this process started"
    missed a live run writing every few hundred ms in the same folder: its files were moved."""
    from hapi_autoloss.callbacks import _earlier_run

    source, run = tmp_path / "a", tmp_path / "run"
    fit(build_model(kendall_loss()), source)
    run.mkdir()
    [live] = [n for n in os.listdir(source) if "tfevents" in n]
    shutil.copy(source / live, run / live)
    now = time.time()
    os.utime(run / live, (now - 5, now - 5))  # 5 s ago, by another process
    monkeypatch.setattr(_earlier_run, "_IMPORTED", now)  # this process had just started
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(build_model(kendall_loss(), lr=0.01), run)
    assert earlier_runs(run) == [] and live in os.listdir(run)
    assert any(live in str(w.message) and "Fix:" in str(w.message) for w in caught)


def test_a_resume_copies_forward_our_newest_file_not_a_users_later_one(tmp_path):
    """A user's own LogWriter file started after ours sorts after it: the resume copied that one."""
    from hapi_autoloss.callbacks.visualdl import newest_vdl_file

    ours = "vdlrecords.1796674310.log.1796674310320329635.19315.hapi-autoloss"
    for name in (ours, "vdlrecords.1796674312.log", "vdlrecords.1796674300.log.1.2.hapi-autoloss"):
        (tmp_path / name).write_bytes(b"")
    assert newest_vdl_file(str(tmp_path)) == str(tmp_path / ours)
    older = tmp_path / "older"
    older.mkdir()
    (older / "vdlrecords.1.log").write_bytes(b"")  # files of a version before the mark: the greatest
    (older / "vdlrecords.2.log").write_bytes(b"")
    assert newest_vdl_file(str(older)) == str(older / "vdlrecords.2.log")
