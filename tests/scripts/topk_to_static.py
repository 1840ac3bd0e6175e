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

from hapi_autoloss import TopKLoss

drop = float(sys.argv[1])
rng = np.random.default_rng(9)
logits = paddle.to_tensor(rng.standard_normal((1, 4, 512, 512)).astype("float32"), stop_gradient=False)
lab = rng.integers(0, 4, (1, 1, 512, 512))  # 2**18 pixels: the radix select's size
lab[rng.random(lab.shape) < 0.1] = IGNORE
label = paddle.to_tensor(lab)
loss = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=IGNORE)
layer = TopKLoss(loss, ratio=0.1, drop=drop, per="pixel", ignore_index=IGNORE)
traced = paddle.jit.to_static(lambda a, b: layer(a, b) * 2.0)  # the * 2 stays in the graph
values, grads = [], []
for fn in (traced, traced, lambda a, b: layer(a, b) * 2.0):  # the second call reuses the trace
    out = fn(logits, label)
    out.backward()
    values.append(float(out))
    grads.append(logits.grad.numpy().copy())
    logits.clear_gradient()
want, _, k, m = reference(loss(logits, label).numpy(), lab != IGNORE, 0.1, drop)
print(json.dumps({
    "values": values,
    "want": 2 * want,
    "kept": int(k - m),
    "same_gradient": [bool(np.array_equal(g, grads[-1])) for g in grads],
    "pixels_with_gradient": int(np.count_nonzero(np.abs(grads[-1]).sum(axis=1))),
}))
