"""Making hapi's optimizer train the loss's parameters (σ), and nothing else about it change.

Checked against paddlepaddle 3.3.1 (``paddle/optimizer/*.py``, ``paddle/hapi/model.py``).
The rule, for every optimizer, flat or grouped: σ gets the optimizer's update with
learning rate × ``lr_scale``, no weight decay (coupled or decoupled) and no gradient
clipping; the network's update is exactly the plain optimizer's.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import paddle

from .._args import positive
from .._dist import average_gradients
from .decay import idle_zero_decay, skip_decoupled_decay
from .finite import agree, finite
from .model import (
    ATTACHED,
    bind_network,
    loss_layer,
    loss_parameters,
    optimizer_of,
    require_dynamic_mode,
    world,
)
from .moments import rename_waiting, start_missing, warn_unclaimed
from .owner import check_owner, hand_over
from .policy import policy_of
from .progress import around_train_batch
from .state import wrap_save

# Keys Paddle's grouped ``step`` reads from every group (``_apply_optimize``).
_GROUP_KEYS = ("params", "grad_clip")


def uses_groups(opt: Any) -> bool:
    plist = opt._parameter_list or []
    return bool(plist) and isinstance(plist[0], dict)


def optimizer_params(opt: Any) -> list[Any]:
    if uses_groups(opt):
        return [p for group in opt._param_groups for p in group["params"]]
    return list(opt._parameter_list or [])


def inject(opt: Any, params: list[Any], lr_scale: float) -> None:
    """Make ``opt`` update ``params`` by the rule above.

    Parameters the user already put in the optimizer (as seed 000 does) are not
    added twice, but they lose their weight decay and clipping too.
    """
    for p in params:
        # Coupled decay (Adam, SGD, Momentum...): a parameter's own regularizer wins
        # over the optimizer's and its group's, so an explicit zero switches it off.
        p.regularizer = paddle.regularizer.L2Decay(0.0)
        p.optimize_attr["learning_rate"] = float(lr_scale)
        p.need_clip = False  # every ClipGrad* skips it: the network's global norm stays the network's
    skip_decoupled_decay(opt, params)
    owned = {id(p) for p in optimizer_params(opt)}
    new = [p for p in params if id(p) not in owned]
    if not new:
        return
    if uses_groups(opt):
        # Complete, as Paddle's constructor would have made it: a group added later only
        # gets the subclass's _default_dict, which lacks 'grad_clip' for all but SGD and
        # AdamW, and Paddle's step then calls [] (the 0.1 crash, after updating the user's groups).
        group = {"params": new, "weight_decay": 0.0, "learning_rate": float(lr_scale), "grad_clip": None}
        if "lamb_weight_decay" in opt._default_dict:
            group["lamb_weight_decay"] = 0.0
        opt._add_param_group(group)
    else:
        # Flat list: _param_groups is the same list object as _parameter_list.
        opt._parameter_list.extend(new)


def check_groups(opt: Any) -> None:
    """Refuse, before any update, a param group Paddle's ``step`` would fail on midway."""
    if not uses_groups(opt):
        return
    for i, group in enumerate(opt._param_groups):
        missing = [k for k in _GROUP_KEYS if k not in group]
        clip = group.get("grad_clip")
        if missing or not (clip is None or callable(clip)):
            problem = f"lacks {missing}" if missing else f"has grad_clip={clip!r}, which is not callable"
            raise TypeError(
                f"{type(opt).__name__}'s param group {i} {problem}, so its step() would fail after "
                "updating the groups before it (Paddle's _add_param_group on a built optimizer "
                "leaves 'grad_clip' out for most optimizers). Fix: give every group in "
                "parameters=[...] when you build the optimizer."
            )


def _wrap_clear_gradients(network: Any, params: list[Any]) -> None:
    """Make hapi's ``network.clear_gradients()`` clear the loss's gradients too."""
    if track(network, "_autoloss_params", params):
        return
    original = network.clear_gradients

    def clear_gradients(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        for p in network._autoloss_params:
            p.clear_gradient()
        return out

    network.clear_gradients = clear_gradients


def track(obj: Any, attr: str, params: list[Any]) -> bool:
    """Keep ``params`` in ``obj.<attr>``; True if ``obj`` was wrapped already."""
    current = getattr(obj, attr, None)
    if current is None:
        setattr(obj, attr, list(params))
        return False
    known = {id(p) for p in current}
    current.extend(p for p in params if id(p) not in known)
    return True


def _skipped_forwards(opt: Any, reset: bool = False) -> int:
    """Training forwards since the last update it must not take (see ``weighting/_since.py``):
    with accumulation, the last batch's loss and σ's gradient do not show them all. ``reset``:
    forget them (after the update or its skip), reading nothing."""
    layers = getattr(opt, "_autoloss_tracked", ())  # found once, by attach: no walk per update
    if reset:
        for x in layers:
            x.forget_skipped()
        return 0
    return sum(x.skipped_forwards() for x in layers)


def _wrap_minimize(opt: Any, params: list[Any], nranks: int) -> None:
    """Fix what hapi's ``optimizer.minimize(loss)`` call misses, right before an update.

    - Under DataParallel, average the loss's gradients over ranks (DataParallel
      only averages the network's).
    - In paddle 3.3.1 ``minimize`` fails on an optimizer built from param groups
      (``get_all_grads`` gets dicts), so hapi cannot train one at all; ``step``
      handles groups and does the same update in dynamic mode.
    """
    if track(opt, "_autoloss_sync", params):
        return
    original = opt.minimize

    def minimize(*args: Any, **kwargs: Any) -> Any:
        handler = policy_of(opt)
        if handler is not None and args:
            dropped = _skipped_forwards(opt)  # first: it names an earlier micro-batch's cause
            here = not dropped and finite(args[0], opt._autoloss_sync)  # no host read once dropped
            if not agree(here, nranks):
                try:  # raise (nothing updated) or return: skip this update entirely
                    handler(args[0], not here)
                finally:  # never leave the bad gradients for a later step
                    opt.clear_grad()
                    for p in opt._autoloss_sync:
                        p.clear_gradient()
                    _skipped_forwards(opt, reset=True)
                return [], []
        _skipped_forwards(opt, reset=True)
        rename_waiting(opt)  # loaded moments: named now, as this update will look for them
        start_missing(opt, opt._autoloss_sync)  # σ's, when the loaded state has none
        average_gradients(opt._autoloss_sync, nranks)
        idle = [(p, p.regularizer) for p in idle_zero_decay(opt, opt._autoloss_sync)]
        for p, _ in idle:  # for this update only: the parameter keeps its regularizer
            p.regularizer = None
        try:
            if uses_groups(opt):
                opt.step()
                return [], []
            return original(*args, **kwargs)
        finally:
            for p, reg in idle:
                p.regularizer = reg

    opt.minimize = minimize


def is_attached(layer: paddle.nn.Layer) -> bool:
    """Whether ``attach`` made a model's optimizer train ``layer`` (a loss or a part of one)."""
    return layer in ATTACHED


def attach(
    model: Any,
    lr_scale: float = 1.0,
    on_nonfinite: Callable[[paddle.Tensor, bool], None] | None = None,
) -> list[Any]:
    """Make ``model.fit`` train the parameters of ``model``'s loss correctly.

    Idempotent: calling it again (a second ``fit``) adds nothing twice. Returns the
    loss's trainable parameters. ``AutoWeightCallback`` calls it at train begin; call
    it yourself only when you drive ``model.train_batch`` by hand, and then also make the
    calls ``loss.training_calls()`` lists (dwa and stch: ``end_epoch``; famo:
    ``after_update``), which the callback would make.
    With ``on_nonfinite``, the loss is checked before each update (on every rank);
    if it is not finite somewhere, or a task loss of a method that needs them >= 0 is
    below −1e-4 (``loss`` is then finite; ``AutoWeight.nonfinite_negative()`` names it),
    ``on_nonfinite(loss, here)`` is called (``here``: on this rank) and either raises,
    or returns to skip the update and clear every gradient.

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
    lr_scale = positive(lr_scale, "lr_scale", "lr_scale=1.0")
    layers = [loss, *loss.sublayers()]
    tracked = [x for x in layers if callable(getattr(x, "track_batch", None))]  # the AutoWeights
    owned = [x for x in layers
             if x in tracked or any(not p.stop_gradient for p in x.parameters(include_sublayers=False))]
    hand_over(owned, model)  # an AutoWeight inside a wrapper loss too
    params = loss_parameters(model)
    warn_unclaimed(opt, {p.name for p in model.network.parameters()}, loss)
    inject(opt, params, lr_scale)
    check_groups(opt)
    _wrap_clear_gradients(model.network, params)
    _wrap_minimize(opt, params, world()[1])
    opt._autoloss_tracked = tracked  # this model's AutoWeights: an earlier loss's leftovers are not this fit's

    me = weakref.ref(model)  # the closure lives on the model: no reference cycle
    forward_checks = any(x.checks_forward() for x in tracked)  # else no stack walk per train step

    def track(begins: bool) -> None:  # only hapi's train step's forwards count for its update
        checked = False
        if begins:
            model = me()
            check_owner(owned, model)
            # a gradient-level forward refuses a negative loss only where a policy checks the update
            checked = forward_checks and policy_of(optimizer_of(model)) is not None
        for x in tracked:
            x.track_batch(begins, checked)

    around_train_batch(model, "since_update", track)
    if on_nonfinite is not None:
        opt._autoloss_on_nonfinite = on_nonfinite
    wrap_save(model)
    bind_network(loss, model.network, model)
    ATTACHED.update(layers)
    return params
