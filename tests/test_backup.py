"""BackupAndRestore: kill -9 mid-epoch, start the same script again, get the uninterrupted
run bit for bit, with shuffle=True, dropout and an lr schedule; a finished run does nothing."""

import os
import signal

import numpy as np
import pytest
from helpers import ROOT, run_python, tb_read

import hapi_autoloss
from hapi_autoloss.callbacks import BackupAndRestore

SCRIPT = os.path.join(ROOT, "tests", "scripts", "backup_restore.py")
STEPS = 5 * 6  # epochs × batches


def run(out, *args, method="kendall"):
    return run_python(SCRIPT, str(out), *args, method, timeout=600)


def scalars(log_dir):
    return {tag: points for tag, points in tb_read(log_dir).items() if tag != "autoloss/config/text_summary"}


def crash_and_restart(tmp_path, method):
    full = run(tmp_path, "full", method=method)
    assert full.returncode == 0, full.stderr[-3000:]
    crash = run(tmp_path, "run", "kill", method=method)
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-3000:]
    assert not (tmp_path / "run.npz").exists()
    info = hapi_autoloss.checkpoint_info(hapi_autoloss.latest_checkpoint(str(tmp_path / "run" / "backup")))
    assert info == {"epoch": 2, "step": 12}  # killed in epoch 3: two epochs backed up
    again = run(tmp_path, "run", method=method)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "restored" in again.stdout and "after epoch 2; training epochs 3..5" in again.stdout
    return np.load(tmp_path / "full.npz"), np.load(tmp_path / "run.npz")


@pytest.mark.parametrize("method", ["kendall", "rlw"])
def test_kill_9_then_the_same_script_equals_an_uninterrupted_run(tmp_path, method):
    full, resumed = crash_and_restart(tmp_path, method)
    assert 0.2 <= float(full["k"]) < 1.0
    for key in ("s", "k", "w", "h", "lr", "rlw"):
        np.testing.assert_array_equal(resumed[key], full[key], err_msg=key)
    if method == "kendall":
        want, got = scalars(tmp_path / "full" / "logs"), scalars(tmp_path / "run" / "logs")
        assert set(got) == set(want) and "autoloss/sigma/y1" in got
        for tag, points in want.items():
            assert [s for s, _ in got[tag]] == [s for s, _ in points], tag  # every step once
            np.testing.assert_array_equal([v for _, v in got[tag]], [v for _, v in points], err_msg=tag)
        assert [s for s, _ in want["train/loss"]] == list(range(1, STEPS + 1))


def test_a_finished_run_started_again_trains_nothing_and_says_so(tmp_path):
    first = run(tmp_path, "run")
    assert first.returncode == 0, first.stderr[-3000:]
    done = np.load(tmp_path / "run.npz")
    again = run(tmp_path, "run")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "has finished (5 epochs done), so this fit trains nothing" in again.stderr
    for key in ("s", "k", "w", "h", "lr"):
        np.testing.assert_array_equal(np.load(tmp_path / "run.npz")[key], done[key], err_msg=key)
    steps = [s for s, _ in scalars(tmp_path / "run" / "logs")["train/loss"]]
    assert steps == list(range(1, STEPS + 1))


def test_bad_backup_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"is a file, not a folder\. Fix"):
        BackupAndRestore(tmp_path / "file")
    with pytest.raises(ValueError, match=r"writes local files only.*Fix"):
        BackupAndRestore("hdfs://x/y")
