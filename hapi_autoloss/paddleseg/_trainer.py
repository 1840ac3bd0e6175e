"""The one place that makes ``paddleseg.core.train`` train a loss's own parameters (σ) right.

Checked against PaddleSeg 2.8.0 (``paddleseg/core/train.py``, ``paddleseg/utils/utils.py::resume``)
on paddlepaddle 3.3.1. What PaddleSeg's trainer gets wrong for a loss that owns parameters, and how
:func:`attach` fixes each:

1. The optimizer is built from ``model.parameters()`` (seed 000 appended σ by hand, with the
   optimizer's weight decay). -> σ is added to the optimizer with no weight decay (coupled or
   AdamW's decoupled), no clipping, learning rate × ``lr_scale`` (``hapi_autoloss._hapi``'s rule).
2. ``train`` clears gradients with ``model.clear_gradients()`` only, and never calls
   ``optimizer.clear_grad()``: σ's gradient would add up over every iteration.
3. Under ``paddle.distributed.launch`` it wraps only ``model`` in DataParallel
   (``fleet.distributed_model``): σ's gradients would not be averaged, and σ would differ per rank.
4. Checkpoints are ``iter_N/model.pdparams`` = ``model.state_dict()`` and ``model.pdopt``, and
   ``resume`` calls ``model.set_state_dict``: σ would be lost on resume.

2 and 4: the loss becomes a sublayer of the model (``hapi_autoloss_<i>``), so ``model.clear_gradients()``
clears σ's gradient, and σ (and the method's buffers) are saved in ``model.pdparams`` and restored by
``resume``; σ's optimizer moments are in ``model.pdopt``.
3: σ is marked ``no_sync`` (DataParallel's reducer would fail on a parameter used outside the
model's forward: "has been ready before ... find_unused_parameters"), and ``optimizer.step`` first
averages σ's gradients over the ranks (fleet's HybridParallelOptimizer calls the inner optimizer's
``step``, which finds the wrapper; in pure data parallel it all-reduces nothing itself). σ starts
equal on every rank: a constant, or ``init="auto"``'s mean over the ranks.
The network's own keys and parameters are unchanged; loading such a
``model.pdparams`` into the plain model (export, inference) skips the ``hapi_autoloss_<i>.*`` keys.

5. ``train`` makes one ``backward``: a gradient-level method (pcgrad, mgda...) must take each
   task's gradient itself, in its forward. -> the AutoWeight is told the model (first, even when
   it has no parameters and nothing else is to do) and taken in as a sublayer; ``_grad`` says
   what it reads (the AMP scale of ``train``'s GradScaler) and how it resumes.
6. ``train`` has no epoch ends: a method that needs them (dwa, stch) counts them from ``train``'s
   iterations (``_epochs``), and is taken in so that its buffers are saved and resumed.
"""

from __future__ import annotations

import warnings
from typing import Any

import paddle

from .._args import positive
from .._dist import average_gradients
from .._hapi import world
from .._hapi.optimizer import check_groups, inject, optimizer_params, track
from ..topk import TopKLoss as _CoreTopK
from ..weighting._plain import mark_driven
from ..weighting.autoweight import AutoWeight as _CoreAutoWeight
from . import _grad, _losses

PREFIX = "hapi_autoloss_"


def _loss_layers(losses: Any) -> list[Any]:
    """Every loss object in PaddleSeg's ``{'types': [...], 'coef': [...]}`` (MixedLoss's too)."""
    if isinstance(losses, dict):
        if "types" not in losses:
            raise ValueError("losses has no 'types'. Fix: pass PaddleSeg's {'types': [...], 'coef': [...]}.")
        items = list(losses["types"])
    elif isinstance(losses, (list, tuple)):
        items = list(losses)
    else:
        items = [losses]
    found: list[Any] = []
    for item in items:
        found.append(item)
        if type(item).__name__ == "MixedLoss":  # its sub-losses are a plain list, not sublayers
            found.extend(getattr(item, "losses", []))
    return found


def _check(layer: Any) -> None:
    if isinstance(layer, (_CoreAutoWeight, _CoreTopK)) and not isinstance(
        layer, (_losses.AutoWeight, _losses.TopKLoss)
    ):
        name = type(layer).__name__
        raise TypeError(
            f"losses holds hapi_autoloss.{name}, whose 0-d output PaddleSeg 2.8.0's train cannot log "
            f"(loss.numpy()[0]), and which calls its sub-losses with every tensor. Fix: use "
            f"hapi_autoloss.paddleseg.{name} (type: {name} in a config)."
        )
    # A hapi_autoloss.paddleseg.AutoWeight refused an unsupported method when it was built.


def attach(model: paddle.nn.Layer, losses: Any, optimizer: Any, lr_scale: float = 1.0) -> list[paddle.nn.Layer]:
    """Make ``paddleseg.core.train(model, optimizer=optimizer, losses=losses, ...)`` train σ right.

    Call it once per optimizer, after building the optimizer from ``model.parameters()`` (by hand or
    by PaddleSeg's ``Config``/``SegBuilder``) and before ``train``; on every rank under
    ``paddle.distributed.launch``, and before ``train(resume_model=...)``; again with a new optimizer
    built later. It replaces seed 000's hand ``parameters.append(σ)``. ``train``'s first training
    forward refuses a loss with parameters that is not attached, or an optimizer attach did not set up.

    Args:
        model: the segmentation model given to ``train``.
        losses: PaddleSeg's ``{'types': [...], 'coef': [...]}`` (or a loss, or a list of them).
        optimizer: the optimizer given to ``train`` (a ``paddle.optimizer.Optimizer``).
        lr_scale: σ's learning rate as a multiple of the optimizer's (> 0).

    Returns the loss layers it took in, now sublayers of ``model``: those that own trainable
    parameters, and every AutoWeight with a gradient-level method (pcgrad, mgda...), with
    parameters or not (it is told the network first), and every one whose method needs epoch
    ends (dwa, stch) or draws from a random stream (rlw): its buffers are then saved. [] with a
    warning if there is none.

    After it: σ gets no weight decay and no clipping; ``train`` clears σ's gradient every
    iteration (``model.clear_gradients()``), averages it over ranks (DataParallel) and saves and
    resumes it with ``iter_N/model.pdparams``/``model.pdopt``. A gradient-level method
    differentiates the network, ``model`` (never the loss's own parameters), in its forward,
    with ``train``'s AMP scale, averaged over ranks; its buffers resume too (see ``_grad``).

    Example::

        optimizer = paddle.optimizer.AdamW(lr, parameters=model.parameters(), weight_decay=0.01)
        hapi_autoloss.paddleseg.attach(model, losses, optimizer)  # σ: optimizer, no decay, grads, ranks, checkpoints
        paddleseg.core.train(model, train_dataset, optimizer=optimizer, losses=losses, iters=1000)
    """
    if not isinstance(model, paddle.nn.Layer):
        raise TypeError(f"model must be a paddle.nn.Layer, got {type(model).__name__}. Fix: pass the model train gets.")
    if not isinstance(optimizer, paddle.optimizer.Optimizer):
        raise TypeError(
            f"optimizer must be a paddle.optimizer.Optimizer, got {type(optimizer).__name__}. Fix: pass the "
            "optimizer itself (train wraps it for fleet later), built from model.parameters()."
        )
    lr_scale = positive(lr_scale, "lr_scale", "lr_scale=1.0")
    layers = _loss_layers(losses)
    coef = losses.get("coef") if isinstance(losses, dict) else None
    if coef is not None and len(coef) != len(losses["types"]):  # train indexes coef[i]: an IndexError, or ignored
        raise ValueError(f"losses has {len(losses['types'])} types but {len(coef)} coef. Fix: one coef per "
                         "entry of types, e.g. 'coef': [1] * len(types).")
    for layer in layers:
        _check(layer)
    layers = [x for x in layers if isinstance(x, paddle.nn.Layer)]
    gradient = _grad.bind(model, layers)  # first: a method with no parameters (pcgrad) still needs it
    taken = [x for i, x in enumerate(layers) if all(x is not y for y in layers[:i])  # once, if listed twice
             and (any(x is g for g in gradient) or any(not p.stop_gradient for p in x.parameters())
                  or getattr(x, "seg_iter", None) is not None  # epoch state to save (dwa, stch)
                  or getattr(getattr(x, "weighting", None), "keeps_step_state", False))]  # rlw's stream
    if not taken:
        warnings.warn("No loss in losses has trainable parameters, a gradient-level method, epoch ends or a "
                      "random stream, so "
                      "attach has nothing to do. Fix: nothing, if that is intended.", stacklevel=2)
        return []
    in_opt = {id(p) for p in optimizer_params(optimizer)}
    if not any(id(p) in in_opt for p in model.parameters()):
        raise ValueError("optimizer holds none of model's parameters. Fix: build it from model.parameters() "
                         "and pass the same model and optimizer to attach and train.")
    check_groups(optimizer)
    sub = {id(x) for x in model.sublayers()}
    params: list[Any] = []
    for layer in taken:
        if id(layer) not in sub:  # (a loss the model holds already, model.criterion, is saved under that name)
            i = 0
            while hasattr(model, f"{PREFIX}{i}"):
                i += 1
            model.add_sublayer(f"{PREFIX}{i}", layer)
        params.extend(p for p in layer.parameters() if not p.stop_gradient)
    for layer in taken:
        mark_driven(layer)  # train makes its calls: no plain-loop warning (weighting/_plain.py)
    _grad.keep_buffers_in_step(taken)
    _grad.resume_buffers(model)
    if params:
        inject(optimizer, params, lr_scale)
        for p in params:
            p.no_sync = True
        _average_before_step(optimizer, params)
    return taken


def _average_before_step(optimizer: Any, params: list[Any]) -> None:
    """Make ``optimizer.step()`` and ``optimizer.minimize()`` average ``params``' gradients over
    the ranks first (once per optimizer). ``train`` calls ``step``, or with ``precision='fp16'``
    ``scaler.minimize(optimizer, ...)``, which calls ``minimize`` (averaging twice is harmless:
    the mean of equal gradients is the same gradient)."""
    if track(optimizer, "_autoloss_synced", params):
        return
    for name in ("step", "minimize"):
        original = getattr(optimizer, name)

        def averaged(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            average_gradients(optimizer._autoloss_synced, world()[1])
            return _original(*args, **kwargs)

        setattr(optimizer, name, averaged)
