"""The non-finite check before each update: read on the host, agreed on by every rank.

Checked against paddlepaddle 3.3.1. No dygraph optimizer there skips an update on the
device: ``Optimizer._apply_optimize`` reads AMP's ``found_inf`` on the host (``if
found_inf:``) and Adam/AdamW hand it to their kernels in static (PIR) mode only, so the
guarantee that a non-finite step updates nothing takes a read before each update.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import paddle

# Dtypes whose .numpy() holds the values themselves (bfloat16 comes back as raw uint16 bits).
_HOST_FLOATS = (paddle.float16, paddle.float32, paddle.float64)


def all_finite(t: paddle.Tensor) -> bool:
    """Whether every value of ``t`` is finite (one read of ``t``)."""
    if t.dtype not in _HOST_FLOATS:
        t = t.astype("float32")
    values = t.numpy()
    if values.size <= 64:  # plain floats: no NumPy ufunc, the dearest call right after a step
        return all(map(math.isfinite, values.reshape(-1).tolist()))
    return bool(np.isfinite(values).all())


def host_rows(values: list[paddle.Tensor]) -> np.ndarray:
    """Rows of task losses as float64 [rows, k], in one read: what the check before an update reads
    of the batches since the last one (accumulated ones, and a loss-level method's own batch for the
    sign of its losses when it needs them >= 0). One float32 row is read as it is (no device op)."""
    one = values[0] if len(values) == 1 and values[0].dtype == paddle.float32 else None
    rows = one if one is not None else paddle.stack(values).astype("float32")  # bfloat16: raw bits otherwise
    return rows.numpy().astype(np.float64).reshape(len(values), -1)


def finite(loss: paddle.Tensor, params: list[Any]) -> bool:
    """Whether the loss and the loss parameters' gradients are finite: a read of a few
    floats each and no device op (on a CPU one op costs more than such a read)."""
    if not all_finite(loss):
        return False
    for p in params:
        grad = p.grad
        if grad is not None and not all_finite(grad):
            return False
    return True


def agree(here: bool, nranks: int) -> bool:
    """True when every rank's step is finite (one tiny all-reduce under the launcher)."""
    if nranks <= 1:
        return here
    flag = paddle.to_tensor([1 if here else 0], dtype="int32")
    paddle.distributed.all_reduce(flag, op=paddle.distributed.ReduceOp.MIN)
    return bool(flag.numpy()[0])
