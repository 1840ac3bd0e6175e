"""The default display of a method's weights: d total / d L_i by autograd, at the losses and the
parameters of the step it describes (a user's ``Weighting`` without its own ``weight``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import paddle

if TYPE_CHECKING:
    from .base import Weighting


def _trainable(method: Weighting) -> list[paddle.Tensor]:
    return [p for p in method.parameters() if not p.stop_gradient]


def keep_step_parameters(method: Weighting) -> None:
    """At a training forward: the method's trainable parameters as it uses them (a copy each, keyed by
    the parameter; none kept for a method without any)."""
    params = _trainable(method)
    if params:
        method._seen_params["train"] = [(p, p.detach().clone()) for p in params]


def autograd_weight(method: Weighting, used: bool) -> np.ndarray:
    """d total / d L_i (float64) at the last training forward's losses and parameters (``used``: the
    update since has moved them), or at the last forward's losses and the current parameters. A
    parameter re-created or reshaped since that forward is read as it is now."""
    losses = method._seen.get("train_last" if used else "last")
    if losses is None:
        return np.ones(method.n)
    leaf = losses.detach().clone()
    leaf.stop_gradient = False
    kept = method._seen_params.get("train", []) if used else []
    live = {id(p) for p in _trainable(method)}
    swaps = [(p, then, p.detach().clone()) for p, then in kept
             if id(p) in live and list(p.shape) == list(then.shape) and p.dtype == then.dtype]
    done: list[tuple[paddle.Tensor, paddle.Tensor]] = []
    try:
        for p, then, now in swaps:  # for this read only: put back below
            p.set_value(then)
            done.append((p, now))
        with paddle.set_grad_enabled(True):
            (grad,) = paddle.grad(method.combine(leaf), [leaf])
    finally:
        for p, now in done:
            p.set_value(now)
    return grad.numpy().astype(np.float64)
