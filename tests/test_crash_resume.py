"""Kill -9 in the middle of epoch 3, resume with the README's steps, and get exactly the
uninterrupted run: σ, k and the network bit for bit, every logged step exactly once."""

import os
import signal
import subprocess
import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "crash_resume.py")
STEPS = 5 * 6  # epochs × batches


def run(mode, out):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, SCRIPT, mode, str(out)], env=env, capture_output=True,
                          text=True, timeout=600)


def scalars(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    full = run("full", tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    crash = run("crash", tmp_path)
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-3000:]
    assert not (tmp_path / "crash.npz").exists()
    resumed = run("resume", tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resume.npz")
    assert float(a["k"]) == 0.1
    for key in ("s", "k", "w", "h"):
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)

    want, got = scalars(tmp_path / "full" / "logs"), scalars(tmp_path / "crashed" / "logs")
    assert set(got) == set(want)
    for tag in ("train/loss", "autoloss/sigma/y1", "autoloss/loss/y2", "topk/ratio"):
        assert tag in got, sorted(got)
    for tag, points in want.items():
        steps = [s for s, _ in got[tag]]
        assert steps == sorted(set(steps)), f"{tag}: duplicated or unordered steps {steps}"
        assert steps == [s for s, _ in points], tag
        np.testing.assert_array_equal([v for _, v in got[tag]], [v for _, v in points], err_msg=tag)
    assert [s for s, _ in want["train/loss"]] == list(range(1, STEPS + 1))
