"""Weighting: the base class of every loss-weighting method (one class per file).

Modelled on LibMTL's ``weighting/`` package (an abstract class and one short file per
method), as a ``paddle.nn.Layer`` so that a method's parameters and buffers are saved
with the loss and trained by the model's optimizer.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import paddle

from . import _shown
from ._buffers import prepare_load

# name -> class; filled by Weighting.__init_subclass__ when a method's module is imported.
METHODS: dict[str, type[Weighting]] = {}


class Weighting(paddle.nn.Layer):
    """Turns the per-task losses ``L`` (a float32 tensor of shape [n]) into one total.

    Write a method by subclassing it, giving it a ``name`` and implementing
    :meth:`combine`; every other hook has a default. ``AutoWeight(losses,
    method=MyMethod())`` takes an instance; with a ``name``, importing the class also
    registers it, so ``method="my_name"`` works too.

    Hooks, in the order a training run calls them:

    - :meth:`bind` once, with the task names and types, before anything else: create
      per-task parameters (trained by ``AutoWeightCallback``) and buffers (saved).
    - :meth:`begin_training` at each ``fit``'s start (every rank calls it).
    - :meth:`observe` at each training forward, with the detached losses, before
      :meth:`combine`: running sums, random draws.
    - :meth:`combine` at every forward, training or evaluation: no side effects.
    - :meth:`after_update` after each optimizer update, with the same batch's losses
      recomputed after it (only if ``wants_losses_after_update``; costs a forward).
    - :meth:`end_epoch` at each training epoch's end (every rank calls it).
    - :meth:`sigma` / :meth:`weight` for display, :meth:`checkpoint_state` /
      :meth:`set_checkpoint_state` for Python-side state that buffers cannot hold.
    - ``positive_losses``: why the method needs every task loss ≥ 0, e.g. "takes log L" ("" when
      any sign works). Inside ``model.fit`` with ``AutoWeightCallback``, a step with a task loss below
      ``-NEGATIVE_TOLERANCE`` (1e-4, absolute: float32 rounding of a loss >= 0 passes) is then
      refused before any update, on every rank, with a ValueError naming the task and this reason.
    - :meth:`state_loaded` after ``AutoWeight.set_state_dict`` or ``load_state`` set the
      buffers: refresh host copies of them. State in buffers is saved by
      ``loss.state_dict()``, so a plain loop resumes it; a buffer whose size is known only at
      the first step is registered empty, and it and those named in ``layout_buffers`` take the
      saved shape on loading.

    Example (a complete method: weights proportional to each loss's inverse)::

        class InverseLoss(Weighting):
            name = "inverse"

            def combine(self, losses):
                w = 1.0 / losses.detach().clip(min=1e-8)
                return (w / w.sum() * losses).sum()

        loss = AutoWeight([ce, mse], method=InverseLoss())
    """

    name: ClassVar[str] = ""
    wants_losses_after_update: ClassVar[bool] = False
    # buffers that training steps change and a resume must restore (rlw's, pcgrad's stream)
    keeps_step_state: ClassVar[bool] = False
    # {buffer: the dimension that follows what is trained} (db_mtl's columns): loading gives them the
    # saved size along it, the other dimensions (one row per task) must agree
    layout_buffers: ClassVar[dict[str, int]] = {}
    # Why the rule needs every task loss >= 0 ("takes log L"), "" when any sign works: a fit with
    # AutoWeightCallback refuses a step with a negative task loss, before any update, naming this.
    positive_losses: ClassVar[str] = ""
    # For users of LibMTL: its name of the method (its --weighting), a note on how the two differ,
    # its option names {LibMTL's: ours}, and its options we lack {LibMTL's: why}. The errors for
    # method="UW", calpha=0.4... name ours instead (one name per option: no silent aliases).
    libmtl_name: ClassVar[str] = ""
    libmtl_note: ClassVar[str] = ""
    libmtl_options: ClassVar[dict[str, str]] = {}
    libmtl_lacks: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            known = METHODS.get(name)
            if known is not None and known.__module__.startswith(__package__ or "") and not \
                    cls.__module__.startswith(__package__ or ""):
                warnings.warn(
                    f"{cls.__name__} takes the name {name!r} of the built-in {known.__name__}, so "
                    f"method={name!r} now means {cls.__name__}. Fix: give your method another name.",
                    stacklevel=2,
                )
            METHODS[name] = cls

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[str] = []
        self.task_types: list[str | None] = []
        # Last losses and scratch tensors. A dict, because a Tensor attribute of a Layer
        # silently becomes a buffer (copied on every assignment).
        self._seen: dict[str, paddle.Tensor] = {}
        # a default-shown method's parameters at the last training step: (parameter, its copy)
        self._seen_params: dict[str, list[tuple[paddle.Tensor, paddle.Tensor]]] = {}

    # ------------------------------------------------------------ hooks

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        """Called once by ``AutoWeight`` with the task names and types (None where not given)."""
        self.tasks, self.task_types = list(tasks), list(task_types)

    @property
    def n(self) -> int:
        return len(self.tasks)

    def begin_training(self) -> None:
        """A ``fit`` starts: forget an epoch that did not end (a fit that raised)."""

    def observe(self, losses: paddle.Tensor, batch_size: int = 1) -> None:
        """A training forward's detached losses (and its batch size), before :meth:`combine`."""

    def combine(self, losses: paddle.Tensor) -> paddle.Tensor:
        """The total, a 0-d float32 tensor, from the per-task losses (shape [n])."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement combine(losses). Fix: return the weighted "
            "total, e.g. (weights * losses).sum()."
        )

    def after_update(self, losses_after: paddle.Tensor) -> None:
        """After an optimizer update: the same batch's losses, recomputed after it."""

    def end_epoch(self) -> None:
        """A training epoch ended."""

    def sigma(self, used: bool) -> np.ndarray | None:
        """σ per task (float64) for display, or None if the method has none. ``used``:
        the values the last training forward used, else the current ones."""
        return None

    def weight(self, used: bool) -> np.ndarray:
        """The factor each task's loss gets, d total / d L_i (float64), at the last training
        forward's losses and parameters (``used``) or the last forward's. By default from autograd, so a
        method that is not a weighted sum is shown right too."""
        return _shown.autograd_weight(self, used)

    def checkpoint_state(self) -> dict[str, Any]:
        """Python-side state for checkpoints (tensors belong in buffers)."""
        return {}

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` returned."""

    def state_loaded(self) -> None:
        """The buffers were set from a state dict: refresh any host copy of them."""

    def set_state_dict(self, state_dict: dict[str, Any], use_structured_name: bool = True) -> Any:
        """``paddle.nn.Layer.set_state_dict``, plus buffers sized at the first step (:meth:`state_loaded`)."""
        if use_structured_name:
            prepare_load(self, state_dict)
        result = super().set_state_dict(state_dict, use_structured_name)
        self.state_loaded()
        return result

    # ------------------------------------------------------------ used by AutoWeight

    @property
    def needs_callback(self) -> bool:
        """Whether training needs ``AutoWeightCallback``: it learns, or has epoch or update hooks."""
        return any(not p.stop_gradient for p in self.parameters()) or type(self).has_training_hooks()

    @property
    def callback_reason(self) -> str:
        """Why training needs ``AutoWeightCallback``: the error's reason when it is missing."""
        return ("learns during training, but paddle.Model's optimizer does not update its parameters and hapi "
                "never clears their gradients (nor calls the method's epoch or update hooks), so its weights "
                "would stay frozen or drift")

    @classmethod
    def has_rep_mode(cls) -> bool:
        """Whether ``AutoWeight(rep_grad=True)`` can run the method (gradient-level ones only)."""
        return False

    @classmethod
    def has_training_hooks(cls) -> bool:
        """Whether the method needs epoch ends or a forward after each update (hooks
        ``AutoWeightCallback`` calls, a plain loop must call itself: :meth:`training_hooks`)."""
        return bool(cls.training_hooks())

    @classmethod
    def training_hooks(cls) -> list[str]:
        """The hooks a trainer must call for this method to learn: ``"end_epoch"`` (it overrides
        :meth:`end_epoch`) and ``"after_update"`` (``wants_losses_after_update``); [] if none."""
        return ((["end_epoch"] if cls.end_epoch is not Weighting.end_epoch else [])
                + (["after_update"] if cls.wants_losses_after_update else []))

    @classmethod
    def training_calls(cls) -> list[str]:
        """What a loop without ``AutoWeightCallback`` must call on the ``AutoWeight`` for this
        method to learn, as code to show in messages and docs; [] if nothing."""
        calls = []
        hooks = cls.training_hooks()
        if "end_epoch" in hooks:
            calls.append("loss.end_epoch() after each epoch")
        if "after_update" in hooks:
            calls.append("with paddle.no_grad(): loss.after_update(*net(x), *labels) after each "
                         "optimizer step (the same batch again)")
        return calls

    def record(self, losses: paddle.Tensor, training: bool, batch_size: int = 1) -> None:
        """Keep the detached losses for display, and let a training forward be observed."""
        self._seen["last"] = losses
        if training:
            self._seen["train_last"] = losses
            if type(self).weight is Weighting.weight:  # shown at the step's parameters (default weight())
                _shown.keep_step_parameters(self)
            self.observe(losses, batch_size)

    def task_parameter(self, start: float = 0.0) -> paddle.Tensor:
        """A trainable float32 [n] parameter (one value per task) starting at ``start``,
        without weight decay: hapi's optimizer must not pull it towards 0.

        Example::

            self.s = self.task_parameter(0.0)   # in bind(), after super().bind(...)
        """
        return self.create_parameter(
            shape=[self.n],
            dtype="float32",
            attr=paddle.ParamAttr(regularizer=paddle.regularizer.L2Decay(0.0)),
            default_initializer=paddle.nn.initializer.Constant(start),
        )

    def const(self, key: str, values: list[float]) -> paddle.Tensor:
        """A constant float32 tensor made once, not a host-to-device copy every step."""
        if key not in self._seen:
            self._seen[key] = paddle.to_tensor(values, dtype="float32")
        return self._seen[key]

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}"
