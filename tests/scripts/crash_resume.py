"""Driver for test_crash_resume.py; every mode runs in its own process.

    crash_resume.py full   OUT   # 5 epochs uninterrupted
    crash_resume.py crash  OUT   # the same run, SIGKILLed in the middle of epoch 3
    crash_resume.py resume OUT   # the README's resume steps from the last checkpoint

Each run trains AutoWeight (a TopKLoss inside) with TopKScheduler, TensorBoardExport
and hapi's ModelCheckpoint(save_freq=1), and writes its final σ, k and network
weights to OUT/<mode>.npz.
"""

import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import KillAt, TwoTaskData, build_model

import hapi_autoloss
from hapi_autoloss import AutoWeight, TopKLoss
from hapi_autoloss.callbacks import AutoWeightCallback, TensorBoardExport, TopKScheduler

EPOCHS, BATCH, KILL_AT = 5, 16, (2, 3)  # kill at epoch index 2 (the third), batch 3
mode, out = sys.argv[1], sys.argv[2]
run_dir = os.path.join(out, "full" if mode == "full" else "crashed")
log_dir = os.path.join(run_dir, "logs")



def build():
    loss = AutoWeight(
        {"y1": TopKLoss(paddle.nn.MSELoss(reduction="none"), ratio=1.0), "y2": paddle.nn.MSELoss()},
        method="kendall",
        task_types=["regression", "regression"],
    )
    return build_model(loss), loss


def callbacks():
    return [AutoWeightCallback(), TopKScheduler(start=1.0, end=0.1, by="step"), TensorBoardExport(log_dir)]


model, loss = build()
data = TwoTaskData(96)
fit = dict(batch_size=BATCH, shuffle=False, verbose=0)
if mode in ("full", "crash"):
    extra = [KillAt(*KILL_AT)] if mode == "crash" else []
    model.fit(data, epochs=EPOCHS, save_dir=os.path.join(run_dir, "ckpt"), save_freq=1,
              callbacks=callbacks() + extra, **fit)
else:
    # The README's resume steps.
    path = hapi_autoloss.latest_checkpoint(os.path.join(run_dir, "ckpt"))
    model.load(path)
    hapi_autoloss.load_state(model, path)
    done = hapi_autoloss.checkpoint_info(path)["epoch"]  # epochs done, stored in the checkpoint
    model.fit(data, epochs=EPOCHS - done, save_dir=os.path.join(run_dir, f"ckpt-resumed-{done}"),
              save_freq=1, callbacks=callbacks(), **fit)
topk = loss.losses[0]
np.savez(os.path.join(out, f"{mode}.npz"), s=loss.s.numpy(), k=np.float64(topk.ratio),
         w=model.network.trunk.weight.numpy(), h=model.network.h1.weight.numpy())
