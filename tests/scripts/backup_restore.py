"""Driver for test_backup.py: the same training script, run as a user would.

    backup_restore.py OUT run  [kill] [OPTIONS] METHOD   # 5 epochs with BackupAndRestore(OUT/run/backup)
    backup_restore.py OUT full        [OPTIONS] METHOD   # the same, uninterrupted, in its own folder

METHOD is kendall, rlw, dwa, or a gradient-level one (pcgrad, db_mtl).
OPTIONS: ``stage`` (a 3-epoch fit without backup first),
``iters`` (fit(num_iters=20) instead of 5 epochs), ``eval`` (eval_data every epoch).
With ``kill`` the process SIGKILLs itself in the middle of epoch 3. shuffle=True, a
dropout layer, AutoWeight around a TopKLoss, TopKScheduler, TensorBoardExport and an lr
schedule: everything a resume can get wrong. Final σ, k and network weights
go to OUT/<mode>.npz.
"""

import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import X_SPEC, Y_SPECS, DropNet, KillAt, TwoTaskData

from hapi_autoloss import AutoWeight, TopKLoss
from hapi_autoloss.callbacks import AutoWeightCallback, BackupAndRestore, TensorBoardExport, TopKScheduler

EPOCHS, BATCH, KILL_AT = 5, 16, (2, 3)
out, mode = sys.argv[1], sys.argv[2]
kill = "kill" in sys.argv[3:]
options = set(sys.argv[3:-1])
method = sys.argv[-1]
run_dir = os.path.join(out, mode)



paddle.seed(0)
net = DropNet()
kwargs = {"kendall": {"task_types": ["regression", "regression"]}, "rlw": {"seed": 3},
          "pcgrad": {"seed": 3}}.get(method, {})
loss = AutoWeight({"y1": TopKLoss(paddle.nn.MSELoss(reduction="none"), ratio=1.0), "y2": paddle.nn.MSELoss()},
                  method=method, **kwargs)
model = paddle.Model(net, inputs=X_SPEC, labels=Y_SPECS)
lr = paddle.optimizer.lr.StepDecay(0.05, step_size=7, gamma=0.7)
model.prepare(paddle.optimizer.Adam(lr, parameters=model.parameters()), loss)
callbacks = [AutoWeightCallback(), TopKScheduler(start=1.0, end=0.2, by="step"),
             TensorBoardExport(os.path.join(run_dir, "logs"))]
if mode == "run":
    callbacks.insert(1, BackupAndRestore(os.path.join(run_dir, "backup")))
if kill:
    callbacks.append(KillAt(*KILL_AT))
fit = dict(batch_size=BATCH, shuffle=True, verbose=0, save_dir=os.path.join(run_dir, "ckpt"))
if "stage" in options:  # training before the backed-up fit: its epochs must not count as done
    model.fit(TwoTaskData(96, seed=7), epochs=3, callbacks=[AutoWeightCallback()], **fit)
length = {"num_iters": 20} if "iters" in options else {"epochs": EPOCHS}
eval_data = TwoTaskData(32, seed=1) if "eval" in options else None
model.fit(TwoTaskData(96), eval_data, callbacks=callbacks, **length, **fit)
np.savez(os.path.join(out, f"{mode}.npz"), s=loss.s.numpy() if loss.s is not None else np.zeros(1),
         k=np.float64(loss.losses[0].ratio), w=net.trunk.weight.numpy(), h=net.h1.weight.numpy(),
         lr=np.float64(model._optimizer.get_lr()), rlw=np.asarray(list(loss.weights().values())))
