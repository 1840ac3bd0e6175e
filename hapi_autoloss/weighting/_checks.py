"""The messages of the gradient-level refusals: ``shared=``/``rep_grad=`` at construction, what
``_pertask`` checks at the first training step (before any update), and how it names the tasks
whose gradients or losses made a step non-finite. Structural checks only: which parameters a
task's loss reaches in the autograd graph, never whether a gradient happens to be zero (a met
hinge loss is a task with a zero gradient, not a task without one)."""

from __future__ import annotations

import warnings
from typing import Any

import paddle

from .base import METHODS
from .gradient import GradWeighting


def not_gradient_level(method: str) -> str:
    grads = ", ".join(sorted(n for n, c in METHODS.items() if issubclass(c, GradWeighting)))
    return (f"shared=/rep_grad= apply to gradient-level methods ({grads}), not to method={method!r}, "
            "which weights the losses. Fix: drop them, or use one of those.")


def no_rep_mode(method: str) -> str:
    able = ", ".join(sorted(n for n, c in METHODS.items() if c.has_rep_mode()))
    return (f"method={method!r} needs the gradients of the parameters themselves, so it has no "
            f"representation mode. Fix: drop rep_grad=True, or use one of {able}.")


def not_run(layer: paddle.nn.Layer) -> str:
    return (
        f"rep_grad=True, but the shared Layer {type(layer).__name__} did not run in this training step's "
        "forward, so there is no representation. Fix: pass the Layer the network's forward calls as shared=."
    )


def unreached(tasks: list[str], rep: bool, method: Any, none: bool) -> str:
    """Tasks whose loss reaches none of the shared parameters (or the representation): an error
    when no task does (``none``: the shared Layer did not run, or the wrong one was given) or
    when the method's rule breaks on a gradient that is zero by construction (mgda); else a
    warning, as a probe on detached features or a head on the input is a valid design."""
    names, many = ", ".join(f"'{t}'" for t in tasks), len(tasks) > 1
    reach = (f"do{'' if many else 'es'} not reach the shared representation (the output of the Layer shared=)"
             if rep else f"reach{'' if many else 'es'} none of the shared parameters")
    head = f"Task{'s' if many else ''} {names} {reach}"
    if none:
        return (f"{head}, so there is nothing to combine. Fix: pass as shared= the Layer the network's "
                "forward runs and every task's loss reaches (or a list of its parameters, e.g. shared="
                "list(net.backbone.parameters()) when the forward calls its sublayers), or leave shared=None "
                "to find the parameters that more than one task reaches.")
    if method.zero_task_breaks:
        return (f"{head}: their gradient there is zero by construction, and with method="
                f"{method.name!r} {method.zero_task_breaks}. Fix: make every task's output depend on the shared "
                "trunk, or use a method that leaves such a task out (e.g. method='pcgrad' or 'nash_mtl'), or a "
                "loss-level method (e.g. method='kendall').")
    return (f"{head}: their gradient there is zero by construction, so they train only their own "
            "parameters and do not shape the shared update (intended for a probe on detached features; "
            "else the head reads the wrong tensor).")


def around(losses: list[paddle.Tensor], z: paddle.Tensor, params: list[Any], names: dict[int, str]) -> list[str]:
    """Rep mode: the names of ``params`` (those before the representation z) that a loss reaches
    by a path that does not pass through z: a skip connection around the shared Layer, or a
    parameter the heads use too. One walk of the autograd graph from the losses, stopped at z."""
    node = getattr(z, "grad_fn", None)
    if node is None or not params or any(getattr(p, "grad_fn", None) is None for p in params):
        return []  # no graph to walk (a leaf representation, or a Paddle without grad_fn)
    stop = node.node_ptr()
    wanted = {p.grad_fn.node_ptr(): names.get(id(p), p.name) for p in params}
    seen: set[int] = set()
    stack = [loss.grad_fn for loss in losses]
    found = []
    while stack:
        node = stack.pop()
        if node is None:
            continue
        ptr = node.node_ptr()
        if ptr in seen or ptr == stop:
            continue
        seen.add(ptr)
        if ptr in wanted:
            found.append(wanted[ptr])
        stack.extend(node.next_functions)
    return sorted(found)


def skip_connection(layer: paddle.nn.Layer, found: list[str]) -> str:
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    return (
        f"rep_grad=True, but {shown} reach{'' if len(found) > 1 else 'es'} the task losses both through "
        f"the output of the shared Layer {type(layer).__name__} and another way (a skip connection "
        "around it, or a parameter the heads use too); representation mode would give them only the "
        "combined gradient through that output and drop the rest. Fix: use rep_grad=False (each task's "
        "gradient of the parameters themselves), or pass as shared= a Layer whose output is the only "
        "way its inputs reach the heads."
    )


def nonfinite(tasks: list[str], grads: paddle.Tensor, own: list[list[Any]], rep: bool) -> str:
    """Which task's gradients are not finite on this rank (read only on the step that failed)."""
    rows = paddle.isfinite(grads).all(axis=1).numpy()
    shared = [t for t, ok in zip(tasks, rows) if not ok]
    mine = [t for t, row in zip(tasks, own) if not all(bool(paddle.isfinite(g).all()) for g in row if g is not None)]
    what = "representation" if rep else "parameters"
    out = [_gradients(shared, f"the shared {what}"), _gradients(mine, "their own parameters" if len(mine) > 1
                                                                  else "its own parameters")]
    return ", ".join(o for o in out if o) or "a task's gradient on another rank is not finite"


def _gradients(tasks: list[str], of: str) -> str:
    if not tasks:
        return ""
    names = ", ".join(f"'{t}'" for t in tasks)
    if len(tasks) == 1:
        return f"the gradient of task {names} with respect to {of} is not finite"
    return f"the gradients of tasks {names} with respect to {of} are not finite"


def shared_argument(shared: Any, rep_grad: bool) -> None:
    """Refuse a ``shared=`` that is neither a Layer nor a list of parameters, and ``rep_grad``
    without a Layer."""
    if shared is not None and not isinstance(shared, (paddle.nn.Layer, list, tuple)):
        raise TypeError(
            f"shared must be a paddle.nn.Layer or a list of parameters, got {type(shared).__name__}. "
            "Fix: pass the shared trunk, e.g. shared=net.encoder."
        )
    if isinstance(shared, (list, tuple)) and not all(isinstance(p, paddle.Tensor) for p in shared):
        bad = next(type(p).__name__ for p in shared if not isinstance(p, paddle.Tensor))
        raise TypeError(
            f"shared holds a {bad}, not parameters. Fix: pass the Layer itself (shared=net.trunk) or "
            "its parameters (shared=net.trunk.parameters())."
        )
    if rep_grad and not isinstance(shared, paddle.nn.Layer):
        raise ValueError(
            "rep_grad=True differentiates with respect to the shared representation, the output "
            "of one Layer, but shared= names no Layer. Fix: pass shared=<the trunk Layer>, e.g. "
            "shared=net.encoder."
        )


_UNFREEZE = ("unfreeze them (stop_gradient=False), or use a loss-level method (e.g. method='kendall') "
             "while the trunk is frozen.")


def no_shared(shared: Any, frozen: list[str]) -> str:
    """No trainable shared parameter: ``shared`` (None, a Layer or a list) and the names of the
    network's frozen parameters. Said to be frozen when they are (a frozen trunk is no wrong shared=);
    with shared=None, frozen parameters may be the trunk or not: both fixes."""
    given = list(shared.parameters()) if isinstance(shared, paddle.nn.Layer) else list(shared or [])
    if given and all(p.stop_gradient for p in given):
        return ("The parameters given as shared= are all frozen (stop_gradient=True), so there is no shared "
                f"gradient to combine. Fix: {_UNFREEZE}")
    if shared is None and frozen:
        shown = ", ".join(frozen[:3]) + (f" and {len(frozen) - 3} more" if len(frozen) > 3 else "")
        return ("No trainable network parameter is reached by more than one task's loss, so there is no shared "
                f"gradient to combine; the network's parameters {shown} are frozen (stop_gradient=True). Fix: if "
                "they are the shared trunk, unfreeze them (stop_gradient=False), or use a loss-level method (e.g. "
                "method='kendall') while it is frozen; otherwise pass shared=<the trunk Layer the network uses>, "
                "or use a loss-level method.")
    given_s = "No network parameter is reached by more than one task's loss" if shared is None \
        else "None of the parameters given as shared= is a trainable parameter of the network"
    return (f"{given_s}, so there is no shared gradient to combine. Fix: pass shared=<the trunk Layer the "
            "network uses>, or use a loss-level method (e.g. method='kendall').")


def no_rep_gradient(layer: paddle.nn.Layer) -> str:
    """rep mode: the shared Layer's output needs no gradient (a stop-gradient z)."""
    if all(p.stop_gradient for p in layer.parameters()):
        return (f"rep_grad=True, but the parameters of the shared Layer {type(layer).__name__} are all frozen "
                "(stop_gradient=True) and its input needs no gradient, so its output carries none and there "
                f"is no shared gradient to combine. Fix: {_UNFREEZE}")
    return (f"rep_grad=True, but the output of the shared Layer {type(layer).__name__} needs no gradient "
            "(stop_gradient=True: detached, or computed under paddle.no_grad()), so there is nothing to "
            "combine. Fix: return it as computed, or use rep_grad=False.")


def reach(unchecked: set[int], columns: list[list[Any]], losses: list[paddle.Tensor], method: Any,
          names: list[str], rep: bool) -> None:
    """Before any update: each task in ``unchecked`` whose loss has a graph reaches the shared
    parameters (or representation); it leaves ``unchecked`` once it passed (or was warned about),
    so a step retried after the error checks it again."""
    now = [i for i in sorted(unchecked) if not losses[i].stop_gradient]
    missing = [i for i in now if all(g is None for g in columns[i])]
    if missing and (method.zero_task_breaks or len(missing) == len(columns)):
        unchecked.difference_update(i for i in now if i not in missing)
        raise ValueError(unreached([names[i] for i in missing], rep, method, len(missing) == len(columns)))
    unchecked.difference_update(now)
    if missing:
        warnings.warn(unreached([names[i] for i in missing], rep, method, False), stacklevel=5)
