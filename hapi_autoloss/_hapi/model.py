"""Reading a ``paddle.Model`` (hapi): its loss, optimizer, ranks and call stack.

Checked against paddlepaddle 3.3.1 (``paddle/hapi/model.py``, ``paddle/hapi/callbacks.py``).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator
from types import FrameType
from typing import Any, Callable

import paddle

# Loss layers whose parameters an optimizer of a hapi Model now owns (see optimizer.attach).
ATTACHED: weakref.WeakSet[paddle.nn.Layer] = weakref.WeakSet()


def slot(obj: Any, name: str, factory: Callable[[], Any]) -> Any:
    """``obj.<name>``, set to ``factory()`` first if missing. Our per-model state lives on
    the model itself: a module-level map from the model to objects that refer back to
    it would keep every model alive."""
    value = getattr(obj, name, None)
    if value is None:
        value = factory()
        setattr(obj, name, value)
    return value


def world() -> tuple[int, int]:
    """(rank, number of ranks) of this process, 1 rank outside the launcher."""
    env = paddle.distributed.ParallelEnv()
    return int(env.rank), max(1, int(env.world_size))


def require_dynamic_mode() -> None:
    if not paddle.in_dynamic_mode():
        raise RuntimeError(
            "hapi-autoloss needs PaddlePaddle's dynamic graph mode, but static mode is on. "
            "Fix: remove paddle.enable_static() (or call paddle.disable_static()) before "
            "building the paddle.Model."
        )


def prepared_loss(model: Any) -> Any:
    """The loss given to ``model.prepare`` (a Layer, a function or None)."""
    return getattr(model, "_loss", None)


def loss_layer(model: Any) -> paddle.nn.Layer | None:
    """The loss given to ``model.prepare``, if it is a Layer."""
    loss = prepared_loss(model)
    return loss if isinstance(loss, paddle.nn.Layer) else None


def optimizer_of(model: Any) -> Any:
    return getattr(model, "_optimizer", None)


def metric_names(model: Any) -> list[str]:
    """The names hapi puts in ``logs`` for the loss and metrics (``'loss'`` first)."""
    names = getattr(model, "_metrics_name", None)
    return list(names()) if callable(names) else ["loss"]


def lacks_eval_data(model: Any) -> bool:
    """True when the running ``fit`` got no ``eval_data`` (False if unknown)."""
    # hapi 3.3.1 keeps fit's eval loader here (None without eval_data) before any callback starts.
    return getattr(model, "_test_dataloader", "unknown") is None


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


def bind_network(loss: Any, network: Any, model: Any = None,
                 scale: Callable[[], paddle.Tensor | None] | None = None) -> bool:
    """Tell every layer of ``loss`` that differentiates the network's parameters itself
    (gradient-level methods: ``set_network``) which network that is, and how to read the
    AMP loss scale: of ``model`` (hapi), or ``scale()`` (another trainer's). True if one does."""
    if not isinstance(loss, paddle.nn.Layer) or not isinstance(network, paddle.nn.Layer):
        return False
    ref = weakref.ref(model) if model is not None else None

    def of_model() -> paddle.Tensor | None:
        return amp_scale(ref()) if ref is not None else None

    scale = scale or of_model
    found = False
    for layer in [loss, *loss.sublayers()]:
        setter = getattr(layer, "set_network", None)
        if callable(setter):
            found = bool(setter(network, scale)) or found
    return found


def amp_scale(model: Any) -> paddle.Tensor | None:
    """The loss scale of hapi's AMP ``GradScaler`` (``model._scaler``, made at the first AMP
    ``train_batch``; checked against paddle 3.3.1's ``AmpScaler.scale``), or None when it
    does not scale (O0, bfloat16, a CPU)."""
    return scaler_scale(getattr(model, "_scaler", None))


def scaler_scale(scaler: Any) -> paddle.Tensor | None:
    """The loss scale of a ``paddle.amp.GradScaler``, or None when it does not scale."""
    if scaler is None or not getattr(scaler, "_enable", False):
        return None
    return getattr(scaler, "_scale", None)


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


def callback_list_of(callback: Any, max_depth: int = 12) -> Any:
    """hapi's ``CallbackList`` that is calling ``callback`` right now, or None.

    ``fit`` keeps it in a local; its ``_call`` / ``set_params`` frames hold it as ``self``.
    """
    from paddle.hapi.callbacks import CallbackList

    frame: FrameType | None = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, CallbackList) and any(c is callback for c in owner.callbacks):
            return owner
        frame = frame.f_back
    return None


def others_in_fit(callback: Any) -> list[Any]:
    """The other entries of the fit's callback list (the same instance listed twice included)."""
    callbacks = callback_list_of(callback)
    others = list(callbacks.callbacks) if callbacks is not None else []
    if callback in others:
        others.remove(callback)  # one occurrence: a second one is a duplicate
    return others


def check_attached(layer: paddle.nn.Layer, needed: bool, reason: Callable[[], str]) -> None:
    """Raise if ``layer`` trains inside hapi without the callback it ``needed`` (``reason()``: why,
    built only when raising).

    Called from a loss's forward. Costs a few stack-frame reads until attached.
    """
    if not needed or layer in ATTACHED:
        return
    if not paddle.is_grad_enabled() or not called_from_hapi_train():
        return
    calls: list[str] = getattr(layer, "training_calls", list)()  # the method's own hooks (dwa, stch, famo)
    also = f" and {'; '.join(calls)}" if calls else ""
    raise RuntimeError(
        f"{type(layer).__name__} {reason()}. Fix: pass "
        "hapi_autoloss.callbacks.AutoWeightCallback() in "
        "model.fit(callbacks=[...]), or call hapi_autoloss.attach(model) before "
        f"model.train_batch(...){also}."
    )


def show_in_progress_bar(params: Any, keys: list[str]) -> None:
    """Make hapi's ProgBarLogger print ``keys`` from ``logs``.

    ProgBarLogger prints the keys listed in ``params['metrics']``, a list it holds by
    reference, so extending it in place works whatever the callbacks' order.
    """
    metrics = params.get("metrics")
    if isinstance(metrics, list):
        metrics.extend(k for k in keys if k not in metrics)


def forward_again(model: Any, inputs: Any, labels: Any) -> list[paddle.Tensor]:
    """``(*outputs, *labels)`` of ``model.network`` on a batch given to ``train_batch``, with no
    gradient and the network in the mode it is in (hapi's ``train_batch`` converts the same way)."""
    def as_list(value: Any) -> list[Any]:
        return list(value) if isinstance(value, (list, tuple)) else ([] if value is None else [value])

    with paddle.no_grad():
        outputs = model.network(*[paddle.to_tensor(x) for x in as_list(inputs)])
    return [*as_list(outputs), *[paddle.to_tensor(y) for y in as_list(labels)]]
