"""A real 2-process `paddle.distributed.launch` run (CPU, gloo): σ equal on every rank."""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "dist_sigma.py")


def launch(tmp_path, mode, expect_ok=True):
    out = tmp_path / mode
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=ROOT)
    for key in ("PADDLE_TRAINER_ID", "PADDLE_TRAINERS_NUM", "PADDLE_TRAINER_ENDPOINTS"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(out / "log"), SCRIPT, str(out), mode]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join((out / "log" / f).read_text() for f in os.listdir(out / "log")) if (out / "log").exists() else ""
    if not expect_ok:
        return proc, {r: (out / "log" / f"workerlog.{r}").read_text() for r in (0, 1)}
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-4000:]
    return [np.load(out / f"rank{r}.npz") for r in (0, 1)]


@pytest.mark.distributed
def test_sigma_identical_across_two_ranks(tmp_path):
    naive = launch(tmp_path, "naive")
    # DataParallel keeps the network in step but not a loss's own parameters.
    np.testing.assert_array_equal(naive[0]["w"], naive[1]["w"])
    assert not np.array_equal(naive[0]["s"], naive[1]["s"])

    ours = launch(tmp_path, "autoloss")
    np.testing.assert_array_equal(ours[0]["w"], ours[1]["w"])
    np.testing.assert_array_equal(ours[0]["s"], ours[1]["s"])
    assert np.abs(ours[0]["s"]).min() > 0.05


@pytest.mark.distributed
def test_a_nan_on_one_rank_is_skipped_on_both(tmp_path):
    ranks = launch(tmp_path, "nan_skip")
    assert int(ranks[0]["skipped"]) == int(ranks[1]["skipped"]) >= 1
    np.testing.assert_array_equal(ranks[0]["s"], ranks[1]["s"])
    np.testing.assert_array_equal(ranks[0]["w"], ranks[1]["w"])
    assert np.all(np.isfinite(ranks[0]["s"]))


@pytest.mark.distributed
def test_a_nan_on_one_rank_stops_both_without_a_hang(tmp_path):
    proc, logs = launch(tmp_path, "nan_raise", expect_ok=False)
    assert proc.returncode != 0
    assert "FloatingPointError" in logs[0] and "task 'y1'" in logs[0]
    assert "FloatingPointError" in logs[1] and "on another rank" in logs[1]
