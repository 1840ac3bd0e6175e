"""Your own training loop (or PaddleSeg's, PaddleDetection's trainer): σ trained right.

Two functions give a plain Paddle loop what ``AutoWeightCallback`` gives ``model.fit``:

- :func:`param_groups` builds the optimizer's parameter groups so that the loss's
  parameters (σ) get no weight decay, coupled or decoupled (AdamW, Lamb), and are
  not clipped by the optimizer's ``grad_clip``.
- :func:`sync_gradients` averages σ's gradients over the ranks of
  ``paddle.distributed.launch`` (``paddle.DataParallel`` averages only the network's).

Example::

    opt = paddle.optimizer.AdamW(1e-3, parameters=param_groups(net, loss_fn), weight_decay=0.01)
    for x, y1, y2 in loader:
        loss = loss_fn(*model(x), y1, y2)
        loss.backward()
        sync_gradients(loss_fn)
        opt.step()
        opt.clear_grad()
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Union

import paddle

from . import _hapi
from ._args import is_real, positive
from ._dist import average_gradients
from .weighting._plain import note_sync

Params = Union[paddle.nn.Layer, Sequence[Any]]


def _trainable(obj: Params, what: str) -> list[Any]:
    if isinstance(obj, paddle.nn.Layer):
        params = obj.parameters()
    elif isinstance(obj, (list, tuple)):
        params = list(obj)
    else:
        raise TypeError(
            f"{what} must be a paddle.nn.Layer or a list of parameters, got {type(obj).__name__}. "
            f"Fix: pass the Layer itself, e.g. param_groups(net, loss_fn)."
        )
    bad = [type(p).__name__ for p in params if not isinstance(p, paddle.Tensor)]
    if bad:
        raise TypeError(
            f"{what} holds {bad[0]} objects, not parameters. Fix: pass the Layer or layer.parameters()."
        )
    return [p for p in params if not p.stop_gradient]


def _no_decay_group(params: list[Any], lr_scale: float, clip: bool) -> dict[str, Any]:
    # Every paddle 3.3.1 optimizer reads its group keys with .get, so a key that only
    # Lamb knows is harmless elsewhere. Group weight decay 0 switches off coupled decay
    # (Paddle replaces the parameter's regularizer by it), AdamW's decoupled decay
    # (coefficient 0, whatever apply_decay_param_fun says) and, with lamb_weight_decay, Lamb's.
    group = {"params": params, "weight_decay": 0.0, "lamb_weight_decay": 0.0, "learning_rate": float(lr_scale)}
    if not clip:
        group["grad_clip"] = None  # without the key a group takes the optimizer's clip
    return group


def param_groups(
    network: Params,
    loss: Params,
    weight_decay: float | None = None,
    lr_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """Parameter groups for any ``paddle.optimizer``: the network's, then the loss's.

    Args:
        network: the model (a Layer) or a list of its parameters.
        loss: the loss Layer that learns (``AutoWeight``), or a list of its parameters.
        weight_decay: the network's weight decay; ``None`` keeps the optimizer's own
            ``weight_decay`` (for Lamb, set ``lamb_weight_decay`` on the optimizer).
        lr_scale: σ's learning rate as a multiple of the optimizer's (> 0).

    Returns:
        ``[{"params": network's trainable parameters (, "weight_decay": ...)},
        {"params": the loss's, "weight_decay": 0.0, "lamb_weight_decay": 0.0,
        "learning_rate": lr_scale, "grad_clip": None}]``. σ gets no weight decay of any
        kind and is not clipped: the optimizer's ``grad_clip`` (a global norm, too)
        sees the network's gradients only. Network parameters that ask for no decay
        themselves (``ParamAttr(regularizer=L2Decay(0.0))``, as PaddleDetection's norm
        layers do) get a group of their own with no decay, from AdamW and Lamb too, since
        Paddle's groups would otherwise replace their regularizer by the group's decay;
        a global-norm clip then runs on each of the network's two groups separately.

    Example::

        opt = paddle.optimizer.AdamW(1e-3, parameters=param_groups(net, loss_fn),
                                     weight_decay=0.01, grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
    """
    lr_scale = positive(lr_scale, "lr_scale", "lr_scale=1.0")
    if weight_decay is not None and not is_real(weight_decay):
        raise TypeError(
            f"weight_decay must be a float or None, got {type(weight_decay).__name__}. Fix: pass the "
            "coefficient (weight_decay=0.01), or None and give the decay to the optimizer."
        )
    net_params = _trainable(network, "network")
    loss_params = _trainable(loss, "loss")
    if not net_params:
        raise ValueError(
            "network has no trainable parameters, so the optimizer would have nothing to train. "
            "Fix: pass the model, e.g. param_groups(net, loss_fn)."
        )
    shared = {id(p) for p in net_params} & {id(p) for p in loss_params}
    if shared:
        names = [p.name for p in loss_params if id(p) in shared]
        raise ValueError(
            f"Parameters {names} are both in network and in loss, so they would get the network's "
            "weight decay and σ's none at once. Fix: pass a network that does not hold the loss "
            "(e.g. the backbone Layer, or a list of its parameters without the loss's)."
        )
    own = [p for p in net_params if _hapi.asks_no_decay(p)]
    other = [p.name for p in net_params if getattr(p, "regularizer", None) is not None and not _hapi.asks_no_decay(p)]
    if other:
        warnings.warn(
            f"Network parameters {other[:3]}{'...' if len(other) > 3 else ''} carry their own regularizer; "
            "Paddle's parameter groups replace it with the group's weight decay (AdamW's groups keep "
            "it). Fix: pass network=[p for p in net.parameters() if p.regularizer is None] and append "
            "{'params': the others, 'weight_decay': their regularizer} to the groups.",
            stacklevel=2,
        )
    main: dict[str, Any] = {"params": [p for p in net_params if not _hapi.asks_no_decay(p)]}
    if weight_decay is not None:
        main["weight_decay"] = float(weight_decay)
    groups = [main] if main["params"] else []
    if own:
        groups.append(_no_decay_group(own, 1.0, clip=True))
    gradient_level = _hapi.bind_network(loss, network)
    if not loss_params and not gradient_level:
        if not callable(getattr(loss, "training_calls", None)):  # an AutoWeight tells a loop its calls itself
            warnings.warn(
                f"The loss ({type(loss).__name__}) has no trainable parameters and is no AutoWeight, so "
                "param_groups returns the network's groups only. Fix: pass the AutoWeight instance as loss.",
                stacklevel=2,
            )
        return groups
    groups.append(_no_decay_group(loss_params, lr_scale, clip=False))
    return groups


def sync_gradients(loss_or_params: Params) -> None:
    """Replace each gradient of the loss's parameters by its mean over the ranks.

    Call it on every rank after ``loss.backward()`` and before ``opt.step()``: under
    ``paddle.distributed.launch``, ``paddle.DataParallel(net)`` averages the network's
    gradients but not the loss's, so σ would drift apart between ranks. Every rank
    reduces every parameter in the same order (a zero where a rank has no gradient), so
    no rank waits. With one process it does nothing.

    Args:
        loss_or_params: the loss Layer (its trainable parameters are used) or a list of
            parameters, the same on every rank.

    Example::

        loss_fn(*model(x), y1, y2).backward()
        sync_gradients(loss_fn)
        opt.step()
    """
    average_gradients(_trainable(loss_or_params, "loss_or_params"), _hapi.world()[1])
    note_sync()  # the plain-loop check: σ was averaged (weighting/_plain.py)
