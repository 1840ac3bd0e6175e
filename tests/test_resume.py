"""σ survives model.save / ModelCheckpoint and a fresh process, bit for bit."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import TwoTaskData, build_model, kendall_loss

import hapi_autoloss
from hapi_autoloss.callbacks import AutoWeightCallback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "resume.py")


def run(mode, out):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, SCRIPT, mode, str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_sigma_and_its_adam_moments_survive_a_fresh_process(tmp_path):
    run("full", tmp_path)
    assert os.path.exists(tmp_path / "ckpt" / "1.autoloss")
    assert os.path.exists(tmp_path / "ckpt" / "final.autoloss")
    run("resume", tmp_path)
    saved = np.load(tmp_path / "epoch1.npy")
    loaded = np.load(tmp_path / "loaded.npy")
    assert saved.tobytes() == loaded.tobytes()  # bit-exact
    assert np.abs(saved).min() > 0.05  # and not the initial σ
    full, resumed = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    # The last epoch continues with the same Adam moments for σ and the network.
    for key in ("s", "w", "h"):
        np.testing.assert_array_equal(resumed[key], full[key])


def train_and_save(path, n=96):
    """A model trained one epoch with σ learned and saved at ``path``; its loss."""
    loss = kendall_loss()
    model = build_model(loss)
    model.fit(TwoTaskData(n), epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback()])
    model.save(str(path))
    return loss


def test_naive_save_and_load_lose_sigma(tmp_path):
    loss = train_and_save(tmp_path / "m")
    fresh = kendall_loss()
    other = build_model(fresh)
    other.load(str(tmp_path / "m"))
    np.testing.assert_array_equal(fresh.s.numpy(), [0.0, 0.0])  # hapi alone: σ reset
    hapi_autoloss.load_state(other, str(tmp_path / "m"))
    np.testing.assert_array_equal(fresh.s.numpy(), loss.s.numpy())


def test_load_state_errors(tmp_path):
    model = build_model(kendall_loss())
    with pytest.raises(FileNotFoundError, match="same path prefix"):
        hapi_autoloss.load_state(model, str(tmp_path / "missing"))
    train_and_save(tmp_path / "m", n=32)
    other = build_model(hapi_autoloss.AutoWeight([lambda o, y: o.mean()], method="liebel",
                                                 routing=[(0, 2)]))
    with pytest.raises(ValueError, match="build the same loss"):
        hapi_autoloss.load_state(other, str(tmp_path / "m"))


def test_latest_checkpoint_skips_half_written_ones(tmp_path):
    assert hapi_autoloss.latest_checkpoint(str(tmp_path / "nothing")) is None
    loss = kendall_loss()
    model = build_model(loss)
    save_dir = tmp_path / "ckpt"
    model.fit(TwoTaskData(32), epochs=3, batch_size=16, verbose=0, save_dir=str(save_dir),
              callbacks=[AutoWeightCallback()])
    assert hapi_autoloss.latest_checkpoint(str(save_dir)) == str(save_dir / "final")
    os.remove(save_dir / "final.autoloss")
    (save_dir / "7.pdparams").write_bytes(b"killed while saving")  # no .autoloss: incomplete
    assert hapi_autoloss.latest_checkpoint(str(save_dir)) == str(save_dir / "2")


def test_load_state_after_a_reset_optimizer_load_trains(tmp_path):
    loss = train_and_save(tmp_path / "m", n=32)
    fresh = kendall_loss()
    other = build_model(fresh)
    other.load(str(tmp_path / "m"), reset_optimizer=True)
    hapi_autoloss.load_state(other, str(tmp_path / "m"))
    np.testing.assert_array_equal(fresh.s.numpy(), loss.s.numpy())
    other.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback()])
    assert not np.array_equal(fresh.s.numpy(), loss.s.numpy())


def test_only_the_callbacks_of_the_last_fit_are_saved(tmp_path):
    import paddle

    from hapi_autoloss import AutoWeight, TopKLoss
    from hapi_autoloss.callbacks import TopKScheduler

    loss = AutoWeight({"y1": TopKLoss(paddle.nn.MSELoss(reduction="none"), ratio=1.0),
                       "y2": paddle.nn.MSELoss()}, method="kendall", task_types=["regression"] * 2)
    model = build_model(loss)
    for _ in range(2):  # a new scheduler for each fit
        model.fit(TwoTaskData(32), epochs=2, batch_size=16, verbose=0,
                  callbacks=[AutoWeightCallback(), TopKScheduler(start=1.0, end=0.5)])
    model.save(str(tmp_path / "m"))
    saved = paddle.load(str(tmp_path / "m") + ".autoloss")
    assert list(saved["callbacks"]) == ["TopKScheduler"]


def test_a_nested_autoweight_is_attached_too():
    import paddle

    class Wrapper(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.inner = kendall_loss()

        def forward(self, *tensors):
            return self.inner(*tensors)

    wrapper = Wrapper()
    model = build_model(wrapper)
    model.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback()])
    assert np.abs(wrapper.inner.s.numpy()).min() > 0
