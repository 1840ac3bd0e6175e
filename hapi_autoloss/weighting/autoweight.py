"""AutoWeight: one loss layer that computes several losses and weights them with a method."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import paddle

from .. import _hapi
from . import _checks
from ._checkpoints import Checkpoints
from ._make import make_method
from ._method_checks import check_bound, check_per_task, check_total
from ._pertask import PerTask, Shared
from ._plain import PlainChecks
from ._since import SinceUpdate
from ._tasks import (
    Losses,
    Routing,
    TaskTypes,
    as_scalar,
    check_inputs,
    names_and_losses,
    parse_routing,
    parse_task_types,
    route,
)
from ._update_checks import UpdateChecks
from .base import Weighting
from .gradient import GradWeighting


class AutoWeight(UpdateChecks, Checkpoints):
    """Computes several losses and weights them into one, learning the weights during ``model.fit``.

    Args:
        losses: a list, or a dict ``{task name: loss}``, of Layers or callables returning a scalar
            (``TopKLoss`` included). Unnamed tasks are called ``task0``, ``task1``...
        method: a method's name (the README's tables: ``"kendall"``, ``"famo"``, ``"pcgrad"``...),
            or an instance of a :class:`~hapi_autoloss.weighting.Weighting` subclass (your own method).
        task_types: ``"regression"`` or ``"classification"`` per task (list, or dict by
            task name). Required by ``"kendall"`` (the ½ factor); a regression task's
            label shape is also checked against its output.
        routing: which of the tensors hapi passes (``*outputs, *labels``) go to each loss.
            ``"paired"``: loss i gets ``(outputs[i], labels[i])``. ``"shared"``: every loss
            gets the same ``(output, label)`` (CE + Dice on one segmentation output). Or per
            task, the indices into ``(*outputs, *labels)``, e.g. ``{"depth": (0, 2), "seg": (1, 3)}``.
        shared: gradient-level methods (mgda, pcgrad, cagrad, imtl, gradnorm, aligned_mtl, nash_mtl,
            db_mtl): the parameters whose per-task gradients are combined. None: the network's
            parameters that more than one task's loss reaches, found at the first training step and
            after a freeze or unfreeze. Or a Layer (the shared trunk), or a list of parameters. The
            others get their task's gradient.
        rep_grad: gradient-level methods whose rule needs only the Gram matrix: differentiate
            with respect to the output of the Layer ``shared`` (LibMTL's representation mode:
            one backward through the trunk instead of one per task).
        **options: the method's own, with defaults (the README's tables say more): ``clamp``,
            ``init`` (kendall, simple, imtl_l: s ∈ [−10, 10] from 0; liebel: c ∈ [0.01, 100] from 1;
            or ``init="auto"``); ``weights`` (fixed); ``temperature`` (dwa 2, uw_so 1); ``seed`` (rlw,
            pcgrad); ``w_lr`` 0.025, ``gamma`` 1e-3 (famo); ``mu`` 1, ``warmup_epochs`` 4 (stch);
            ``normalize`` "none" (mgda); ``c`` 0.5, ``rescale`` 1 (cagrad); ``alpha`` 1.5 (gradnorm);
            ``scale`` "min" (aligned_mtl); ``max_norm`` 1, ``update_weights_every`` 1 (nash_mtl);
            ``beta`` 0.9, ``beta_sigma`` 0 (db_mtl). LibMTL's names (``calpha``...) are refused.

    The forward returns a 0-d float32 tensor, computed in float32 whatever the inputs'
    dtype. Train it through ``model.fit(..., callbacks=[AutoWeightCallback()])``.

    Reading (host floats): ``sigmas()``/``weights()`` now; ``used()`` at the last training forward
    (σ before its update; shown per step by hapi's progress line and the exporters); ``last_losses()``.

    Example::

        loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()},
                          method="kendall", task_types=["regression", "regression"])
        model.prepare(paddle.optimizer.Adam(1e-3, parameters=model.parameters()), loss)
        model.fit(data, epochs=10, callbacks=[AutoWeightCallback()])
        loss.sigmas()   # {'y1': 2.98, 'y2': 0.51}
    """

    def __init__(
        self,
        losses: Losses,
        method: str | Weighting = "kendall",
        task_types: TaskTypes | None = None,
        routing: Routing = "paired",
        shared: Shared = None,
        rep_grad: bool = False,
        **options: Any,
    ) -> None:
        _hapi.require_dynamic_mode()
        super().__init__()
        names, fns = names_and_losses(losses)
        self.weighting = make_method(method, options)
        self.task_names: list[str] = names
        self.losses = paddle.nn.LayerList([f for f in fns if isinstance(f, paddle.nn.Layer)])
        self._fns = fns
        self._types = parse_task_types(task_types, names)
        self._routes = parse_routing(routing, names)
        self.weighting.bind(names, self._types)
        check_bound(self.weighting, names)
        self._pertask = self._per_task(shared, rep_grad)
        # the training forwards since the last update, for the check before it
        self._since = SinceUpdate(bool(self.weighting.positive_losses), self._pertask is not None)
        # the calls a plain loop owes the method, σ's averaging, a zeroed step: warned there
        self._plain = PlainChecks(type(self.weighting).training_hooks(), self.training_calls(), self.method)
        if self._pertask is not None:
            self._pertask.since = self._since
            self._pertask.plain = self._zeroed  # a bound method: the loss still pickles and deep-copies

    def _per_task(self, shared: Shared, rep_grad: bool) -> PerTask | None:
        if not isinstance(self.weighting, GradWeighting):
            if shared is not None or rep_grad:
                raise ValueError(_checks.not_gradient_level(self.method))
            return None
        if rep_grad and not self.weighting.has_rep_mode():
            raise ValueError(_checks.no_rep_mode(self.method))
        return PerTask(shared, bool(rep_grad), self.task_names)

    def set_network(self, network: paddle.nn.Layer, amp_scale: Callable[[], Any] | None = None) -> bool:
        """The network whose parameters a gradient-level method differentiates, and a function
        giving the AMP loss scale; ``attach`` (``model.fit``) and ``param_groups`` (your own
        loop) call it. True if the method needs them."""
        if self._pertask is None:
            return False
        self._pertask.set_network(network, amp_scale)
        return True

    @property
    def method(self) -> str:
        """The method's name (its class name for an unnamed method)."""
        return self.weighting.name or type(self.weighting).__name__

    @property
    def s(self) -> paddle.Tensor | None:
        """The learned per-task parameter of kendall, simple, liebel (c) and imtl_l; else None."""
        return getattr(self.weighting, "s", None)

    # ------------------------------------------------------------ forward

    def task_losses(self, *tensors: paddle.Tensor) -> paddle.Tensor:
        """The raw per-task losses, a float32 tensor of shape [n], with the input checks."""
        return paddle.stack(self._each_loss(tensors))

    def _each_loss(self, tensors: tuple[paddle.Tensor, ...]) -> list[paddle.Tensor]:
        raw = []
        for name, kind, fn, args in zip(self.task_names, self._types, self._fns,
                                        route(self._routes, self.task_names, tensors)):
            check_inputs(name, kind, args)
            raw.append(as_scalar(name, fn(*args)))
        return raw

    def forward(self, *tensors: paddle.Tensor) -> paddle.Tensor:
        if not _hapi.is_attached(self):  # once attached always: skip walking the method's parameters
            _hapi.check_attached(self, self.weighting.needs_callback, lambda: self.weighting.callback_reason)
        elif not self._since.recording and paddle.is_grad_enabled():  # another train step? (no eval's walk)
            _hapi.check_other_train(self, needed=self.weighting.needs_callback)
        try:
            each = self._each_loss(tensors)
            values = paddle.stack(each)
            batch = tensors[0].shape[0] if tensors and tensors[0].ndim else 1
            detached = values.detach()
            self.weighting.record(detached, paddle.is_grad_enabled(), int(batch))
            self._since.forward(detached)  # kept only inside hapi's train step (attach's wrapper)
            if paddle.is_grad_enabled() and not self._driven():
                self._plain.forward(self)
            if self._pertask is not None and paddle.is_grad_enabled() and not values.stop_gradient:
                assert isinstance(self.weighting, GradWeighting)
                # each task's own scalar: a slice of the stack would reach every task's inputs (with zeros)
                own = [p for p in self.losses.parameters() if not p.stop_gradient]
                return self._pertask.total(each, self.weighting, own)
        except BaseException:
            if self._pertask is not None:
                self._pertask.forget()  # a representation kept for this step must not reach the next
            raise
        total = self.weighting.combine(values)
        check_total(self.weighting, total)
        return total

    # ------------------------------------------------------------ training hooks

    def begin_training(self) -> None:
        """A ``fit`` starts (``AutoWeightCallback`` calls it on every rank)."""
        self.weighting.begin_training()
        self.forget_skipped()  # an interrupted fit's count is not this one's

    def training_calls(self) -> list[str]:
        """What a loop without ``AutoWeightCallback`` must call for this method to learn ([] if
        nothing), e.g. famo's ``['with paddle.no_grad(): loss.after_update(...) ...']``."""
        return type(self.weighting).training_calls()

    def end_epoch(self) -> None:
        """Close a training epoch (dwa's next weights, stch's nadir point); a collective under
        ``paddle.distributed.launch``. ``AutoWeightCallback`` calls it at every epoch end."""
        if not self._driven():
            self._plain.end_epoch()
        self.weighting.end_epoch()

    def after_update(self, *tensors: paddle.Tensor) -> None:
        """After an optimizer update: the same batch's ``(*outputs, *labels)`` recomputed after
        it, for methods that want them (famo). ``AutoWeightCallback`` does this."""
        self._plain.after_update()
        with paddle.no_grad():
            self.weighting.after_update(self.task_losses(*tensors).detach())

    # ------------------------------------------------------------ reading

    def _named(self, values: np.ndarray | None) -> dict[str, float]:
        if values is None:
            return {}
        values = check_per_task(self.weighting, "weight or sigma", values, len(self.task_names))
        return dict(zip(self.task_names, map(float, values)))  # Python floats, as the docs print them

    def sigmas(self) -> dict[str, float]:
        """σ per task now (after the last update): e^(s/2) for kendall and simple, c for
        liebel, e^(−s/2) for imtl_l (so its weight is 1/σ²); {} for methods without one."""
        return self._named(self.weighting.sigma(used=False))

    def weights(self) -> dict[str, float]:
        """The factor each task's loss gets in the total now, d total / d L_i at the last
        forward's losses, an evaluation's too (rlw: its last draw; gls: 0 for a loss below
        its floor); :meth:`used` is the last training step's."""
        return self._named(self.weighting.weight(used=False))

    def used(self) -> tuple[dict[str, float], dict[str, float]]:
        """``(σ, weights)`` the last training forward used: s before that step's update,
        dwa's weights of that epoch, rlw's draw, gls's gradient at that batch's losses.

        Example::

            model.train_batch([x], [y1, y2])
            loss.used()   # ({'y1': 1.0, 'y2': 1.0}, {'y1': 0.5, 'y2': 0.5}): s before the update
        """
        return self._named(self.weighting.sigma(used=True)), self._named(self.weighting.weight(used=True))

    def last_losses(self) -> dict[str, float]:
        """The raw (unweighted) per-task losses of the last forward; {} before one."""
        last = self.weighting._seen.get("last")
        return {} if last is None else self._named(last.numpy())

    def extra_repr(self) -> str:
        return f"method={self.method}, tasks={self.task_names}"
