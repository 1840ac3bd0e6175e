"""What ``paddleseg.core.train`` refuses for a loss that owns parameters (σ) and was not attached
as it trains, and the identity a resumed checkpoint must match.

Checked against PaddleSeg 2.8.0 (``paddleseg/core/train.py``, ``utils/utils.py::resume``) on
paddlepaddle 3.3.1.

1. At a ``train`` call's first training forward, from ``train``'s frame (its ``model`` and
   ``optimizer`` locals): refused if the loss is not a sublayer of the model (σ would stay at its
   initial value or be decayed, its gradient would add up, ``model.pdparams`` would not save it),
   or if σ is not in that optimizer, or that optimizer is not one ``attach`` set up (a second
   optimizer built later decays σ, does not average it over the ranks). ``train`` calls
   ``model.train()`` first, which sets ``training`` on every sublayer, an attached loss included:
   the loss's setter marks it unchecked, so the stack is walked once per ``train`` call (and
   once after each evaluation), never per step. A loss with σ outside ``train`` (a plain loop with
   σ in its own optimizer) is never refused, and walks the stack at each training forward (a few
   µs): a loss used there first and then given to ``train`` unattached is refused too.
2. ``model.pdparams`` keeps tensors only: the loss's method and task names are kept as a hash in
   an int64 host buffer (``seg_identity``), compared before ``resume`` loads anything. A
   checkpoint without it (older) loads as before.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import paddle

from .._hapi.optimizer import optimizer_params
from . import _train_frame

KEY = "seg_identity"


def identity(method: str, tasks: list[str]) -> int:
    """A stable 63-bit hash of the method and the task names in their order."""
    text = json.dumps({"method": method, "tasks": list(tasks)}, sort_keys=True)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def track(loss: Any) -> None:
    """Give ``loss`` its identity buffer, on the host (PaddleSeg's EMA reads the state every step)."""
    value = identity(loss.method, loss.task_names)
    loss.register_buffer(KEY, paddle.to_tensor(value, dtype="int64", place=paddle.CPUPlace()))


def _name(loss: Any) -> str:
    return f"{type(loss).__name__}(method={loss.method!r})"


def check(loss: Any) -> None:
    """At a training forward: refuse, before any update, a loss with trainable parameters that
    ``train`` would not train right (once per ``train`` call; see the module)."""
    if loss.__dict__.get("_seg_checked") or not paddle.is_grad_enabled():
        return
    params = [p for p in loss.parameters() if not p.stop_gradient]
    local = _train_frame.train_locals() if params else None
    if local is not None:
        _refuse(loss, params, local)
    if local is not None or not params:  # passed (a refused train is refused again); outside train
        loss.__dict__["_seg_checked"] = True  # σ is checked again: an unattached loss never sees model.train()


def _refuse(loss: Any, params: list[Any], local: dict[str, Any]) -> None:
    model = local.get("model")
    if model is None or all(sub is not loss for sub in model.sublayers()):
        raise RuntimeError(
            f"{_name(loss)} has trainable parameters (σ), but it is not attached to train's model: train "
            "would not update σ right (no update, or decayed), would never clear its gradient, and "
            "model.pdparams would not save it (resume_model starts σ over). "
            "Fix: call hapi_autoloss.paddleseg.attach(model, losses, optimizer) before train."
        )
    opt = _train_frame.inner_optimizer(local.get("optimizer"))
    if opt is None:
        return  # a wrapper not known here: nothing to tell
    held = {id(p) for p in optimizer_params(opt)}
    synced = {id(p) for p in getattr(opt, "_autoloss_synced", None) or ()}
    if all(id(p) in held and id(p) in synced for p in params):
        return
    why = ("is not in the optimizer given to train, so σ would never move" if any(id(p) not in held for p in params)
           else "is in the optimizer given to train, but attach did not set that optimizer up, so it would "
           "decay σ and not average its gradient over the ranks")
    raise RuntimeError(
        f"{_name(loss)}'s σ {why}. Fix: call attach(model, losses, optimizer) with the optimizer you pass to "
        "train (again after building a new one)."
    )


def check_identity(model: paddle.nn.Layer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Raise, before anything loads, if ``state_dict`` holds a loss of ``model`` saved by another
    method or other tasks, or (from ``train``'s ``resume``) ``train`` would refuse the loss at its
    first forward; the dict to load, whose identities are the losses' own (never loaded)."""
    out = dict(state_dict)
    trained = []
    for prefix, layer in model.named_sublayers():
        if isinstance(getattr(layer, KEY, None), paddle.Tensor):
            key = f"{prefix}.{KEY}" if prefix else KEY
            out[key] = own_identity(layer, state_dict, key, "train without resume_model")
            params = [p for p in layer.parameters() if not p.stop_gradient]
            if params:  # none in PaddleSeg's EMA copy, loaded every step: no stack walk there
                trained.append((layer, params))
    local = _train_frame.train_locals() if trained else None
    if local is not None:
        for layer, params in trained:
            _refuse(layer, params, local)  # before resume changes the model and optimizer
    return out


def own_identity(loss: Any, state_dict: dict[str, Any], key: str, way: str) -> Any:
    """``loss``'s identity buffer, to load in place of ``state_dict[key]``; raise, changing nothing,
    if that was saved by another method or other tasks (a checkpoint without it, older, passes)."""
    own = getattr(loss, KEY)
    saved = state_dict.get(key)
    if saved is not None and saved is not own:
        value = saved.numpy() if hasattr(saved, "numpy") else saved
        if int(value) != int(own.numpy()):
            raise ValueError(
                f"The checkpoint's {key} was saved by another loss than this AutoWeight(method={loss.method!r}, "
                f"tasks={list(loss.task_names)}) (another method, or other tasks or in another order): loading "
                "it would read one task's (or method's) σ as another's. Fix: build the same loss "
                f"(method=..., tasks=[...]) as the checkpoint, or {way}."
            )
    return own
