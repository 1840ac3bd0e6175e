"""Checkpoints: what ``model.save`` misses, written to ``<path>.autoloss`` and read back.

Checked against paddlepaddle 3.3.1 (``Model.save`` / ``Model.load``, ``Optimizer.set_state_dict``).
The file holds the loss's tensors and Python-side state, σ's optimizer moments, the
stateful callbacks' positions and the run's progress (epochs and train steps done).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any, Protocol

import numpy as np
import paddle

from .model import loss_layer, optimizer_of, require_dynamic_mode, slot, world
from .moments import (
    claim,
    expect_names,
    optimizer_state_of,
    rename_network_moments,
    restore_optimizer_state,
)
from .probe import check_loaded, network_probe
from .progress import progress, set_progress, track_progress

STATE_SUFFIX = ".autoloss"
_FORMAT_VERSION = 2

# The callbacks' states on each model: see registry.py.


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def set_state_dict(self, state: dict[str, Any]) -> None: ...


def wrap_save(model: Any) -> None:
    """Make ``model.save`` also write ``<path>.autoloss``, last and atomically."""
    track_progress(model)
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


def _layers_with_state(loss: paddle.nn.Layer | None) -> dict[str, Any]:
    """{structured name: layer} for the loss's layers that keep Python-side state, root first."""
    if loss is None:
        return {}
    pairs = [("", loss), *loss.named_sublayers()]
    return {name: layer for name, layer in pairs if callable(getattr(layer, "checkpoint_state", None))}


def save_state(model: Any, path: str) -> str:
    """Write ``<path>.autoloss`` atomically and return its file name."""
    loss = loss_layer(model)
    named = dict(loss.named_parameters()) if loss is not None else {}
    tensors = loss.state_dict() if loss is not None else {}
    state = {
        "format": _FORMAT_VERSION,
        "progress": progress(model),
        # [this run, None], then [each run it was loaded from, the step it was loaded at]
        "run": slot(model, "_autoloss_run", lambda: [[uuid.uuid4().hex, None]]),
        "loss": {k: v.numpy() for k, v in tensors.items()},
        "layers": {k: layer.checkpoint_state() for k, layer in _layers_with_state(loss).items()},
        "optimizer": optimizer_state_of(optimizer_of(model), named),
        "names": {k: v.name for k, v in named.items()},
        "network_names": {k: v.name for k, v in model.network.named_parameters()},
        "network_probe": network_probe(model.network),
        # states loaded by load_state that no callback has taken yet, then the live ones
        "callbacks": {**(getattr(model, "_autoloss_pending", None) or {}),
                      **{k: obj.state_dict() for k, obj in slot(model, "_autoloss_stateful", dict).items()}},
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


def read_state(path: str) -> dict[str, Any]:
    """The raw content of ``<path>.autoloss``, with a clear error when it is missing."""
    target = path + STATE_SUFFIX
    if not os.path.exists(target):
        raise FileNotFoundError(
            f"{target} does not exist, so the loss weights (σ) cannot be restored. It is "
            "written by model.save() once AutoWeightCallback (or hapi_autoloss.attach) "
            "has run. Fix: pass the same path prefix you gave model.load()."
        )
    return paddle.load(target)  # type: ignore[return-value]


def checkpoint_info(path: str) -> dict[str, int]:
    """``{'epoch': epochs done, 'step': train steps done}`` of the run when ``model.save(path)``
    wrote it, counted from the run's very start across resumes (never from file names).

    Example::

        path = hapi_autoloss.latest_checkpoint("ckpt")
        hapi_autoloss.checkpoint_info(path)   # {'epoch': 3, 'step': 18}
    """
    saved = read_state(path).get("progress") or {}
    return {"epoch": int(saved.get("epoch", 0)), "step": int(saved.get("step", 0))}


def newest_checkpoint(save_dir: str) -> str | None:
    """The path prefix of the complete checkpoint in ``save_dir`` that is furthest into
    training (most steps, then epochs, then the last written) of the run that wrote last, or
    None. The runs are that run and those it was loaded from (a new model's run in a
    reused folder leaves an earlier, longer run's checkpoints out, and so does another run
    started from the same checkpoint)."""
    if not os.path.isdir(save_dir):
        return None
    found = []
    for name in os.listdir(save_dir):
        prefix = os.path.join(save_dir, name[: -len(STATE_SUFFIX)])
        if not name.endswith(STATE_SUFFIX) or not os.path.exists(prefix + ".pdparams"):
            continue
        state = read_state(prefix)
        info = state.get("progress") or {}
        mtime = os.stat(prefix + STATE_SUFFIX).st_mtime_ns
        found.append((int(info.get("step", 0)), int(info.get("epoch", 0)), mtime, prefix, _lineage(state)))
    if not found:
        return None
    lineage = dict(max(found, key=lambda f: f[2])[-1])  # run -> the step it was left at (None: all)
    mine = [f for f in found if f[-1][0][0] in lineage
            and (lineage[f[-1][0][0]] is None or f[0] <= lineage[f[-1][0][0]])]
    return max(f[:4] for f in mine)[-1]


def _lineage(state: dict[str, Any]) -> list[tuple[Any, int | None]]:
    """[(this run, None), (each run it was loaded from, the step it was loaded at)...]; a file
    without one (0.1.0) is one run of unknown origin."""
    run = state.get("run")
    if not isinstance(run, (list, tuple)) or not run:
        return [(None, None)]
    return [(r[0], r[1]) if isinstance(r, (list, tuple)) else (r, None) for r in run]


def check_state(model: Any, path: str, state: dict[str, Any] | None = None) -> None:
    """Raise, changing nothing, if ``<path>.autoloss`` was written by another loss (other method,
    other task names or order, other state) than ``model``'s."""
    from ..weighting._buffers import check_shapes  # the weighting package imports this one

    target = path + STATE_SUFFIX
    state = read_state(path) if state is None else state
    loss = loss_layer(model)
    named = dict(loss.named_parameters()) if loss is not None else {}
    saved = state.get("loss", {})
    tensors = loss.state_dict() if loss is not None else {}
    saved_layers = state.get("layers", {})
    for name, layer in _layers_with_state(loss).items():
        check = getattr(layer, "check_checkpoint_state", None)
        if name in saved_layers and check is not None:
            check(saved_layers[name], target)
    # A buffer added since (db_mtl's and nash_mtl's state, once Python-side) may be missing:
    # the method's set_checkpoint_state restores it from the file's older form.
    buffers = {k for k in tensors if k not in named}
    if not set(saved) <= set(tensors) or not set(tensors) - set(saved) <= buffers:
        raise ValueError(
            f"{target} holds loss state {sorted(saved)}, but this model's loss has "
            f"{sorted(tensors)}. Fix: build the same loss (same tasks and method) as the "
            "run that saved it."
        )
    if loss is not None:
        check_shapes(loss, saved, where=target)


def load_state(model: Any, path: str) -> dict[str, Any]:
    """Restore what ``model.save(path)`` wrote beside the network: σ bit-exact, σ's
    optimizer moments, the loss's own state (k of every TopKLoss, rlw's random
    stream), the callbacks' positions and the run's progress. Call it after
    ``model.load(path)``; ``model.evaluate`` then already uses the restored k.

    A checkpoint of another loss (other method, other task names or order) is
    refused with an error naming both, before anything is changed.

    Example::

        model.load("checkpoints/3")
        hapi_autoloss.load_state(model, "checkpoints/3")
        model.fit(train_data, epochs=2, callbacks=[AutoWeightCallback(), TopKScheduler()])
    """
    require_dynamic_mode()
    state = read_state(path)
    check_state(model, path, state)
    check_loaded(model.network, state.get("network_probe"), path)
    loss = loss_layer(model)
    named = dict(loss.named_parameters()) if loss is not None else {}
    saved = state.get("loss", {})
    if loss is not None:  # checked: the buffers whose shape follows the layout take the saved one
        from ..weighting._buffers import fit_empty_buffers

        fit_empty_buffers(loss, saved)
    tensors = loss.state_dict() if loss is not None else {}
    layers = _layers_with_state(loss)
    saved_layers = state.get("layers", {})
    for name, value in saved.items():
        tensor = tensors[name]
        tensor.set_value(np.asarray(value).astype(tensor.numpy().dtype))
    for name, layer in layers.items():
        if name in saved_layers:
            layer.set_checkpoint_state(saved_layers[name])
    for layer in [loss, *loss.sublayers()] if loss is not None else []:
        if callable(getattr(layer, "state_loaded", None)):
            layer.state_loaded()
    # σ's moments wait in the optimizer's holder until AutoWeightCallback adds σ.
    opt = optimizer_of(model)
    sigma_keys = restore_optimizer_state(opt, named, state.get("optimizer", {}), state.get("names", {}))
    network = {k: v.name for k, v in model.network.named_parameters()}
    rename_network_moments(opt, network, state.get("network_names", {}), sigma_keys)
    expect_names(opt, {*network.values(), *(p.name for p in named.values())})
    claim(opt)
    set_progress(model, state.get("progress") or {})
    # a new run, going on from that one at its step (and from those it was loaded from)
    (origin, _), *earlier = _lineage(state)
    step = int((state.get("progress") or {}).get("step", 0))
    model._autoloss_run = [[uuid.uuid4().hex, None], [origin, step], *[list(r) for r in earlier]]
    # The callbacks registered so far belong to a finished fit: each state waits for the
    # first callback of its kind that registers (the next fit's, or a later one), and is
    # written into every checkpoint until then.
    model._autoloss_stateful = {}
    model._autoloss_pending = dict(state.get("callbacks", {}))
    return state
