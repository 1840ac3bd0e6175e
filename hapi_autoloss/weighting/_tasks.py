"""What AutoWeight checks and routes: the tasks, their types, which tensors each loss gets."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Callable, Union

import paddle

LossFn = Callable[..., paddle.Tensor]
Losses = Union[Sequence[LossFn], Mapping[str, LossFn]]
TaskTypes = Union[Sequence[str], Mapping[str, str]]
Routing = Union[str, Sequence[Sequence[int]], Mapping[str, Sequence[int]]]

TASK_TYPES = ("regression", "classification")
_FLOATS = (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64)


def names_and_losses(losses: Losses) -> tuple[list[str], list[LossFn]]:
    if isinstance(losses, Mapping):
        names, fns = [str(k) for k in losses], list(losses.values())
        if len(set(names)) < len(names):
            raise ValueError(
                f"losses has task names that are equal as text: {list(losses)}. Fix: give each task a "
                "distinct name (they key sigmas(), weights() and the logged tags)."
            )
    elif isinstance(losses, (list, tuple)):
        fns = list(losses)
        names = [f"task{i}" for i in range(len(fns))]
    else:
        raise TypeError(
            f"losses must be a list of losses or a dict {{task name: loss}}, got "
            f"{type(losses).__name__}. Fix: AutoWeight([loss_a, loss_b]) or "
            "AutoWeight({'depth': mse, 'seg': ce})."
        )
    if not fns:
        raise ValueError(
            "losses is empty: AutoWeight needs at least one loss. Fix: pass e.g. "
            "AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()])."
        )
    for name, fn in zip(names, fns):
        if not callable(fn):
            raise TypeError(
                f"loss '{name}' is a {type(fn).__name__}, not callable. Fix: pass a "
                "paddle.nn.Layer such as paddle.nn.CrossEntropyLoss() or a function."
            )
    return names, fns


def per_task(value: object, names: list[str], what: str, example: str) -> list:
    """Turn a list or a {task: value} dict into a list in task order."""
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        extra = [k for k in value if k not in names]
        if missing or extra:
            raise ValueError(
                f"{what} must name every task exactly once: missing {missing}, unknown "
                f"{extra}; the tasks are {names}. Fix: {example}."
            )
        return [value[n] for n in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ValueError(
                f"{what} has {len(value)} entries but there are {len(names)} tasks "
                f"{names}. Fix: {example}."
            )
        return list(value)
    raise TypeError(f"{what} must be a list or a dict, got {type(value).__name__}. Fix: {example}.")


def parse_task_types(task_types: TaskTypes | None, names: list[str]) -> list[str | None]:
    """One type per task ('regression', 'classification'), None where not given."""
    example = f"task_types={['regression'] * len(names)}"
    if task_types is None:
        return [None] * len(names)
    if isinstance(task_types, str):
        raise TypeError(f"task_types must be a list or a dict, not a string. Fix: {example}.")
    types = per_task(task_types, names, "task_types", example)
    for name, t in zip(names, types):
        if t not in TASK_TYPES:
            raise ValueError(
                f"Unknown task type {t!r} for task '{name}'. Fix: use 'regression' or 'classification'."
            )
    return list(types)


def parse_routing(routing: Routing, names: list[str]) -> list[tuple[int, ...]] | None:
    """None for 'paired', else per task the indices into (*outputs, *labels)."""
    n = len(names)
    if routing == "paired":
        return None
    if routing == "shared":
        return [(0, 1)] * n
    if isinstance(routing, str):
        raise ValueError(
            f"Unknown routing {routing!r}. Fix: use 'paired', 'shared', or per task "
            "the indices into (*outputs, *labels), e.g. {'a': (0, 2), 'b': (1, 3)}."
        )
    routes = per_task(routing, names, "routing", "{'a': (0, 2), 'b': (1, 3)}")
    out = []
    for name, r in zip(names, routes):
        idx = tuple(r) if isinstance(r, (list, tuple)) else (r,)
        if not idx or not all(isinstance(i, int) and i >= 0 for i in idx):
            raise ValueError(
                f"routing for task '{name}' must be non-negative tensor indices, got "
                f"{r!r}. Fix: e.g. (0, 2) = outputs[0] and the first label when there "
                "are two outputs."
            )
        out.append(idx)
    return out


Routes = Union[list[tuple[int, ...]], None]


def _example(names: list[str], got: int) -> str:
    """A routing of the tasks ``names`` over ``got`` tensors (0-based over ``*outputs, *labels``):
    each task its own output and one shared label (n + 1 tensors), or its own output and label (2n);
    else how to write one."""
    n = len(names)
    if got in (n + 1, 2 * n):
        pairs = ((i, n if got == n + 1 else n + i) for i in range(n))
        return "e.g. routing={" + ", ".join(f"{t!r}: {p}" for t, p in zip(names, pairs)) + "}"
    return f"give each of {names} a tuple (its output's index, its label's index)"


def route(routes: Routes, names: list[str], tensors: tuple[paddle.Tensor, ...]) -> list[tuple[paddle.Tensor, ...]]:
    """The tensors each task (``names``) gets, with clear errors when the count does not fit."""
    n, got = len(names), len(tensors)

    def zero_based() -> str:  # built only for an error: route runs at every forward
        return f"indices from 0 over the {got} tensors (*outputs, *labels): {_example(names, got)}"
    for t in tensors:
        if isinstance(t, dict):  # a LibMTL-style network: hapi passes its dict as one item
            raise TypeError(
                f"the network returned a dict ({', '.join(map(str, t))}), which paddle.Model passes to the "
                "loss as one item, not one output per task. Fix: return a tuple of outputs in the order "
                f"of the tasks, e.g. return tuple(out[k] for k in {list(t)!r})."
            )
    if routes is None:
        if got != 2 * n:
            raise ValueError(
                f"routing='paired' with {n} tasks expects {2 * n} tensors "
                f"({n} outputs then {n} labels), but hapi passed {got}. Fix: return one "
                "output per task and give one label per task, or routing='shared' (one output "
                f"and one label for every task), or an explicit routing: {zero_based()}."
            )
        return [(tensors[i], tensors[n + i]) for i in range(n)]
    need = max(max(r) for r in routes) + 1
    if routes == [(0, 1)] * n and got != 2:
        raise ValueError(
            f"routing='shared' expects 2 tensors (one output, one label), but hapi "
            f"passed {got}. Fix: an explicit routing: {zero_based()}."
        )
    if got < need:
        raise ValueError(
            f"routing uses tensor index {need - 1}, but hapi passed only {got} tensors "
            f"(*outputs, *labels: indices 0..{got - 1}). Fix: {zero_based()}."
        )
    return [tuple(tensors[i] for i in r) for r in routes]


def check_inputs(name: str, kind: str | None, args: tuple[paddle.Tensor, ...]) -> None:
    """Shape and dtype mistakes that a loss would otherwise broadcast silently."""
    shapes = [list(a.shape) for a in args if isinstance(a, paddle.Tensor)]  # paddle.Size prints its type
    if len({shape[0] for shape in shapes if shape}) > 1:
        raise ValueError(
            f"task '{name}' got tensors with different batch sizes {shapes}. Fix: the "
            "routing (which output goes with which label) or the data loader."
        )
    if kind != "regression" or len(args) != 2 or len(shapes) != 2:
        return
    out = args[0]
    if out.dtype not in _FLOATS:
        raise TypeError(
            f"task '{name}' is a regression task but its output is {out.dtype}. Fix: make "
            "the network return floats (e.g. .astype('float32')), or set the task type to "
            "'classification'."
        )
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"task '{name}' is a regression task, but its output has shape "
            f"{shapes[0]} and its label {shapes[1]}; a loss such as MSELoss "
            f"would broadcast them to a wrong result. Fix: {_same_shape_fix(shapes[0], shapes[1])}"
        )


def _same_shape_fix(out: list[int], label: list[int]) -> str:
    """A reshape where both hold as many values ([32] and [32, 1]); else the network's output size."""
    if math.prod(out) == math.prod(label):
        return f"reshape the label (or the output) to {out}."
    return (f"the network's output for this task holds {math.prod(out[1:])} value(s) per sample and the "
            f"label {math.prod(label[1:])}: make them match (the head's output size, or the label's columns).")


def as_scalar(name: str, value: object) -> paddle.Tensor:
    if not isinstance(value, paddle.Tensor):
        raise TypeError(
            f"loss '{name}' returned {type(value).__name__}, not a paddle.Tensor. "
            "Fix: return a scalar tensor."
        )
    if math.prod(value.shape) != 1:
        raise ValueError(
            f"loss '{name}' returned shape {list(value.shape)}, but AutoWeight needs one "
            "scalar per task. Fix: use reduction='mean', or wrap a reduction='none' loss "
            "in hapi_autoloss.TopKLoss."
        )
    if value.dtype not in _FLOATS:
        raise TypeError(
            f"loss '{name}' returned a {value.dtype} tensor, which has no gradient: its task would never "
            "train the network. Fix: return the loss as floats (compute it in float32; do not cast it)."
        )
    if value.ndim:
        value = value.reshape([])
    return value if value.dtype == paddle.float32 else value.astype("float32")
