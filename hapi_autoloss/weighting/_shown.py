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
    """At a training forward: the method's trainable parameters as it uses them (a copy each; none
    kept for a method without any)."""
    params = _trainable(method)
    if params:
        method._seen_params["train"] = [p.detach().clone() for p in params]


def autograd_weight(method: Weighting, used: bool) -> np.ndarray:
    """d total / d L_i (float64) at the last training forward's losses and parameters (``used``: the
    update since has moved them), or at the last forward's losses and the current parameters."""
    losses = method._seen.get("train_last" if used else "last")
    if losses is None:
        return np.ones(method.n)
    leaf = losses.detach().clone()
    leaf.stop_gradient = False
    params, then = _trainable(method), method._seen_params.get("train") if used else None
    now = [p.detach().clone() for p in params] if then else []
    for p, value in zip(params, then or []):  # for this read only: put back below
        p.set_value(value)
    try:
        with paddle.set_grad_enabled(True):
            (grad,) = paddle.grad(method.combine(leaf), [leaf])
    finally:
        for p, value in zip(params, now):
            p.set_value(value)
    return grad.numpy().astype(np.float64)
