"""Gradient-level methods (pcgrad, mgda, cagrad, imtl, ...) inside ``paddleseg.core.train``.

Checked against PaddleSeg 2.8.0 (``paddleseg/core/train.py``, ``paddleseg/utils/utils.py::resume``)
on paddlepaddle 3.3.1. Such an AutoWeight computes each task's gradient of the network's parameters
in its forward (``weighting/_pertask.py``) and returns a loss whose gradient is their combination,
so ``train``'s one ``backward`` writes it. What :func:`bind` tells it, and why it is right there:

1. The network: the model given to ``train``. The loss is a sublayer of it (``hapi_autoloss_<i>``),
   but its own parameters (imtl's, gradnorm's) are never taken for the network's (``_pertask``),
   and ``model.parameters()``, PaddleSeg's optimizer's, are the network's plus the loss's, as
   for σ.
2. The AMP loss scale: with ``precision="fp16"``, ``train`` keeps its ``GradScaler`` in a local
   (``scaler``), read here from ``train``'s frame at each forward. Each task's loss is scaled by
   it before its ``paddle.grad`` and the gradient unscaled in float32 (as in hapi's path), the
   combination then goes through ``scaler.scale(loss).backward()`` and ``scaler.minimize``
   like any gradient; an overflow in a task's gradient gives inf gradients, so the scaler skips
   that update and lowers its scale. Outside ``train`` (or with a scaler that does not scale:
   a CPU, bfloat16) the per-task gradients are not scaled, as in a plain loop.
3. Ranks: the forward averages the per-task gradients (and losses) over the ranks before the
   rule, so every rank writes the same combined gradient, which DataParallel's average leaves
   as it is: two ranks on half batches update as one process on the whole batch.
4. Resume: PaddleSeg's ``resume`` calls ``model.set_state_dict``, which sets tensors only; the
   model's is wrapped to size a method's buffers that grow at its first step (db_mtl's) and to
   refresh the host copies of them (nash_mtl's α) after loading.

pcgrad's random stream is a buffer (``weighting.stream``), saved in ``model.pdparams`` and
resumed with it (a resumed run draws the task orders of the uninterrupted one). What stays out
(host state of no tensor): the α shown by ``weights()`` before the first step.
"""

from __future__ import annotations

import types
from typing import Any

import paddle

from .._hapi.model import bind_network, scaler_scale
from ..weighting._buffers import fit_empty_buffers
from . import _attached, _train_frame


def train_scaler() -> Any:
    """The ``scaler`` local of the running ``paddleseg.core.train`` (None outside it or without AMP)."""
    local = _train_frame.train_locals()
    return None if local is None else local.get("scaler")


def amp_scale() -> paddle.Tensor | None:
    return scaler_scale(train_scaler())


def check_ema(loss: paddle.nn.Layer) -> None:
    """Before the first training step: refuse a loss with a buffer its method sizes at its first
    step (db_mtl's) under ``train(use_ema=True)``, whose EMA copy, made before that step, keeps
    the empty buffer: PaddleSeg's ``update_ema_model`` then fails ("Broadcast dimension mismatch")."""
    if getattr(loss, "_autoloss_ema_checked", False) or not paddle.is_grad_enabled():
        return
    local = _train_frame.train_locals()
    # the floating ones: PaddleSeg's EMA update blends only those
    empty = [name for name, b in loss.named_buffers()
             if b is not None and int(b.size) == 0 and paddle.is_floating_point(b)]
    if local is not None and local.get("use_ema") and empty:
        raise ValueError(
            f"{type(loss).__name__}(method={getattr(loss, 'method', '?')!r}) sizes {empty[0]} at its first "
            "step, but train(use_ema=True) copied the model for its EMA before that step, so the EMA's "
            "update would fail. Fix: train with use_ema=False, or use another method."
        )
    loss._autoloss_ema_checked = True  # passed: a refused train(use_ema=True) is refused again


def bind(model: paddle.nn.Layer, layers: list[Any]) -> list[Any]:
    """Tell the gradient-level AutoWeights in ``layers`` that ``model`` is their network and
    where the AMP scale is; the layers that hold one."""
    return [layer for layer in layers if bind_network(layer, model, scale=amp_scale)]


def keep_buffers_in_step(layers: list[Any]) -> None:
    """Never broadcast the loss's buffers at DataParallel's start (a buffer a method sizes at its
    first step is empty then); they are equal on every rank anyway, made from averaged values."""
    for layer in layers:
        for buffer in layer.buffers():
            buffer.no_sync = True


def resume_buffers(model: paddle.nn.Layer) -> None:
    """Make ``model.set_state_dict`` (PaddleSeg's ``resume``) load its losses' buffers as
    ``AutoWeight.set_state_dict`` does: sized first (by their full names), the methods' host
    copies refreshed after. A method bound to the model, not a closure: ``copy.deepcopy(model)``
    (PaddleSeg's EMA model) rebinds it to the copy (a closure kept loading the EMA's weights into
    the trained model)."""
    model.set_state_dict = types.MethodType(_set_state_dict, model)  # type: ignore[method-assign]


def _set_state_dict(self: paddle.nn.Layer, state_dict: dict[str, Any], use_structured_name: bool = True) -> Any:
    if use_structured_name:
        state_dict = _attached.check_identity(self, state_dict)  # another loss's checkpoint: refused first
        fit_empty_buffers(self, state_dict)
    out = type(self).set_state_dict(self, state_dict, use_structured_name)
    for layer in self.sublayers():
        loaded = getattr(layer, "state_loaded", None)  # a weighting method's host copies
        if callable(loaded):
            loaded()
    return out
