"""A few values of each network parameter, saved in ``<path>.autoloss``, so that ``load_state``
can tell whether ``model.load`` was given the same checkpoint: the network at epoch 1 and σ, k
and the progress at epoch 3 would train on without a word."""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle

_N = 4  # values per parameter: any two checkpoints of a run differ in them


def network_probe(network: Any) -> dict[str, Any]:
    """{structured name: (shape, its first values as float64)}: one read from the device in all."""
    named = list(network.named_parameters())
    if not named:
        return {}
    heads = [p.reshape([-1])[:_N].astype("float32") for _, p in named]
    values = np.split(paddle.concat(heads).numpy().astype(np.float64), np.cumsum([int(h.shape[0]) for h in heads])[:-1])
    return {k: (list(p.shape), v) for (k, p), v in zip(named, values)}


def check_loaded(network: Any, saved: dict[str, Any] | None, path: str) -> None:
    """Raise, changing nothing, unless the network holds the weights ``path`` was saved with
    (parameters of another shape, which ``model.load(skip_mismatch=True)`` leaves out, are not compared)."""
    if not saved:
        return  # a checkpoint of version 0.1.0
    now = network_probe(network)
    same = [np.array_equal(now[k][1], np.asarray(v), equal_nan=True) for k, (shape, v) in saved.items()
            if k in now and list(now[k][0]) == list(shape)]
    if same and not all(same):
        raise ValueError(
            f"The network does not hold the weights saved in {path}.pdparams ({same.count(False)} of "
            f"{len(same)} parameters differ), so σ, k and the progress would resume from another point "
            f"than the network. Fix: call model.load({path!r}) right before load_state with the same path."
        )
