"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`.

    dist_export.py OUT_DIR

Both ranks train with TensorBoardExport and VisualDLExport pointed at the same
OUT_DIR/logs and a TqdmProgressBar writing to OUT_DIR/bar<rank>.txt; each rank
writes OUT_DIR/rank<k>.json: the files its exporters opened (None when they
wrote nothing), its global step and its σ.
"""

import json
import os
import sys

import paddle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import TwoTaskData, build_model, kendall_loss

from hapi_autoloss.callbacks import AutoWeightCallback, TensorBoardExport, TqdmProgressBar, VisualDLExport

out_dir = sys.argv[1]
rank = paddle.distributed.get_rank()
logs = os.path.join(out_dir, "logs")
tb, vdl = TensorBoardExport(logs), VisualDLExport(logs)
opened = []


class RecordFiles(paddle.callbacks.Callback):
    def on_train_begin(self, logs=None):
        opened[:] = [getattr(tb.file, "path", None), getattr(vdl.file, "path", None)]


loss = kendall_loss()
model = build_model(loss)
with open(os.path.join(out_dir, f"bar{rank}.txt"), "w") as bar_file:
    model.fit(TwoTaskData(256), epochs=2, batch_size=16, verbose=1,
              callbacks=[AutoWeightCallback(), tb, vdl, RecordFiles(), TqdmProgressBar(file=bar_file)])
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
    json.dump({"files": opened, "step": tb.global_step, "sigma": loss.s.numpy().tolist(),
               "used": list(loss.used()[0].values())}, f)
