"""The one place that touches the internals of ``paddle.Model`` (hapi).

Checked against paddlepaddle 3.3.1 (``paddle/hapi/model.py``, ``DynamicGraphAdapter``).
Every other module goes through the functions here, so a change in hapi is fixed in
one file. What hapi gets wrong for a loss that owns parameters, and what we do:

1. The optimizer was built from ``model.parameters()``, the network's only.
   -> :func:`attach` adds the loss's parameters to ``model._optimizer``.
2. ``train_batch`` clears only ``model.network``'s gradients after an update, so a
   loss's gradients pile up across steps.
   -> :func:`attach` makes ``network.clear_gradients`` clear them too. hapi calls it
   exactly after each real update, in the AMP path as well, so
   ``accumulate_grad_batches`` is respected for free.
3. Under ``paddle.distributed.launch`` hapi wraps only the network in DataParallel,
   so each rank's loss parameters see only that rank's gradient and drift apart.
   -> :func:`attach` averages their gradients over ranks right before the
   optimizer's ``minimize``.
4. ``Model.save`` / ``Model.load`` cover the network and the optimizer only.
   -> :func:`attach` makes ``model.save`` also write ``<path>.autoloss`` (the loss's
   parameters and the stateful callbacks' positions); :func:`load_state` reads it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import weakref
from collections.abc import Iterator
from types import FrameType
from typing import Any, Callable, Protocol

import numpy as np
import paddle

STATE_SUFFIX = ".autoloss"
_FORMAT_VERSION = 1

# Loss layers whose parameters an optimizer of a hapi Model now owns.
_ATTACHED: weakref.WeakSet[paddle.nn.Layer] = weakref.WeakSet()
# One loss layer belongs to one model: two models sharing it would train it twice.
_OWNER: weakref.WeakKeyDictionary[paddle.nn.Layer, Any] = weakref.WeakKeyDictionary()
# Per model: stateful objects saved with each checkpoint, and states read by
# load_state() that wait for their object to register.
_STATEFUL: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_PENDING: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def set_state_dict(self, state: dict[str, Any]) -> None: ...


# ---------------------------------------------------------------- introspection


def world() -> tuple[int, int]:
    """(rank, number of ranks) of this process, 1 rank outside the launcher."""
    env = paddle.distributed.ParallelEnv()
    return int(env.rank), max(1, int(env.world_size))


def loss_layer(model: Any) -> paddle.nn.Layer | None:
    """The loss given to ``model.prepare``, if it is a Layer."""
    loss = getattr(model, "_loss", None)
    return loss if isinstance(loss, paddle.nn.Layer) else None


def optimizer_of(model: Any) -> Any:
    return getattr(model, "_optimizer", None)


def metric_names(model: Any) -> list[str]:
    """The names hapi puts in ``logs`` for the loss and metrics (``'loss'`` first)."""
    names = getattr(model, "_metrics_name", None)
    return list(names()) if callable(names) else ["loss"]


def iter_layers(model: Any, cls: type) -> Iterator[Any]:
    """Every instance of ``cls`` inside the model's loss, the loss itself included."""
    root = loss_layer(model)
    if root is None:
        return
    for layer in [root, *root.sublayers()]:
        if isinstance(layer, cls):
            yield layer


def loss_parameters(model: Any) -> list[Any]:
    """The trainable parameters found anywhere in the model's loss."""
    root = loss_layer(model)
    if root is None:
        return []
    return [p for p in root.parameters() if not p.stop_gradient]


def called_from_hapi_train(max_depth: int = 12) -> bool:
    """True when a caller up the stack is hapi's ``DynamicGraphAdapter.train_batch``."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return False
        if frame.f_code.co_name == "train_batch" and frame.f_globals.get(
            "__name__"
        ) == "paddle.hapi.model":
            return True
        frame = frame.f_back
    return False


def check_attached(layer: paddle.nn.Layer, needed: bool) -> None:
    """Raise if ``layer`` trains inside hapi without the callback it ``needed``.

    Called from a loss's forward. Costs a few stack-frame reads until attached.
    """
    if not needed or layer in _ATTACHED:
        return
    if not paddle.is_grad_enabled() or not called_from_hapi_train():
        return
    raise RuntimeError(
        f"{type(layer).__name__} learns during training, but paddle.Model's optimizer "
        "does not update its parameters and hapi never clears their gradients (nor feeds "
        "dwa its epoch averages), so its weights would stay frozen or drift. Fix: pass "
        "hapi_autoloss.callbacks.AutoWeightCallback() in "
        "model.fit(callbacks=[...]), or call hapi_autoloss.attach(model) before "
        "model.train_batch(...) (and, for dwa, loss.end_epoch() after each epoch)."
    )


# ---------------------------------------------------------------- attach


def require_dynamic_mode() -> None:
    if not paddle.in_dynamic_mode():
        raise RuntimeError(
            "hapi-autoloss needs PaddlePaddle's dynamic graph mode, but static mode is on. "
            "Fix: remove paddle.enable_static() (or call paddle.disable_static()) before "
            "building the paddle.Model."
        )


def _optimizer_params(opt: Any) -> list[Any]:
    if _uses_groups(opt):
        return [p for group in opt._param_groups for p in group["params"]]
    return list(opt._parameter_list or [])


def _inject(opt: Any, params: list[Any], lr_scale: float) -> None:
    """Make ``opt`` update ``params`` with weight decay 0 and learning rate × ``lr_scale``.

    Parameters the user already put in the optimizer (as seed 000 does) are not
    added twice, but they lose their weight decay too.
    """
    for p in params:
        # Coupled decay (Adam, SGD, Momentum...): a parameter's own regularizer wins
        # over the optimizer's and its group's, so an explicit zero switches it off.
        p.regularizer = paddle.regularizer.L2Decay(0.0)
        p.optimize_attr["learning_rate"] = float(lr_scale)
    # Decoupled decay (AdamW, Lamb): skip our parameters by name.
    if hasattr(opt, "_apply_decay_param_fun"):
        names = {p.name for p in params}
        previous = opt._apply_decay_param_fun
        if getattr(previous, "_autoloss_skip", None) is not None:
            previous._autoloss_skip.update(names)
        else:

            def apply_decay(name: str, _prev: Any = previous) -> bool:
                if name in apply_decay._autoloss_skip:  # type: ignore[attr-defined]
                    return False
                return True if _prev is None else bool(_prev(name))

            apply_decay._autoloss_skip = set(names)  # type: ignore[attr-defined]
            opt._apply_decay_param_fun = apply_decay
    # Lamb: its own switch takes the parameter; groups re-read it from their dict.
    if hasattr(opt, "_exclude_from_weight_decay_fn"):
        ids = {id(p) for p in params}
        for holder, key in ((opt, "_exclude_from_weight_decay_fn"),
                            (opt._default_dict, "exclude_from_weight_decay_fn")):
            prev = holder[key] if isinstance(holder, dict) else getattr(holder, key)

            def exclude(param: Any, _prev: Any = prev) -> bool:
                return id(param) in ids or (_prev is not None and bool(_prev(param)))

            if isinstance(holder, dict):
                holder[key] = exclude
            else:
                setattr(holder, key, exclude)
    owned = {id(p) for p in _optimizer_params(opt)}
    new = [p for p in params if id(p) not in owned]
    if not new:
        return
    if _uses_groups(opt):
        group = {"params": new, "weight_decay": 0.0, "learning_rate": float(lr_scale)}
        if "lamb_weight_decay" in opt._default_dict:
            group["lamb_weight_decay"] = 0.0
        opt._add_param_group(group)
    else:
        # Flat list: _param_groups is the same list object as _parameter_list.
        opt._parameter_list.extend(new)


def _track(obj: Any, attr: str, params: list[Any]) -> bool:
    """Keep ``params`` in ``obj.<attr>``; True if ``obj`` was wrapped already."""
    current = getattr(obj, attr, None)
    if current is None:
        setattr(obj, attr, list(params))
        return False
    known = {id(p) for p in current}
    current.extend(p for p in params if id(p) not in known)
    return True


def _wrap_clear_gradients(network: Any, params: list[Any]) -> None:
    """Make hapi's ``network.clear_gradients()`` clear the loss's gradients too."""
    if _track(network, "_autoloss_params", params):
        return
    original = network.clear_gradients

    def clear_gradients(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        for p in network._autoloss_params:
            p.clear_gradient()
        return out

    network.clear_gradients = clear_gradients


def _uses_groups(opt: Any) -> bool:
    plist = opt._parameter_list or []
    return bool(plist) and isinstance(plist[0], dict)


def _finite(loss: paddle.Tensor, params: list[Any]) -> bool:
    """Whether the loss and the loss parameters' gradients are finite (one small read)."""
    values = [loss.reshape([-1]).astype("float32")]
    values += [p.grad.reshape([-1]).astype("float32") for p in params if p.grad is not None]
    return bool(np.isfinite(paddle.concat(values).numpy()).all())


def _agree(finite: bool, nranks: int) -> bool:
    """True when every rank's step is finite (one tiny all-reduce under the launcher)."""
    if nranks <= 1:
        return finite
    flag = paddle.to_tensor([1 if finite else 0], dtype="int32")
    paddle.distributed.all_reduce(flag, op=paddle.distributed.ReduceOp.MIN)
    return bool(flag.numpy()[0])


def _wrap_minimize(opt: Any, params: list[Any], nranks: int) -> None:
    """Fix what hapi's ``optimizer.minimize(loss)`` call misses, right before an update.

    - Under DataParallel, average the loss's gradients over ranks (DataParallel
      only averages the network's).
    - In paddle 3.3.1 ``minimize`` fails on an optimizer built from param groups
      (``get_all_grads`` gets dicts), so hapi cannot train one at all; ``step``
      handles groups and does the same update in dynamic mode.
    """
    if _track(opt, "_autoloss_sync", params):
        return
    original = opt.minimize

    def minimize(*args: Any, **kwargs: Any) -> Any:
        handler = getattr(opt, "_autoloss_on_nonfinite", None)
        if handler is not None and args:
            # σ's gradient holds every accumulated micro-batch's task losses, so a NaN
            # from a batch that did not update shows up here too.
            here = _finite(args[0], opt._autoloss_sync)
            if not _agree(here, nranks):
                try:  # raise (nothing updated) or return: skip this update entirely
                    handler(args[0], not here)
                finally:  # never leave the bad gradients for a later step
                    opt.clear_grad()
                    for p in opt._autoloss_sync:
                        p.clear_gradient()
                return [], []
        if nranks > 1:
            for p in opt._autoloss_sync:
                # every rank reduces every parameter, gradient or not: no rank waits
                grad = p.grad if p.grad is not None else paddle.zeros_like(p)
                paddle.distributed.all_reduce(grad)
                if p.grad is not None:
                    p.grad.set_value(grad / nranks)
        if _uses_groups(opt):
            opt.step()
            return [], []
        return original(*args, **kwargs)

    opt.minimize = minimize


def _wrap_save(model: Any) -> None:
    if getattr(model, "_autoloss_save_wrapped", False):
        return
    original = model.save

    def save(path: str, training: bool = True) -> None:
        if training and world()[0] == 0 and os.path.exists(path + STATE_SUFFIX):
            # Overwriting a checkpoint: until ours is rewritten, it is not complete.
            os.remove(path + STATE_SUFFIX)
        original(path, training)
        if training and world()[0] == 0:
            save_state(model, path)

    model.save = save
    model._autoloss_save_wrapped = True


def attach(
    model: Any,
    lr_scale: float = 1.0,
    on_nonfinite: Callable[[paddle.Tensor, bool], None] | None = None,
) -> list[Any]:
    """Make ``model.fit`` train the parameters of ``model``'s loss correctly.

    Idempotent: calling it again (a second ``fit``) adds nothing twice. Returns the
    loss's trainable parameters. ``AutoWeightCallback`` calls it at train begin; call
    it yourself only when you drive ``model.train_batch`` by hand.
    With ``on_nonfinite``, the loss is checked before each update (on every rank);
    if it is not finite somewhere, ``on_nonfinite(loss, here)`` is called (``here``:
    on this rank) and either raises, or returns to skip the update and clear every
    gradient.

    Example::

        model.prepare(opt, loss=AutoWeight([mse, mse], method="liebel"))
        hapi_autoloss.attach(model)
        model.train_batch([x], [y1, y2])
    """
    require_dynamic_mode()
    loss = loss_layer(model)
    if loss is None:
        return []
    opt = optimizer_of(model)
    if opt is None:
        raise RuntimeError(
            "paddle.Model has no optimizer, so the loss's weights cannot learn. "
            "Fix: call model.prepare(optimizer, loss=...) with an optimizer before fit."
        )
    if not lr_scale > 0:
        raise ValueError(f"lr_scale must be > 0, got {lr_scale!r}.")
    owner = _OWNER.get(loss)
    if owner is not None and owner is not model:
        raise RuntimeError(
            f"This {type(loss).__name__} is already trained by another paddle.Model; one "
            "instance would mix two models' gradients and checkpoints. Fix: build one "
            "loss instance per model."
        )
    _OWNER[loss] = model
    params = loss_parameters(model)
    _inject(opt, params, lr_scale)
    _wrap_clear_gradients(model.network, params)
    _wrap_minimize(opt, params, world()[1])
    if on_nonfinite is not None:
        opt._autoloss_on_nonfinite = on_nonfinite
    _wrap_save(model)
    _ATTACHED.update([loss, *loss.sublayers()])
    return params


# ---------------------------------------------------------------- progress bar


def show_in_progress_bar(params: Any, keys: list[str]) -> None:
    """Make hapi's ProgBarLogger print ``keys`` from ``logs``.

    ProgBarLogger prints the keys listed in ``params['metrics']``, a list it holds by
    reference, so extending it in place works whatever the callbacks' order.
    """
    metrics = params.get("metrics")
    if isinstance(metrics, list):
        metrics.extend(k for k in keys if k not in metrics)


# ---------------------------------------------------------------- save / load


def register_state(model: Any, key: str, obj: Stateful) -> None:
    """Save ``obj.state_dict()`` with every ``model.save``; restore a loaded state now.

    A second object under the same key (two exporters of one class) gets
    ``key#2``, and so on, in the order the callbacks start.
    """
    _wrap_save(model)
    registry = _STATEFUL.setdefault(model, {})
    # Callbacks of an earlier fit are done: hapi gives each fit a new params dict.
    current = getattr(obj, "params", None)
    for stale in [k for k, o in registry.items() if getattr(o, "params", None) is not current]:
        del registry[stale]
    base, n = key, 1
    while key in registry and registry[key] is not obj:
        n += 1
        key = f"{base}#{n}"
    registry[key] = obj
    pending = _PENDING.get(model, {})
    if key in pending:
        obj.set_state_dict(pending.pop(key))


def _optimizer_state_of(opt: Any, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{structured name: {accumulator: ndarray}} for the loss's parameters."""
    out: dict[str, dict[str, Any]] = {}
    accumulators = getattr(opt, "_accumulators", {}) if opt is not None else {}
    for sname, p in params.items():
        for acc_name, per_param in accumulators.items():
            var = per_param.get(p.name)
            if var is not None:
                out.setdefault(sname, {})[acc_name] = var.numpy()
    return out


def save_state(model: Any, path: str) -> str:
    """Write ``<path>.autoloss`` atomically and return its file name."""
    loss = loss_layer(model)
    named = dict(loss.named_parameters()) if loss is not None else {}
    tensors = loss.state_dict() if loss is not None else {}
    state = {
        "format": _FORMAT_VERSION,
        "loss": {k: v.numpy() for k, v in tensors.items()},
        "optimizer": _optimizer_state_of(optimizer_of(model), named),
        "names": {k: v.name for k, v in named.items()},
        "callbacks": {k: obj.state_dict() for k, obj in _STATEFUL.get(model, {}).items()},
    }
    target = path + STATE_SUFFIX
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".autoloss-")
    os.close(fd)
    try:
        paddle.save(state, tmp)  # type: ignore[arg-type]
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def load_state(model: Any, path: str) -> dict[str, Any]:
    """Restore what ``model.save(path)`` wrote beside the network: σ bit-exact, σ's
    optimizer moments and the callbacks' positions. Call it after ``model.load(path)``.

    Example::

        model.load("checkpoints/3")
        hapi_autoloss.load_state(model, "checkpoints/3")
        model.fit(train_data, epochs=2, callbacks=[AutoWeightCallback(), TopKScheduler()])
    """
    require_dynamic_mode()
    target = path + STATE_SUFFIX
    if not os.path.exists(target):
        raise FileNotFoundError(
            f"{target} does not exist, so the loss weights (σ) cannot be restored. It is "
            "written by model.save() once AutoWeightCallback (or hapi_autoloss.attach) "
            "has run. Fix: pass the same path prefix you gave model.load()."
        )
    state = paddle.load(target)
    loss = loss_layer(model)
    named = dict(loss.named_parameters()) if loss is not None else {}
    tensors = loss.state_dict() if loss is not None else {}
    saved = state.get("loss", {})
    if set(saved) != set(tensors):
        raise ValueError(
            f"{target} holds loss state {sorted(saved)}, but this model's loss has "
            f"{sorted(tensors)}. Fix: build the same loss (same tasks and method) as the "
            "run that saved it."
        )
    for name, value in saved.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(np.shape(value)):
            raise ValueError(
                f"Loss state {name} has shape {list(tensor.shape)} here but "
                f"{list(np.shape(value))} in {target}. Fix: build the same loss."
            )
        tensor.set_value(np.asarray(value).astype(tensor.numpy().dtype))
    # σ's moments wait in the optimizer's holder until AutoWeightCallback adds σ.
    _restore_optimizer_state(
        optimizer_of(model), named, state.get("optimizer", {}), state.get("names", {})
    )
    _PENDING[model] = dict(state.get("callbacks", {}))
    for key, obj in _STATEFUL.get(model, {}).items():
        if key in _PENDING[model]:
            obj.set_state_dict(_PENDING[model].pop(key))
    return state


def _restore_optimizer_state(
    opt: Any,
    named: dict[str, Any],
    saved: dict[str, dict[str, Any]],
    old_names: dict[str, str],
) -> None:
    """Put σ's moments where Paddle's optimizer will pick them up.

    Paddle keys accumulators by ``<param.name>_<accumulator>_0``; parameter names
    depend on construction order, so we key them by structured name in our file
    and rename them to this process's names here.
    """
    if opt is None or not saved:
        return
    for sname, accs in saved.items():
        p = named.get(sname)
        if p is None:
            continue
        for acc_name, value in accs.items():
            existing = opt._accumulators.get(acc_name, {}).get(p.name)
            if existing is not None:
                existing.set_value(value)
                continue
            if not opt._accumulators_holder:
                # No optimizer state was loaded (model.load(reset_optimizer=True), or no
                # model.load): σ's moments start fresh like everyone else's.
                continue
            # model.load() put the saving run's copy under the old name; drop it.
            old = old_names.get(sname, p.name)
            opt._accumulators_holder.pop(f"{old}_{acc_name}_0", None)
            opt._accumulators_holder[f"{p.name}_{acc_name}_0"] = value
