"""σ's optimizer moments in our checkpoint file: read by structured name, put back under this
process's parameter names.

Checked against paddlepaddle 3.3.1 (``Optimizer._accumulators``, ``_accumulators_holder``, which
``Model.load`` fills and the optimizer reads when it creates an accumulator).
"""

from __future__ import annotations

from typing import Any


def optimizer_state_of(opt: Any, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{structured name: {accumulator: ndarray}} for the loss's parameters."""
    out: dict[str, dict[str, Any]] = {}
    accumulators = getattr(opt, "_accumulators", {}) if opt is not None else {}
    for sname, p in params.items():
        for acc_name, per_param in accumulators.items():
            var = per_param.get(p.name)
            if var is not None:
                out.setdefault(sname, {})[acc_name] = var.numpy()
    return out


def restore_optimizer_state(
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


def rename_network_moments(opt: Any, names: dict[str, str], old_names: dict[str, str], keep: set[str]) -> None:
    """Move the network's moments that ``Model.load`` put in the optimizer's holder under the
    saving run's parameter names (``old_names``: structured name -> name) to this process's
    (``names``). Without it a model built after other layers (a notebook cell run again: linear_6
    where the run had linear_0) fails at its first update: "Optimizer set error, linear_6.w_0_moment1_0
    should in state dict". ``keep``: keys already under this process's names (σ's)."""
    holder = getattr(opt, "_accumulators_holder", None) if opt is not None else None
    moves = {old_names[k]: new for k, new in names.items() if k in old_names and old_names[k] != new}
    if not holder or not moves:
        return

    def renamed(key: str) -> str:  # "<param name>_<accumulator>_<i>"; a parameter name holds a "."
        if key in keep:
            return key
        for i in range(len(key) - 1, key.find(".") if "." in key else 0, -1):
            if key[i] == "_" and key[:i] in moves:
                return moves[key[:i]] + key[i:]
        return key

    opt._accumulators_holder = {renamed(k): v for k, v in holder.items()}
    master = getattr(opt, "_master_weights", None)  # AMP O2: keyed by the parameter name itself
    if isinstance(master, dict) and master:
        opt._master_weights = {moves.get(k, k): v for k, v in master.items()}
