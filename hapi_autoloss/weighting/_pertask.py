"""Per-task gradients inside AutoWeight's forward, for the gradient-level methods.

hapi runs one ``backward`` over the total loss and one ``minimize``. A gradient-level
method needs each task's gradient of the shared parameters first, so the forward computes
them (``paddle.grad``, one pass per task, as LibMTL's ``backward`` mode does), averages
them over ranks, lets the method combine them, and returns the loss built by
``_surrogate``: value Σ L, gradient the combination.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any, Callable, Union

import paddle

from . import _checks, _surrogate
from ._since import ANOTHER_RANK, NEGATIVE_TOLERANCE, SinceUpdate, first_bad, first_negative
from .gradient import GradWeighting

Shared = Union[None, paddle.nn.Layer, Sequence[Any]]


class PerTask:
    """Which parameters are shared, and the per-task gradient pass of one training forward.

    ``shared``: None (the network's parameters reached by more than one task's loss, found
    at the first training step and whenever the trainable set changes), a Layer, or a list of
    parameters. ``rep_grad``: differentiate with respect to the output of the Layer ``shared``
    instead (LibMTL's representation mode).
    """

    def __init__(self, shared: Shared, rep_grad: bool, tasks: Sequence[str] = ()) -> None:
        _checks.shared_argument(shared, rep_grad)
        self.shared = shared
        self.rep_grad = rep_grad
        self._network: Any = None  # weakref to the network whose parameters train
        self._amp_scale: Callable[[], Any] | None = None
        self._given: set[int] | None = None if shared is None or isinstance(shared, paddle.nn.Layer) else \
            {id(p) for p in shared}
        self._shared_ids = self._given
        self.tasks = list(tasks)
        self._last: slice | None = None
        self._upstream: set[int] | None = None  # rep mode: parameters before the shared Layer
        self._unchecked: set[int] | None = None  # tasks whose reach is still to check (None: first step)
        self._own: set[int] | None = None  # parameters of losses inside the network (never the network's)
        self._key: tuple[int, ...] | None = None  # ids of the parameters trainable at the last step
        self._seen: tuple[Any, list[tuple[int, int, int]]] | None = None  # (key, (id, name key, size) per shared param)
        self._rep: dict[str, Any] = {}
        self.since: SinceUpdate | None = None  # AutoWeight's record of the forwards since the last update
        self.plain: Callable[[str], None] | None = None  # a step zeroed outside a trainer: AutoWeight warns
        if rep_grad:
            assert isinstance(shared, paddle.nn.Layer)
            shared.register_forward_post_hook(self._capture)  # type: ignore[arg-type]

    # ------------------------------------------------------------ setup

    def set_network(self, network: paddle.nn.Layer, amp_scale: Callable[[], Any] | None = None) -> None:
        if (self._network() if self._network is not None else None) is not network:
            # another network (a new model took the loss over): its shared parameters, its last
            # shared layer and its tasks' reach are found anew at its first step
            self._own, self._key, self._seen = None, None, None
            self._rep.clear()
        self._network = weakref.ref(network)
        self._amp_scale = amp_scale

    def _trainable(self, params: list[Any]) -> None:
        """A layer frozen or unfrozen between steps (or between two fits) changes what is shared and
        the last shared layer: find them anew, as at a first step, whenever the trainable set changes."""
        key = tuple(id(p) for p in params)
        if key != self._key:
            self._shared_ids, self._last, self._upstream, self._unchecked = self._given, None, None, None
            self._key = key

    def forget(self) -> None:
        """Drop a representation kept by a forward whose loss did not finish."""
        self._rep.clear()

    def _params(self) -> list[Any]:
        network = self._network() if self._network is not None else None
        if network is None:
            raise RuntimeError(
                "A gradient-level method computes each task's gradient of the network's parameters, "
                "but this AutoWeight does not know the network. Fix: train with model.fit(..., "
                "callbacks=[AutoWeightCallback()]) (or call hapi_autoloss.attach(model) before "
                "train_batch); in your own loop, build the optimizer with param_groups(network, loss), or call "
                "loss.set_network(network) once before the first step (e.g. with one optimizer for the network "
                "and another for the loss); in PaddleSeg's train, call hapi_autoloss.paddleseg.attach(model, "
                "losses, optimizer) first."
            )
        # A loss can be a sublayer of the network (PaddleSeg's attach adds it, to save σ in the
        # model's checkpoints): its own parameters (σ, a method's) are never the network's.
        if self._own is None:  # once per network (set_network resets it); trainable ones: every step
            self._own = {id(p) for layer in network.sublayers() if callable(getattr(layer, "set_network", None))
                         for p in layer.parameters()}
        return [p for p in network.parameters() if not p.stop_gradient and id(p) not in self._own]

    def _capture(self, layer: paddle.nn.Layer, inputs: Any, output: Any) -> None:
        """Forward post hook of the shared Layer (rep mode): keep its output, the representation.

        The graph is not cut there: DataParallel's reducer marks parameters that its outputs
        do not reach as unused (zero gradient) at its first step, so a cut trunk would
        never be averaged. ``paddle.grad`` with the representation as input stops there anyway.
        """
        if not (paddle.is_grad_enabled() and layer.training):
            return
        if not isinstance(output, paddle.Tensor):
            raise TypeError(
                f"rep_grad=True needs the shared Layer to return one tensor, but {type(layer).__name__} "
                f"returned {type(output).__name__}. Fix: pass a shared Layer whose output is one tensor, "
                "or use rep_grad=False."
            )
        if "z" in self._rep:
            raise RuntimeError(
                f"The shared Layer {type(layer).__name__} ran twice before the loss, so its representation "
                "is ambiguous. Fix: run it once per step, or use rep_grad=False."
            )
        self._rep["z"] = output

    def _name(self, i: int) -> str:
        return self.tasks[i] if i < len(self.tasks) else str(i)

    def _split(self, params: list[Any], reached: list[list[Any]]) -> tuple[list[Any], list[Any]]:
        """(shared, task-specific) parameters; found at the first training step, and again at the
        first step after the set of trainable parameters changed."""
        if self._shared_ids is None:
            if isinstance(self.shared, paddle.nn.Layer):
                self._shared_ids = {id(p) for p in self.shared.parameters() if not p.stop_gradient}
            else:
                self._shared_ids = {id(p) for j, p in enumerate(params)
                                    if sum(g[j] is not None for g in reached) > 1}
        if self._last is None:
            if not self._shared_ids & {id(p) for p in params}:
                frozen = [n for n, p in self._network().named_parameters() if p.stop_gradient and id(p) not in
                          (self._own or set())]
                raise ValueError(_checks.no_shared(self.shared, frozen))
            ids = self._shared_ids or set()
            self._last = _surrogate.last_layer(self._network(), [p for p in params if id(p) in ids])
        shared = [p for p in params if id(p) in self._shared_ids]
        specific = [p for p in params if id(p) not in self._shared_ids]
        return shared, specific

    # ------------------------------------------------------------ one training forward

    def total(self, losses: list[paddle.Tensor], method: GradWeighting, extra: list[Any]) -> paddle.Tensor:
        """The loss hapi backpropagates: value Σ L, gradient the method's combination.
        ``losses``: each task's 0-d loss (float32), as computed; ``extra``: trainable
        parameters of the loss functions themselves (task-specific like the heads)."""
        k = len(losses)
        known = self._params()
        params = known + [p for p in extra if all(p is not q for q in known)]
        self._trainable(params)
        z = self._rep.pop("z", None)
        if self.rep_grad and z is None:
            assert isinstance(self.shared, paddle.nn.Layer)
            raise RuntimeError(_checks.not_run(self.shared))
        if z is not None and z.stop_gradient:  # a frozen trunk: paddle.grad would fail on z
            assert isinstance(self.shared, paddle.nn.Layer)
            raise ValueError(_checks.no_rep_gradient(self.shared))
        heads = self._heads(params, z, losses) if self.rep_grad else []
        inputs = [z, *heads] if self.rep_grad else params
        # AMP: differentiate the scaled losses, as hapi's backward does, so float16 gradients
        # do not underflow; unscaled right after, in float32.
        scale = self._amp_scale() if self._amp_scale is not None else None
        # rep mode keeps the graph: the trunk's part of it is still to be run, by hapi's backward
        reached = [list(paddle.grad(losses[i] if scale is None else losses[i] * scale.astype(losses[i].dtype),
                                    inputs, retain_graph=self.rep_grad or i < k - 1, allow_unused=True))
                   for i in range(k)]
        if scale is not None:
            inverse = 1.0 / scale.astype("float32")
            reached = [[None if g is None else g.astype("float32") * inverse for g in row] for row in reached]
        if self.rep_grad:
            shared, specific = [z], heads
            columns = [[g[0]] for g in reached]
            reached = [g[1:] for g in reached]
        else:
            shared, specific = self._split(params, reached)
            index = {id(p): j for j, p in enumerate(params)}
            columns = [[g[index[id(p)]] for p in shared] for g in reached]
            reached = [[g[index[id(p)]] for p in specific] for g in reached]
        if self._unchecked is None or self._unchecked:
            if self._unchecked is None:
                self._unchecked = set(range(k))
            _checks.reach(self._unchecked, columns, losses, method, [self._name(i) for i in range(k)], self.rep_grad)
        sizes = [math.prod(p.shape) for p in shared]
        rows = paddle.stack([_surrogate.flat(c, sizes) for c in columns])
        local = paddle.stack([loss.detach() for loss in losses]).astype("float32")
        value = local.sum()
        others_ok = _surrogate.finite_flag([g for row in reached for g in row])
        # a policy checks this step: a negative loss on any rank refuses it on every rank (no host read)
        below = local.min() < -NEGATIVE_TOLERANCE if self.since is not None and self.since.refusing else None
        mean, grads, gram, (finite_losses, finite, negative) = _surrogate.average(local, others_ok, rows,
                                                                                 self.rep_grad, below)
        if not finite:
            # Non-finite somewhere (the sums carry it to every rank): the method must not see the step.
            names = [self._name(i) for i in range(k)]  # read the host only on this failing step
            overflow = finite_losses and scale is not None and not negative
            if negative and self.since is not None:
                self.since.skip("negative", first_negative([local], names)[1] or ANOTHER_RANK)
            elif not overflow and self.since is not None:  # an overflow is the GradScaler's to skip
                kind, text = (("gradient", _checks.nonfinite(names, rows, reached, self.rep_grad)) if finite_losses
                              else ("loss", first_bad([local], names)[1] or "a loss"))
                self.since.skip(kind, text)
                if self.plain is not None:  # a plain loop's (it tells hapi's train step apart itself)
                    self.plain(text)
            return _surrogate.skipped(value, params, amp_overflow=overflow)
        method.last_shared = self._last or slice(None)
        if not self.rep_grad and type(method).shared_layout is not GradWeighting.shared_layout:
            # the columns (a method keeping a per-column history): id, structured name, size
            if self._seen is None or self._seen[0] is not self._key:
                named = {id(p): _surrogate.unwrapped(name) for name, p in self._network().named_parameters()}
                self._seen = (self._key, [(id(p), _surrogate.name_key(named.get(id(p), f"<not in the network> {j}")), n)
                                          for j, (p, n) in enumerate(zip(shared, sizes))])
            method.shared_layout(self._seen[1], shared)
        if gram is None:
            combined = method.combine_grads(grads, mean)
            terms = [_surrogate.term(p, g) for p, g in zip(shared, paddle.split(combined, sizes))]
        else:
            alpha = method.combine_gram(gram, mean)
            terms = [_surrogate.term(z, paddle.matmul(alpha.unsqueeze(0), grads))]
        scales = method.task_scales(mean)  # after combining: nash_mtl's scales are its new α
        for j, p in enumerate(specific):
            parts = [g[j] if scales is None else g[j] * scales[i].astype(g[j].dtype)
                     for i, g in enumerate(reached) if g[j] is not None]
            if parts:
                terms.append(_surrogate.term(p, paddle.add_n(parts).detach()))
        return _surrogate.total(value, terms, method.method_loss(grads.detach(), mean))

    def _heads(self, params: list[Any], z: paddle.Tensor, losses: list[paddle.Tensor]) -> list[Any]:
        """Rep mode: the parameters after the representation. Those before it (inside the shared
        Layer, or a stem that feeds it) get the combined gradient through z from hapi's backward,
        so they must reach the losses through z only (a skip connection around the Layer is
        refused); found once, by one pass from z and one walk of the graph from the losses."""
        if self._upstream is None:
            assert isinstance(self.shared, paddle.nn.Layer)
            inner = {id(p) for p in self.shared.parameters()}
            outer = [p for p in params if id(p) not in inner]
            before = paddle.grad(z, outer, grad_outputs=paddle.ones_like(z), retain_graph=True,
                                 allow_unused=True) if outer else []
            upstream = inner | {id(p) for p, g in zip(outer, before) if g is not None}
            names = {id(p): name for name, p in self._network().named_parameters()}
            found = _checks.around(losses, z, [p for p in params if id(p) in upstream], names)
            if found:
                raise ValueError(_checks.skip_connection(self.shared, found))
            self._upstream = upstream
        return [p for p in params if id(p) not in self._upstream]
