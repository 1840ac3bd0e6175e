"""Train/resume driver for test_resume.py; each mode runs in a fresh process.

full OUT    : 3 epochs with hapi's ModelCheckpoint(save_freq=1) into OUT/ckpt,
              σ after each epoch into OUT/epoch<k>.npy, final state into OUT/full.npz
resume OUT  : build the same model (plus a throw-away AutoWeight first, so σ's
              Paddle name differs from the saving run), follow the README's resume
              steps from OUT/ckpt/1, write σ right after loading into OUT/loaded.npy,
              train the last epoch, final state into OUT/resumed.npz
"""

import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import TwoTaskData, build_model, kendall_loss

import hapi_autoloss
from hapi_autoloss.callbacks import AutoWeightCallback

mode, out = sys.argv[1], sys.argv[2]
data = TwoTaskData(96)


class SaveSigma(paddle.callbacks.Callback):
    def __init__(self, loss):
        self.loss = loss

    def on_epoch_end(self, epoch, logs=None):
        np.save(os.path.join(out, f"epoch{epoch}.npy"), self.loss.s.numpy())


def state(model, loss):
    return dict(s=loss.s.numpy(), w=model.network.trunk.weight.numpy(), h=model.network.h2.bias.numpy())


if mode == "full":
    loss = kendall_loss()
    model = build_model(loss)
    model.fit(data, epochs=3, batch_size=16, shuffle=False, verbose=0,
              save_dir=os.path.join(out, "ckpt"), save_freq=1,
              callbacks=[AutoWeightCallback(), SaveSigma(loss)])
    np.savez(os.path.join(out, "full.npz"), **state(model, loss))
else:
    hapi_autoloss.AutoWeight([paddle.nn.MSELoss()], method="kendall", task_types=["regression"])
    loss = kendall_loss()
    assert loss.s.name != "auto_weight_0.w_0", loss.s.name
    model = build_model(loss)
    path = os.path.join(out, "ckpt", "1")
    model.load(path)
    hapi_autoloss.load_state(model, path)
    np.save(os.path.join(out, "loaded.npy"), loss.s.numpy())
    model.fit(data, epochs=1, batch_size=16, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
    np.savez(os.path.join(out, "resumed.npz"), **state(model, loss))
