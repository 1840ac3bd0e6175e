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
