"""Which ``paddle.Model`` trains a loss: the last one that attached it. A new model takes a
trained loss over (a notebook cell run again) with a warning; a model that trains it without
having attached it, or after another took it over, is refused before its step.

Checked against paddlepaddle 3.3.1 (``paddle/hapi/model.py``: ``train_batch`` on the stack).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import paddle

from .model import called_from_hapi_train, loss_layer


def check_other_train(layer: paddle.nn.Layer, needed: bool) -> None:
    """Raise if ``layer``, which a model's optimizer trains (``attach``), trains in a hapi train
    step other than that model's (whose steps ``attach`` brackets): that model never clears
    its gradients, which would go into the other model's next update.

    Called from a loss's forward outside its own model's train steps. Costs a few stack-frame reads.
    """
    if not needed or not paddle.is_grad_enabled() or not called_from_hapi_train():
        return
    raise RuntimeError(
        f"This {type(layer).__name__} is trained by another paddle.Model (it was attached there), "
        "and this model trains it without AutoWeightCallback: this model never clears its gradients, "
        "which would go into that model's next update. Fix: pass hapi_autoloss.callbacks."
        "AutoWeightCallback() in this model.fit(callbacks=[...]) (or call hapi_autoloss.attach(model) "
        "before train_batch; its weights go on from there), or build one loss instance per model."
    )


def hand_over(layers: list[Any], model: Any) -> None:
    """Make ``model`` the one that trains ``layers`` (a loss and its parts), saying so when
    another ``paddle.Model`` trained them before: their learned state goes on from there, as a
    network's weights do when a new ``paddle.Model`` wraps it (a notebook cell run again)."""
    before = [x for x in layers if getattr(x, "_autoloss_owner", None) is not None
              and x._autoloss_owner() is not model and (x.parameters() or x.buffers())]
    if before:
        name = type(before[0]).__name__  # the outermost: layers lists a loss before its parts
        warnings.warn(
            f"This {name} was trained by another paddle.Model before; this model trains it now, and "
            "its learned weights (σ, the method's state) go on from where that training left them. "
            f"Fix: build a new {name} for a fresh start, or nothing if going on is intended.", stacklevel=4)
    for x in layers:
        x._autoloss_owner = weakref.ref(model)  # who trains it, without keeping that model alive


def check_owner(layers: list[Any], model: Any) -> None:
    """Raise, before ``model``'s train step runs, if another model took one of ``layers`` over
    since ``model`` attached it: that model's method is bound to its own network, and σ would
    be trained by two optimizers in turn without a word."""
    for x in layers:
        ref = getattr(x, "_autoloss_owner", None)
        if ref is not None and ref() is not model and _in_loss(x, model):  # not if prepare dropped it
            raise RuntimeError(
                f"This {type(x).__name__} was taken over by another paddle.Model (the last one that "
                "attached it), after this model attached it. Fix: pass hapi_autoloss.callbacks."
                "AutoWeightCallback() to this model's fit (or call hapi_autoloss.attach(model) before "
                "train_batch) to take it back, or build one loss instance per model."
            )


def _in_loss(layer: Any, model: Any) -> bool:
    loss = loss_layer(model)
    return loss is not None and any(x is layer for x in (loss, *loss.sublayers()))
