"""Driver for test_topk_to_static.py, in a fresh process: SOT caches what it decided per
code object, so an earlier trace in the same process can hide a failure.

python topk_to_static.py DROP  ->  prints JSON: the values of two traced calls and one eager
call, the float64 reference, and whether each traced gradient equals the eager one exactly.
"""

import json
import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from test_select import IGNORE, reference
from test_topk_to_static import traced_and_eager

from hapi_autoloss import TopKLoss

drop = float(sys.argv[1])
rng = np.random.default_rng(9)
logits = paddle.to_tensor(rng.standard_normal((1, 4, 512, 512)).astype("float32"), stop_gradient=False)
lab = rng.integers(0, 4, (1, 1, 512, 512))  # 2**18 pixels: the radix select's size
lab[rng.random(lab.shape) < 0.1] = IGNORE
label = paddle.to_tensor(lab)
loss = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=IGNORE)
layer = TopKLoss(loss, ratio=0.1, drop=drop, per="pixel", ignore_index=IGNORE)
results = traced_and_eager(layer, logits, label)  # two traced calls, then the eager one
values, grads = [v for v, _ in results], [g for _, g in results]
want, _, k, m = reference(loss(logits, label).numpy(), lab != IGNORE, 0.1, drop)
print(json.dumps({
    "values": values,
    "want": 2 * want,
    "kept": int(k - m),
    "same_gradient": [bool(np.array_equal(g, grads[-1])) for g in grads[:2]],  # traced vs eager
    "pixels_with_gradient": int(np.count_nonzero(np.abs(grads[-1]).sum(axis=1))),
}))
