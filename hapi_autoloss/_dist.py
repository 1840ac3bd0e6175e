"""Averaging the loss's gradients over ranks, for ``fit`` (``_hapi``) and plain loops (``loop``)."""

from __future__ import annotations

from typing import Any

import paddle


def average_gradients(params: list[Any], nranks: int) -> None:
    """Replace each parameter's gradient by its mean over ``nranks`` ranks.

    Every rank reduces every parameter in the same order (a zero where it has no
    gradient), so no rank waits. A rank without a gradient adopts the mean only if
    another rank had one, so every rank ends with the same gradient or none. A no-op
    with one rank.
    """
    if nranks <= 1 or not params:
        return
    # How many ranks hold each gradient (one tiny all-reduce).
    held = paddle.to_tensor([0 if p.grad is None else 1 for p in params], dtype="int32")
    paddle.distributed.all_reduce(held)
    for i, p in enumerate(params):
        grad = p.grad
        total = paddle.zeros_like(p) if grad is None else grad.clone()
        paddle.distributed.all_reduce(total)
        if grad is not None:
            grad.set_value(total / nranks)
        elif int(held[i]) > 0:
            p.grad = total / nranks
