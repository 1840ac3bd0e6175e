"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`: trains the seed
toy with AutoWeight and writes each rank's σ and network weights to OUT_DIR/rank<k>.npz."""

import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
from uncertainty_regression import TwoLines, build  # noqa: E402

from hapi_autoloss.callbacks import AutoWeightCallback  # noqa: E402

out_dir, use_callback = sys.argv[1], sys.argv[2] == "1"
paddle.seed(7)
model, loss = build(lr=0.05)
if not use_callback:  # the naive way: σ in the optimizer by hand, nothing else
    model._optimizer._parameter_list.extend(loss.parameters())
model.fit(
    TwoLines(512, seed=3),
    epochs=3,
    batch_size=32,
    shuffle=True,
    verbose=0,
    callbacks=[AutoWeightCallback()] if use_callback else [],
)
rank = paddle.distributed.get_rank()
np.savez(
    os.path.join(out_dir, f"rank{rank}.npz"),
    s=loss.s.numpy(),
    w=model.network.heads[0][0].weight.numpy(),
)
