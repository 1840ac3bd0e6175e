"""BackupAndRestore: kill -9 mid-epoch, start the same script again, get the uninterrupted
run bit for bit, with shuffle=True, dropout and an lr schedule; a finished run does nothing."""

import contextlib
import os
import signal

import numpy as np
import paddle
import pytest
from helpers import ROOT, RaiseOnce, TwoTaskData, build_model, launch_two_ranks, run_python, tb_read

import hapi_autoloss
from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback, BackupAndRestore

SCRIPT = os.path.join(ROOT, "tests", "scripts", "backup_restore.py")
STEPS = 5 * 6  # epochs × batches


def run(out, *args, method="kendall"):
    return run_python(SCRIPT, str(out), *args, method, timeout=600)


def scalars(log_dir):
    return {tag: points for tag, points in tb_read(log_dir).items() if tag != "autoloss/config/text_summary"}


def crash_and_restart(tmp_path, method, options=()):
    full = run(tmp_path, "full", *options, method=method)
    assert full.returncode == 0, full.stderr[-3000:]
    crash = run(tmp_path, "run", "kill", *options, method=method)
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-3000:]
    assert not (tmp_path / "run.npz").exists()
    info = hapi_autoloss.checkpoint_info(hapi_autoloss.latest_checkpoint(str(tmp_path / "run" / "backup")))
    before = 3 if "stage" in options else 0  # epochs of the fit before the backed-up one
    assert info == {"epoch": before + 2, "step": 6 * (before + 2)}  # killed in epoch 3: two backed up
    again = run(tmp_path, "run", *options, method=method)
    assert again.returncode == 0, again.stderr[-3000:]
    last = 4 if "iters" in options else 5
    assert "restored" in again.stdout and f"after epoch 2; training epochs 3..{last}" in again.stdout
    return np.load(tmp_path / "full.npz"), np.load(tmp_path / "run.npz")


@pytest.mark.parametrize("method,options", [
    ("kendall", ()),
    ("rlw", ()),
    ("dwa", ("stage", "eval")),  # epochs counted within the fit; a backup after the evaluation
    ("kendall", ("iters",)),  # num_iters counts the restored steps off
    ("pcgrad", ()),  # gradient-level: its random order stream
    ("db_mtl", ()),  # gradient-level: its gradient history
], ids=["kendall", "rlw", "dwa-stage-eval", "kendall-num_iters", "pcgrad", "db_mtl"])
def test_kill_9_then_the_same_script_equals_an_uninterrupted_run(tmp_path, method, options):
    full, resumed = crash_and_restart(tmp_path, method, options)
    assert 0.2 <= float(full["k"]) < 1.0
    for key in ("s", "k", "w", "h", "lr", "rlw"):
        np.testing.assert_array_equal(resumed[key], full[key], err_msg=key)
    if method in ("dwa", "db_mtl"):
        assert abs(float(full["rlw"][0]) - 1.0) > 1e-4  # the weights moved off 1
    if method == "kendall":
        want, got = scalars(tmp_path / "full" / "logs"), scalars(tmp_path / "run" / "logs")
        assert set(got) == set(want) and "autoloss/sigma/y1" in got
        for tag, points in want.items():
            assert [s for s, _ in got[tag]] == [s for s, _ in points], tag  # every step once
            np.testing.assert_array_equal([v for _, v in got[tag]], [v for _, v in points], err_msg=tag)
        steps = 20 if "iters" in options else STEPS
        assert [s for s, _ in want["train/loss"]] == list(range(1, steps + 1))


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



def test_fit_again_in_the_same_process_after_an_exception(tmp_path):
    """dwa's partial epoch sums of the failed fit must not leak into the restored one."""

    def build():
        paddle.seed(0)
        loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method="dwa")
        return build_model(loss), loss

    def fit(model, folder, *extra):
        model.fit(TwoTaskData(96), epochs=5, batch_size=16, verbose=0,
                  callbacks=[AutoWeightCallback(), BackupAndRestore(tmp_path / folder), *extra])

    full, full_loss = build()
    fit(full, "full")
    model, loss = build()
    boom = RaiseOnce(2, 3)
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, "run", boom)
    fit(model, "run", boom)
    np.testing.assert_array_equal(loss.weighting.dwa_weights.numpy(), full_loss.weighting.dwa_weights.numpy())
    assert abs(float(loss.weighting.dwa_weights.numpy()[0]) - 1.0) > 1e-4
    for got, want in zip(model.network.parameters(), full.network.parameters()):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_the_cell_run_again_after_an_interrupt_restores_a_new_model_exactly(tmp_path):
    """A notebook: the cell that builds the loss and model and fits is run again after Ctrl-C.
    The new model's parameters are named after those of the first (linear_6 where the backup
    has linear_0), so hapi's load left Adam's moments under the old names: the first update
    failed ("Optimizer set error, linear_6.w_0_moment1_0 should in state dict")."""

    def cell(folder, *extra):
        paddle.seed(0)
        loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method="kendall",
                          task_types=["regression"] * 2)
        model = build_model(loss)
        with contextlib.suppress(RuntimeError):
            model.fit(TwoTaskData(96), epochs=4, batch_size=16, verbose=0,
                      callbacks=[AutoWeightCallback(), BackupAndRestore(tmp_path / folder), *extra])
        return model, loss

    full, full_loss = cell("full")
    first, _ = cell("run", RaiseOnce(2, 3))
    model, loss = cell("run")
    assert {p.name for p in model.network.parameters()}.isdisjoint(p.name for p in first.network.parameters())
    assert loss.sigmas() == full_loss.sigmas()
    for got, want in zip(model.network.parameters(), full.network.parameters()):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_backup_of_another_loss_is_refused_before_anything_is_loaded(tmp_path):
    """The user changed method= and ran the cell again: the error names the folder and how to
    start a new run, and the new model is untouched (hapi's load ran before the check)."""

    def build(method):
        paddle.seed(0)
        loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method=method,
                          **({"task_types": ["regression"] * 2} if method == "kendall" else {}))
        return build_model(loss)

    build("kendall").fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0,
                         callbacks=[AutoWeightCallback(), BackupAndRestore(tmp_path)])
    model = build("liebel")
    before = [p.numpy().copy() for p in model.network.parameters()]
    with pytest.raises(ValueError, match=r"BackupAndRestore cannot resume .*method='kendall'.*Fix: build "
                                         r"the same loss.*delete '.*' or pass another backup_dir"):
        model.fit(TwoTaskData(32), epochs=2, batch_size=16, verbose=0,
                  callbacks=[AutoWeightCallback(), BackupAndRestore(tmp_path)])
    for p, b in zip(model.network.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)


@pytest.mark.distributed
def test_two_ranks_crash_and_resume_with_each_rank_own_random_stream(tmp_path):
    script = os.path.join(ROOT, "tests", "scripts", "dist_backup.py")
    for mode, ok in (("full", True), ("crash", False), ("resume", True)):
        proc, logs = launch_two_ranks(script, str(tmp_path), mode, log_dir=tmp_path / f"log-{mode}", cwd=tmp_path)
        assert (proc.returncode == 0) == ok, proc.stderr[-2000:] + logs[-4000:]
    backups = sorted(os.listdir(tmp_path / "run" / "backup"))
    assert any(name.endswith(".rng0.npy") for name in backups) and any(name.endswith(".rng1.npy") for name in backups)
    full = [np.load(tmp_path / f"full-rank{r}.npz") for r in (0, 1)]
    resumed = [np.load(tmp_path / f"resume-rank{r}.npz") for r in (0, 1)]
    for r in (0, 1):
        for key in ("s", "w"):
            np.testing.assert_array_equal(resumed[r][key], full[r][key], err_msg=f"rank {r} {key}")
    np.testing.assert_array_equal(full[0]["s"], full[1]["s"])
