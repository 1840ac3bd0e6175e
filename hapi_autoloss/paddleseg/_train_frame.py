"""The one place that reads ``paddleseg.core.train``'s locals and fleet's optimizer wrappers.

Checked against PaddleSeg 2.8.0 (``paddleseg/core/train.py``) on paddlepaddle 3.3.1. ``train``
gives a loss no handle on its run: its ``model``, ``optimizer`` (fleet-wrapped under several
ranks), ``scaler`` (AMP), ``use_ema``, ``iter``, ``start_iter``, ``iters_per_epoch`` and
``batch_sampler`` are locals of its frame, read from a loss's forward by walking the stack.

Example::

    local = train_locals()   # None outside train
    if local is not None:
        scaler = local.get("scaler")
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import paddle

TRAIN = ("train", "paddleseg.core.train")  # (function name, module) of PaddleSeg's trainer


def train_locals() -> dict[str, Any] | None:
    """The locals of the running ``paddleseg.core.train`` (None outside it)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and (frame.f_code.co_name, frame.f_globals.get("__name__")) != TRAIN:
        frame = frame.f_back
    return None if frame is None else frame.f_locals


def inner_optimizer(opt: Any) -> paddle.optimizer.Optimizer | None:
    """The paddle optimizer in fleet's wrappers (``train`` rebinds ``optimizer`` under several ranks)."""
    for _ in range(4):
        if isinstance(opt, paddle.optimizer.Optimizer):
            return opt
        opt = getattr(opt, "user_defined_optimizer", None) or getattr(opt, "_inner_opt", None)
    return opt if isinstance(opt, paddle.optimizer.Optimizer) else None
