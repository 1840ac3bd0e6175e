"""AutoWeightCallback: lets ``model.fit`` train the weights inside ``AutoWeight``."""

from __future__ import annotations

import math
import warnings
from typing import Any

import paddle
from paddle.callbacks import Callback

from .. import _hapi
from .._args import positive
from ..weighting import AutoWeight
from ._checks import check_epoch_had_batches, check_has_batches
from ._epoch_close import EpochCloser
from ._negative import refuse_negative

NONFINITE_POLICIES = ("raise", "skip")


class AutoWeightCallback(Callback):
    """Trains the loss's own parameters (σ) with the model's optimizer.

    At train begin it adds every trainable parameter found in the loss to
    ``model``'s optimizer (weight decay 0, learning rate × ``lr_scale``), clears
    their gradients after each real update (``accumulate_grad_batches`` included),
    averages them over ranks under ``paddle.distributed.launch``, and saves them
    with every ``model.save`` (hapi's ``ModelCheckpoint`` too). A second ``fit``
    adds nothing twice. At each epoch end it hands ``dwa`` its epoch averages.

    It puts ``sigma_<task>`` and ``weight_<task>`` into ``logs``, so hapi's
    progress line shows them: the values that step's forward used (σ before the
    step's update; rlw's draw; dwa's epoch weights; for gls d total / d L_i at the
    step's losses), the same numbers the exporters and ``TqdmProgressBar`` show.
    ``loss.used()`` returns them; ``loss.sigmas()`` is one update further. Reading
    them costs a device read, so they go into ``logs`` on the steps a reader reads
    them: those hapi's progress line prints (every ``log_freq``-th), every step
    while a ``TqdmProgressBar`` is shown or any callback it does not know is listed
    (one of yours may read ``logs`` at any step), and at each epoch's end, before
    any callback's ``on_epoch_end``.

    A non-finite loss never reaches the weights: before each update the total
    loss and the loss parameters' gradients are read (a few floats, no device
    op; Paddle 3.3.1's dygraph optimizers read AMP's ``found_inf`` on the host
    too). With ``on_nonfinite="raise"`` a ``FloatingPointError`` names the
    task, the step and the value, and nothing is updated by that step. With
    ``"skip"`` the step's update is dropped and ``nonfinite_skipped`` in
    ``logs`` counts the skips.

    It closes each epoch (dwa's averages) before any callback's ``on_epoch_end``, so a
    ``ModelCheckpoint`` holds that epoch wherever it is listed.

    Args:
        lr_scale: multiplies the optimizer's learning rate for the loss's
            parameters; > 0.
        on_nonfinite: ``"raise"`` (default) or ``"skip"``.
        show_in_progress_bar: show σ and the weights on hapi's progress line and
            ``TqdmProgressBar`` (they are put into ``logs`` either way).

    Example::

        model.prepare(paddle.optimizer.Adam(1e-3, parameters=model.parameters()),
                      AutoWeight([mse, mse], method="kendall",
                                 task_types=["regression", "regression"]))
        model.fit(train_data, epochs=20, callbacks=[AutoWeightCallback()])
    """

    def __init__(
        self,
        lr_scale: float = 1.0,
        on_nonfinite: str = "raise",
        show_in_progress_bar: bool = True,
    ) -> None:
        super().__init__()
        lr_scale = positive(lr_scale, "lr_scale", "lr_scale=1.0")
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"Unknown on_nonfinite {on_nonfinite!r}. Fix: use 'raise' or 'skip'."
            )
        self.lr_scale = float(lr_scale)
        self.on_nonfinite = on_nonfinite
        self.show_in_progress_bar = show_in_progress_bar
        self.skipped = 0
        self._weighting: list[AutoWeight] = []
        self._epoch = 0
        self._step = 0
        self._batches, self._closer = 0, EpochCloser()
        self._skipped_before = 0
        self._logs: dict[str, Any] | None = None
        self._wanting: list[AutoWeight] = []
        self._attached_to: Any = None  # the optimizer attach prepared
        # Who reads σ from a step's logs (see _plan_logs); _stale: a step's values were not put in.
        self._fill = False
        self._every_step = True
        self._lines: list[Any] = []
        self._bars: list[Any] = []
        self._stale = False

    def on_train_begin(self, logs: Any = None) -> None:
        check_has_batches(self.params)
        _hapi.forget_earlier_fits()  # another model's sigma_/topk_ keys
        if any(isinstance(c, AutoWeightCallback) for c in _hapi.others_in_fit(self)):
            raise ValueError(
                "Two AutoWeightCallbacks in this fit would both end each epoch of the loss (stch would "
                "count 2 epochs, dwa lose its averages) and both put σ into the logs. Fix: pass one."
            )
        params = _hapi.attach(self.model, lr_scale=self.lr_scale)  # the policy: autoloss_nonfinite_policy
        self._attached_to = _hapi.optimizer_of(self.model)
        if self._attached_to is not None:  # a fit interrupted mid-accumulation left its gradients: not this fit's
            self._attached_to.clear_grad()
        self._weighting = list(_hapi.iter_layers(self.model, AutoWeight))
        if not self._weighting and not params:
            warnings.warn(
                "AutoWeightCallback found no AutoWeight and no learnable parameter in the "
                "model's loss, so it has nothing to do. Fix: pass loss=AutoWeight(...) to "
                "model.prepare, or drop the callback.",
                stacklevel=2,
            )
        for aw in self._weighting:
            aw.begin_training()  # every rank: forget a partial epoch, agree on random streams
        self._wanting = [aw for aw in self._weighting if aw.weighting.wants_losses_after_update]
        if self.show_in_progress_bar and self._weighting:
            _hapi.show_in_progress_bar(self.params, list(self._values()))
        self._plan_logs()
        self._closer.train_begins(self, self._close_epoch)  # before a ModelCheckpoint listed first saves it
        # Right after each step, before hapi's bar reads logs at on_train_batch_end.
        _hapi.after_train_batch(self.model, "AutoWeightCallback", self._after_step)

    def _plan_logs(self) -> None:
        """Find who reads σ and the weights from a step's logs in this fit."""
        from .backup import BackupAndRestore
        from .progress import TqdmProgressBar
        from .tensorboard import TensorBoardExport
        from .topk_plateau import TopKOnPlateau
        from .topk_scheduler import TopKScheduler
        from .visualdl import VisualDLExport

        self._fill = bool(self._weighting)
        self._every_step, self._lines, self._bars, self._stale = True, [], [], False
        callbacks = _hapi.callback_list_of(self)
        if not self._fill or callbacks is None:  # not inside hapi's fit: every step, as a reader may be anywhere
            return
        # Exact types: a subclass may read logs. The exporters read used() themselves, on the steps they write.
        silent = (*_hapi.SILENT, AutoWeightCallback, TopKScheduler, TopKOnPlateau, BackupAndRestore,
                  TensorBoardExport, VisualDLExport)
        unknown = False
        for cb in callbacks.callbacks:
            if _hapi.is_progbar(cb):
                if _hapi.progbar_on(cb):
                    self._lines.append(cb)
            elif type(cb) is TqdmProgressBar:
                self._bars.append(cb)
            elif type(cb) not in silent:
                unknown = True
        self._every_step = unknown

    def _read_now(self) -> bool:
        """Whether a callback reads this step's logs at its on_train_batch_end."""
        return (
            self._every_step
            or any(bar.is_open for bar in self._bars)  # copies every step while its bar is open
            or any(_hapi.progbar_prints(line) for line in self._lines)
        )

    def _close_epoch(self, epoch: int, logs: Any) -> None:
        """Epoch end, before any callback's (once, ``_epoch_close``): the last step's values, if that
        step did not put them in, then the epoch closed (dwa's averages, stch's count)."""
        if self._stale and logs is not None:
            logs.update(self._values())
        self._stale = False
        check_epoch_had_batches(epoch, self._batches)
        for aw in self._weighting:
            aw.end_epoch()  # dwa's next weights come from this epoch's average losses

    def _values(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for aw in self._weighting:
            sigmas, weights = aw.used()
            out.update({f"sigma_{k}": v for k, v in sigmas.items()})
            out.update({f"weight_{k}": v for k, v in weights.items()})
        return out

    def _after_step(self, inputs: Any, labels: Any = None, update: bool = True) -> None:
        if self._wanting and update and self.skipped == self._skipped_before:
            tensors = _hapi.forward_again(self.model, inputs, labels)  # famo: the same batch after the step
            for aw in self._wanting:
                aw.after_update(*tensors)
        if self._logs is not None and self._fill:
            self._stale = not self._read_now()
            if not self._stale:
                self._logs.update(self._values())

    def autoloss_nonfinite_policy(self, loss: paddle.Tensor, here: bool) -> None:
        """Called by the check before an update of the fit that lists this callback (``_hapi/policy.py``)."""
        several = len(self._weighting) > 1  # say which AutoWeight, by its attribute name: task names may repeat
        root = _hapi.loss_layer(self.model)
        names = {id(layer): name for name, layer in root.named_sublayers()} if several and root is not None else {}

        def tagged(aw: AutoWeight, text: str) -> str:
            return f"AutoWeight '{names.get(id(aw), 'loss')}': {text}" if several and text else text

        refuse_negative(self._weighting, tagged, self._epoch, self._step)  # a loss < 0 on any rank: ValueError
        bad = [tagged(aw, text) for aw in self._weighting for text in [aw.nonfinite_now()] if text]
        causes = [(kind, tagged(aw, text)) for aw in self._weighting for kind, text in [aw.nonfinite_cause()] if text]
        what, fix = "loss", "check that task's data and learning rate"
        if not here:
            where = "on another rank"
        elif bad:
            where = ", ".join(bad)
        elif causes:  # a gradient-level method skipped a forward: its gradient, or an earlier micro-batch
            what, where = causes[0][0], ", ".join(text for _, text in causes)
            if what == "gradient":
                fix = ("look on the named task's path for an operation whose derivative is infinite where "
                       "its value is finite (sqrt(x) or x**0.5 at x = 0, asin/acos at ±1)")
        elif not math.isfinite(float(loss)):
            where = f"the total loss = {float(loss)}"
        else:
            what, where = "gradient", "from a batch accumulated since the last update"
        if self.on_nonfinite == "raise":
            raise FloatingPointError(
                f"Non-finite {what} at epoch {self._epoch}, step {self._step}: {where}. No "
                f"parameter, σ or optimizer moment was updated by this step. Fix: {fix}, or pass "
                "AutoWeightCallback(on_nonfinite='skip') to skip such steps."
            )
        self.skipped += 1

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch = epoch
        self._batches = 0
        self._closer.epoch_begins()

    def on_train_batch_begin(self, step: int, logs: Any = None) -> None:
        self._step = step
        if _hapi.optimizer_of(self.model) is not self._attached_to:  # model.prepare(new_optimizer) mid-fit
            _hapi.attach(self.model, lr_scale=self.lr_scale)  # σ joins it, and its updates are checked
            self._attached_to = _hapi.optimizer_of(self.model)
        self._logs = logs  # hapi passes the same dict to on_train_batch_end
        self._skipped_before = self.skipped

    def on_train_batch_end(self, step: int, logs: Any = None) -> None:
        self._batches += 1
        self._logs = None
        if logs is not None and self.on_nonfinite == "skip":
            logs["nonfinite_skipped"] = self.skipped

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self._closer.epoch_ends(epoch, logs, self._close_epoch)  # done already inside hapi's fit
