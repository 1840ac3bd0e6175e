"""σ survives model.save / ModelCheckpoint and a fresh process, bit for bit."""

import os

import numpy as np
import paddle
import pytest
from helpers import (
    ROOT,
    TwoTaskData,
    TwoTaskNet,
    build_model,
    kendall_loss,
    reference_sigma,
    run_python,
    train_reference,
)

import hapi_autoloss
from hapi_autoloss import AutoWeight, TopKLoss
from hapi_autoloss.callbacks import AutoWeightCallback, TopKScheduler

SCRIPT = os.path.join(ROOT, "tests", "scripts", "resume.py")


def run(mode, out):
    proc = run_python(SCRIPT, mode, str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_sigma_and_its_adam_moments_survive_a_fresh_process(tmp_path):
    run("full", tmp_path)
    assert os.path.exists(tmp_path / "ckpt" / "1.autoloss")
    assert os.path.exists(tmp_path / "ckpt" / "final.autoloss")
    run("resume", tmp_path)
    saved = np.load(tmp_path / "epoch1.npy")
    loaded = np.load(tmp_path / "loaded.npy")
    assert saved.tobytes() == loaded.tobytes()  # bit-exact
    # and not the initial σ: the σ of 2 epochs (shuffle=False) of a hand-written loop
    np.testing.assert_allclose(saved, reference_sigma(TwoTaskData(96), epochs=2, batch_size=16)[0],
                               rtol=1e-5, atol=1e-6)
    full, resumed = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    np.testing.assert_allclose(full["s"], reference_sigma(TwoTaskData(96), epochs=3, batch_size=16)[0],
                               rtol=1e-5, atol=1e-6)
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
    other = build_model(AutoWeight([lambda o, y: o.mean()], method="liebel", routing=[(0, 2)]))
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
    other.fit(TwoTaskData(32), epochs=1, batch_size=16, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
    # σ trains on from the loaded value with fresh Adam moments, as a hand-written loop does
    net = TwoTaskNet()
    net.set_state_dict(paddle.load(str(tmp_path / "m") + ".pdparams"))
    expected = kendall_loss()
    expected.s.set_value(loss.s.numpy())
    train_reference(net, expected, TwoTaskData(32), epochs=1, batch_size=16)
    assert np.abs(expected.s.numpy() - loss.s.numpy()).min() > 1e-3  # it moved
    np.testing.assert_allclose(fresh.s.numpy(), expected.s.numpy(), rtol=1e-5, atol=1e-6)


def test_only_the_callbacks_of_the_last_fit_are_saved(tmp_path):
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
    class Wrapper(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.inner = kendall_loss()

        def forward(self, *tensors):
            return self.inner(*tensors)

    wrapper = Wrapper()
    model = build_model(wrapper)
    model.fit(TwoTaskData(32), epochs=1, batch_size=16, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
    # σ trained exactly as an unwrapped one would
    np.testing.assert_allclose(wrapper.inner.s.numpy(), reference_sigma(TwoTaskData(32), epochs=1, batch_size=16)[0],
                               rtol=1e-5, atol=1e-6)
