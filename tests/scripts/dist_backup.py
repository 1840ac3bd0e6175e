"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`.

    dist_backup.py OUT_DIR full|crash|resume

Trains 4 epochs with dropout whose random stream differs per rank (paddle.seed(10 + rank)),
shuffle=True and BackupAndRestore(OUT_DIR/<run>/backup). "crash" ends both processes with
os._exit in the middle of epoch 3 (no clean-up, as a kill would); "resume" is the same
script started again. Each rank writes its final σ and weights to OUT_DIR/<mode>-rank<k>.npz.
"""

import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import X_SPEC, Y_SPECS, DropNet, TwoTaskData, kendall_loss

from hapi_autoloss.callbacks import AutoWeightCallback, BackupAndRestore

out_dir, mode = sys.argv[1], sys.argv[2]
run = "full" if mode == "full" else "run"


class ExitMidEpoch(paddle.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, step, logs=None):
        if (self.epoch, step) == (2, 3):
            os._exit(3)


paddle.seed(0)
net, loss = DropNet(), kendall_loss()
model = paddle.Model(net, inputs=X_SPEC, labels=Y_SPECS)
model.prepare(paddle.optimizer.Adam(0.05, parameters=model.parameters()), loss)
paddle.seed(10 + paddle.distributed.get_rank())  # dropout differs per rank
callbacks = [AutoWeightCallback(), BackupAndRestore(os.path.join(out_dir, run, "backup"))]
if mode == "crash":
    callbacks.append(ExitMidEpoch())
model.fit(TwoTaskData(256), epochs=4, batch_size=16, shuffle=True, verbose=0, callbacks=callbacks)
rank = paddle.distributed.get_rank()
np.savez(os.path.join(out_dir, f"{mode}-rank{rank}.npz"), s=loss.s.numpy(), w=net.trunk.weight.numpy())
