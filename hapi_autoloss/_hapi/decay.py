"""Switching weight decay off for the loss's parameters where a regularizer does not reach.

Checked against paddlepaddle 3.3.1 (``paddle/optimizer/*.py``).
"""

from __future__ import annotations

from typing import Any

import paddle


def skip_decoupled_decay(opt: Any, params: list[Any]) -> None:
    """AdamW and Lamb decay by their own switches, which a parameter's regularizer does not reach."""
    if hasattr(opt, "_apply_decay_param_fun"):  # AdamW: by name
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
    if hasattr(opt, "_exclude_from_weight_decay_fn"):  # Lamb: by parameter; groups re-read their dict
        ids = {id(p) for p in params}
        for holder, key in ((opt, "_exclude_from_weight_decay_fn"),
                            (opt._default_dict, "exclude_from_weight_decay_fn")):
            prev = holder[key] if isinstance(holder, dict) else getattr(holder, key)
            if getattr(prev, "_autoloss_skip", None) is not None:  # a second fit: extend, not re-wrap
                prev._autoloss_skip.update(ids)
                continue
            skip = set(ids)

            def exclude(param: Any, _prev: Any = prev, _skip: set[int] = skip) -> bool:
                return id(param) in _skip or (_prev is not None and bool(_prev(param)))

            exclude._autoloss_skip = skip  # type: ignore[attr-defined]
            if isinstance(holder, dict):
                holder[key] = exclude
            else:
                setattr(holder, key, exclude)


def idle_zero_decay(opt: Any, params: list[Any]) -> list[Any]:
    """The parameters whose ``L2Decay(0.0)`` (set by ``optimizer.inject``) nothing would override.

    Paddle 3.3.1's base ``Optimizer._create_regularization_of_grad`` adds ``0·σ`` to their
    gradients, two ops a step for nothing; without a regularizer it returns the gradient
    as it is, the same update, unless the optimizer has a coupled decay of its own (a
    group's decay is a parameter's regularizer too). Momentum fuses L2 decay into its own
    op and reads ``param.regularizer`` there: it is left alone (it adds no op anyway).
    """
    if getattr(opt, "regularization", True) is not None:
        return []
    if type(opt)._create_regularization_of_grad is not paddle.optimizer.Optimizer._create_regularization_of_grad:
        return []
    return [p for p in params if asks_no_decay(p)]


def asks_no_decay(p: Any) -> bool:
    """The parameter asked for no decay itself: ``ParamAttr(regularizer=L2Decay(0.0))``."""
    reg = getattr(p, "regularizer", None)
    return isinstance(reg, paddle.regularizer.L2Decay) and float(reg._coeff) == 0.0
