"""The loss that carries a gradient-level method's combination through hapi's one backward.

    total = Σ L + (S − S.detach()),   S = Σ_p ⟨p, g_p⟩

has the value Σ L and the gradient g_p for each parameter p, exactly: hapi's backward then
only writes the combined gradients, through DataParallel and the AMP scaler like any other.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import paddle

from .._hapi import world


def flat(grads: list[Any], sizes: list[int]) -> paddle.Tensor:
    """One float32 row: each gradient flattened (zeros where the task does not reach it)."""
    parts = [paddle.zeros([n], "float32") if g is None else g.astype("float32").reshape([-1])
             for g, n in zip(grads, sizes)]
    return paddle.concat(parts) if parts else paddle.zeros([0], "float32")


def unwrapped(name: str) -> str:
    """A parameter's structured name as the bare network gives it: a ``paddle.DataParallel``
    wrapper adds ``_layers.`` (a 2-GPU run resumed on one GPU binds the bare network)."""
    while name.startswith("_layers."):
        name = name[len("_layers."):]
    return name


def name_key(name: str) -> int:
    """A stable 63-bit key of a parameter's structured name (the same in every process, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1


def moved(old: list[tuple[int, int]], new: list[tuple[int, int]]) -> np.ndarray:
    """For each column of the layout ``new`` ((key, size) per shared parameter), its column in
    ``old``, or −1 where no parameter of that key and size was shared then."""
    starts, at = {}, 0
    for key, size in old:
        starts[key, size], at = at, at + size
    return np.concatenate([np.arange(starts[key, size], starts[key, size] + size) if (key, size) in starts
                           else np.full(size, -1) for key, size in new] or [np.zeros(0, dtype=np.int64)]
                          ).astype(np.int64)


def last_layer(network: paddle.nn.Layer, shared: list[Any]) -> slice:
    """Columns of the last shared Layer's parameters (the trailing run of ``shared``, in parameter
    order, with the same owner), for methods that look at one layer (gradnorm)."""
    owner = {id(p): name.rsplit(".", 1)[0] if "." in name else "" for name, p in network.named_parameters()}
    stop = sum(math.prod(p.shape) for p in shared)
    start, last = stop, owner.get(id(shared[-1]), "")
    for p in reversed(shared):
        if owner.get(id(p), "") != last:
            break
        start -= math.prod(p.shape)
    return slice(start, stop)


def finite_flag(grads: list[Any]) -> paddle.Tensor:
    """A 0-d bool tensor: every gradient given is finite (no host read)."""
    flags = [paddle.isfinite(g).all() for g in grads if g is not None]
    return paddle.stack(flags).all() if flags else paddle.to_tensor(True)


def average(losses: paddle.Tensor, others_ok: paddle.Tensor, grads: paddle.Tensor, rep: bool,
            negative: paddle.Tensor | None = None
            ) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor | None, tuple[bool, bool, bool]]:
    """(mean losses, gradients, Gram or None, (losses finite, everything finite and no loss refused as
    negative, ``negative`` on any rank)) over the ranks of the launcher, in one all-reduce and one host
    read of four flags. ``negative``: a 0-d bool, this rank refuses a negative loss (None: never).

    Parameter mode averages G itself. Representation mode cannot (each rank holds other
    samples' representations): it sums the Gram matrices instead, which for losses that
    are means over the batch gives the whole batch's Gram matrix: Σ_r G_r·G_rᵀ / R².
    """
    _, nranks = world()
    k = int(losses.shape[0])
    # NaN where this rank's task-specific gradients are not finite: the sum carries it to every rank.
    flag = paddle.where(others_ok, paddle.zeros([1], "float32"), paddle.full([1], float("nan"), "float32"))
    # 1 where this rank refuses a negative loss: the sum tells every rank (each then refuses the step).
    # Left out when nothing is checked (the same on every rank: the buffer's layout still agrees).
    parts = [flag] if negative is None else [flag, negative.astype("float32").reshape([1])]
    payload = paddle.matmul(grads, grads, transpose_y=True) if rep else grads
    if nranks > 1:
        buf = paddle.concat([losses, *parts, payload.reshape([-1])])
        paddle.distributed.all_reduce(buf)
        k1 = k + len(parts)
        losses, parts = buf[:k] / nranks, [buf[k + i : k + i + 1] for i in range(len(parts))]
        payload = buf[k1:].reshape(payload.shape) / (nranks * nranks if rep else nranks)
    checks = [paddle.isfinite(losses).all(), paddle.isfinite(parts[0]).all(), paddle.isfinite(payload).all()]
    flags = paddle.stack([*checks, (parts[1] > 0).all()] if negative is not None else checks).numpy()
    any_negative = negative is not None and bool(flags[3])
    finite = (bool(flags[0]), bool(flags[:3].all()) and not any_negative, any_negative)
    return (losses, grads, payload, finite) if rep else (losses, payload, None, finite)


class _InfGrad(paddle.autograd.PyLayer):
    """Value unchanged, an inf gradient for every parameter: what an AMP overflow must look
    like to hapi's GradScaler (it then skips the update and lowers its scale)."""

    @staticmethod
    def forward(ctx: Any, value: paddle.Tensor, *params: paddle.Tensor) -> paddle.Tensor:
        ctx.specs = [(p.shape, p.dtype) for p in params]
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: paddle.Tensor) -> tuple[Any, ...]:
        return (None, *(paddle.full(shape, float("inf"), dtype) for shape, dtype in ctx.specs))


def skipped(value: paddle.Tensor, params: list[Any], amp_overflow: bool) -> paddle.Tensor:
    """The loss of a step the method must not see. An AMP overflow of the gradients alone: the
    value Σ L and inf gradients, for the GradScaler. Else a NaN value (zero gradients), for
    AutoWeightCallback's ``on_nonfinite`` policy."""
    if amp_overflow:
        return _InfGrad.apply(value, *params)
    zero = paddle.add_n([(p * 0.0).sum() for p in params])
    return value + zero + float("nan")


def term(p: paddle.Tensor, g: paddle.Tensor) -> paddle.Tensor:
    """⟨p, g⟩ with g kept in float32: a float16 parameter gets the gradient after hapi's
    loss scale, not a float16 copy of the unscaled one (which would flush to zero)."""
    if p.dtype != paddle.float32:
        p = p.astype("float32")
    return (p * g.astype("float32").reshape(p.shape)).sum()


def total(value: paddle.Tensor, terms: list[paddle.Tensor], extra: paddle.Tensor | None) -> paddle.Tensor:
    """Σ L with the gradient of Σ terms (and of the method's own loss ``extra``)."""
    surrogate = paddle.add_n(terms)
    out = value + (surrogate - surrogate.detach())
    return out if extra is None else out + (extra - extra.detach())
