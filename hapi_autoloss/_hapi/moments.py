"""Optimizer moments across a checkpoint: σ's in our file, read by structured name, and the
network's that hapi's ``Model.load`` left in the optimizer, both put under the names this
process's optimizer will look for.

Checked against paddlepaddle 3.3.1 (``Optimizer._add_accumulator``: an accumulator is named
``unique_name.generate(f"{param.name}_{accumulator}")`` when first needed, and taken from
``_accumulators_holder``, which ``Model.load`` fills, under that exact name). Both halves of the
name change within one process: a model built again gets new parameter names (linear_6 where the
checkpoint has linear_0), a new optimizer for the same network a new suffix (``_1``).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import paddle
from paddle.base import unique_name

_SUFFIX = re.compile(r"_\d+$")


def accumulator_name(param_name: str, accumulator: str) -> str:
    """The name the optimizer will give ``param_name``'s ``accumulator`` when it creates it."""
    gen = unique_name.generator
    key = f"{param_name}_{accumulator}"
    return f"{gen.prefix}{key}_{gen.ids.get(key, 0)}"


def _split(key: str, params: set[str]) -> tuple[str, str] | None:
    """(parameter name, accumulator) of a holder key ``<param>_<accumulator>_<i>``, or None."""
    stem = _SUFFIX.sub("", key)
    if stem == key:
        return None
    for i in range(len(stem) - 1, 0, -1):  # the longest parameter name: linear_10 before linear_1
        if stem[i] == "_" and stem[:i] in params:
            return stem[:i], stem[i + 1 :]
    return None


def optimizer_state_of(opt: Any, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{structured name: {accumulator: ndarray}} for the loss's parameters."""
    out: dict[str, dict[str, Any]] = {}
    accumulators = getattr(opt, "_accumulators", {}) if opt is not None else {}
    for sname, p in params.items():
        for acc_name, per_param in accumulators.items():
            var = per_param.get(p.name)
            if var is not None:
                out.setdefault(sname, {})[acc_name] = var.numpy()
    waiting = (getattr(opt, "_accumulators_holder", None) or {}) if opt is not None else {}
    names = {p.name: sname for sname, p in params.items() if sname not in out}
    candidates = set(names)
    for key, value in waiting.items():  # loaded, no update since: they still wait there
        found = _split(key, candidates)
        if found is not None:
            out.setdefault(names[found[0]], {})[found[1]] = value.numpy() if hasattr(value, "numpy") else value
    return out


def restore_optimizer_state(opt: Any, named: dict[str, Any], saved: dict[str, dict[str, Any]],
                            old_names: dict[str, str]) -> set[str]:
    """Put σ's moments (``saved``, by structured name) where the optimizer will pick them up;
    drop the copy ``Model.load`` put in the holder under the saving run's names. Returns the
    holder keys it set."""
    done: set[str] = set()
    if opt is None or not saved:
        return done
    holder = opt._accumulators_holder
    old = {old_names.get(sname, p.name) for sname, p in named.items()}
    for key in [k for k in holder if _split(k, old) is not None]:
        del holder[key]
    for sname, accs in saved.items():
        p = named.get(sname)
        if p is None:
            continue
        for acc_name, value in accs.items():
            existing = opt._accumulators.get(acc_name, {}).get(p.name)
            if existing is not None:
                existing.set_value(value)
            elif holder:  # else no optimizer state was loaded (reset_optimizer=True): σ's start fresh too
                key = accumulator_name(p.name, acc_name)
                holder[key] = value
                done.add(key)
    return done


def rename_network_moments(opt: Any, names: dict[str, str], old_names: dict[str, str], keep: set[str]) -> None:
    """Move the network's moments that ``Model.load`` put in the holder under the saving run's
    names (``old_names``: structured name -> parameter name) to the names this optimizer will
    look for (``names``: this network's). Without it the first update failed: "Optimizer set
    error, linear_6.w_0_moment1_0 should in state dict". ``keep``: keys already right (σ's)."""
    holder = getattr(opt, "_accumulators_holder", None) if opt is not None else None
    moves = {old_names[k]: new for k, new in names.items() if k in old_names}
    if not holder or not moves:
        return
    master = getattr(opt, "_master_weights", None)  # AMP O2: keyed by the parameter name itself
    if isinstance(master, dict) and master:
        opt._master_weights = {moves.get(k, k): v for k, v in master.items()}
        # the loaded master weights keep their names, and their moments are named after them
        moves.update({v.name: v.name for v in master.values() if isinstance(getattr(v, "name", None), str)})
    renamed: dict[str, Any] = {}
    olds = set(moves)
    for key, value in holder.items():
        found = None if key in keep else _split(key, olds)
        renamed[accumulator_name(moves[found[0]], found[1]) if found else key] = value
    opt._accumulators_holder = renamed


def expect_names(opt: Any, params: set[str]) -> None:
    """Name ``params``' moments again right before the next update: the suffix predicted at
    ``load_state`` is stale when another optimizer created the same name since (two optimizers
    over one network, loaded, trained in turn) or the model was loaded inside a
    ``unique_name.guard()`` and trains outside it."""
    if opt is not None and getattr(opt, "_accumulators_holder", None):
        opt._autoloss_waiting = set(params)


def rename_waiting(opt: Any) -> None:
    """Put the loaded moments under the names the optimizer will look for now. Called right
    before an update, once (hapi's load leaves keys no update takes, so the holder never empties):
    the accumulators that update creates take exactly these names."""
    params = getattr(opt, "_autoloss_waiting", None)
    if not params:
        return
    opt._autoloss_waiting = None
    holder = opt._accumulators_holder
    if not holder:
        return
    master = getattr(opt, "_master_weights", None)
    if isinstance(master, dict):  # AMP O2: the loaded master weights' moments carry their names
        params = params | {v.name for v in master.values() if isinstance(getattr(v, "name", None), str)}
    renamed: dict[str, Any] = {}
    for key, value in holder.items():
        found = _split(key, params)
        renamed[accumulator_name(*found) if found else key] = value
    opt._accumulators_holder = renamed
    claim(opt)


def start_missing(opt: Any, params: list[Any]) -> None:
    """Give ``params`` (σ) fresh moments when a loaded optimizer state has none for them (a
    checkpoint of a loss without σ): while moments wait, Paddle creates none itself, and the first
    update failed with "Optimizer set error, kendall_0.w_0_moment1_0 should in state dict"."""
    holder = getattr(opt, "_accumulators_holder", None)
    if not holder or holder is getattr(opt, "_autoloss_started", None):  # looked at this loaded state
        return
    created = {name for per in opt._accumulators.values() for name in per}
    missing = [p for p in params if p.name not in created
               and not any(_split(k, {p.name}) for k in holder)]
    if missing:
        opt._accumulators_holder = {}  # so that Paddle creates them with their initial values
        try:
            opt._create_accumulators(paddle.static.default_main_program().global_block(), missing)
        finally:
            opt._accumulators_holder = holder
    opt._autoloss_started = holder


def claim(opt: Any) -> None:
    """Mark the moments waiting in the optimizer as put there by ``load_state`` (Paddle's
    ``set_state_dict``, which ``Model.load`` calls, replaces the holder by a new dict)."""
    if opt is not None:
        opt._autoloss_claimed = opt._accumulators_holder


def warn_unclaimed(opt: Any, network: set[str], loss: Any) -> None:
    """Warn when ``Model.load`` restored σ's moments but not σ: ``load_state`` did not follow."""
    if any(not p.stop_gradient for p in loss.parameters()) and unclaimed_moments(opt, network):
        warnings.warn(
            "model.load restored the optimizer's moments of parameters outside the network (σ's of the "
            "saved run), but hapi_autoloss.load_state was not called after it, so σ (and k, and the "
            "method's state) start from their initial values while σ's moments go on. Fix: call "
            "hapi_autoloss.load_state(model, path) right after model.load(path); ignore this if you "
            "meant σ to start afresh.", stacklevel=3)


def unclaimed_moments(opt: Any, network: set[str]) -> list[str]:
    """The waiting moments of parameters outside the network (σ's of the saved run) that
    ``Model.load`` put in the optimizer with no ``load_state`` after it; [] if none."""
    holder = getattr(opt, "_accumulators_holder", None) if opt is not None else None
    if not holder or holder is getattr(opt, "_autoloss_claimed", None):
        return []
    # an accumulator's name ends in _<i> (hapi's load adds other keys, StructuredToParameterName@@)
    return [k for k in holder if _SUFFIX.search(k) and _split(k, network) is None]
