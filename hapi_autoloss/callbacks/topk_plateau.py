"""TopKOnPlateau: shrink TopKLoss's k only when an evaluation metric stops improving."""

from __future__ import annotations

import math
import numbers
from typing import Any

from paddle.callbacks import Callback

from .. import _hapi
from .._args import check_count, non_negative
from ..topk import TopKLoss, validate_ratio
from ._plateau_checks import (
    check_monitor,
    check_plateau_fit,
    check_saved_monitor,
    missing_monitor_fix,
    resolve_mode,
    warn_reduced_layers,
)
from ._run import begin_run, loaded

STATE_KEY = "TopKOnPlateau"
MODES = ("auto", "min", "max")


class TopKOnPlateau(Callback):
    """Multiplies the ratio (k/n) of every ``TopKLoss`` by ``factor`` when the monitored
    evaluation metric has not improved for ``patience`` evaluations; shaped like
    ``paddle.callbacks.ReduceLROnPlateau``, acting on k instead of the learning rate.

    A fixed schedule (``TopKScheduler``) shrinks k whatever happens; this one keeps
    training on all examples while they still help the validation metric, and mines
    harder ones only after that stalls. At each ``on_eval_end`` (hapi evaluates every
    ``eval_freq`` epochs), as ReduceLROnPlateau does: a value better than the best by
    more than ``min_delta`` becomes the best and resets the wait; otherwise, outside
    the ``cooldown`` evaluations that follow a reduction, the wait grows, and at
    ``patience`` every layer gets ``ratio = max(ratio·factor, min_ratio)``.

    The dropped fraction of a ranked range (``TopKLoss(drop=...)``, AoRR) is scaled by
    the same factor, so the share of the kept window treated as noise (m/k) stays the
    same and drop stays below ratio; with ``scale_drop=False`` it stays as it is.

    ``topk_ratio`` is put into the training ``logs`` (hapi's progress bar shows it),
    and ``TensorBoardExport`` / ``VisualDLExport`` write ``topk/ratio``. The best
    value, the wait, the cooldown and the ratios are saved by ``model.save`` in
    ``<path>.autoloss`` (``ModelCheckpoint`` and ``BackupAndRestore`` too) and restored
    by ``hapi_autoloss.load_state``; one instance passed to two ``fit`` calls of the same
    model continues. A fit of another ``paddle.Model`` (a notebook cell that builds the
    model again) starts a new run: no best value, no wait, no cooldown, unless
    ``load_state`` gave it a state to go on from. k is each ``TopKLoss``'s own state: a
    ``TopKLoss`` this callback reduced, reused by the new model, keeps its k and warns.
    hapi's ``ModelCheckpoint`` saves at the end of an epoch, before its evaluation, so
    its files hold the state before that evaluation; ``BackupAndRestore``'s include it.

    Errors come at construction for ``monitor='loss'`` (the evaluation loss is the
    TopKLoss at the current k, so it rises at every reduction and k would shrink at
    every evaluation) and for a name ``mode='auto'`` cannot read; and before any
    training step for no ``TopKLoss`` in the loss, a ``band`` rule, a ``TopKScheduler``
    in the same ``fit``, no ``eval_data``, or a ``monitor`` that is not a metric name
    of the model (e.g. ``'acc'`` for ``paddle.metric.Accuracy``; the error names the
    closest one); a key still missing from the first evaluation's logs raises there.

    Args:
        monitor: a metric name of the evaluation logs (default ``'acc'``, from
            ``paddle.metric.Accuracy``); ``'loss'`` is refused.
        factor: the ratio's multiplier at a plateau, in (0, 1).
        patience: evaluations without improvement before a reduction, >= 0.
        verbose: 1 prints each reduction (rank 0), 0 is silent.
        mode: ``'min'``, ``'max'`` or ``'auto'``: ``'max'`` when the lowercased name
            contains acc, precision, recall, auc, f1, iou, map or dice, ``'min'`` when it
            contains err, mse, mae, rmse, mape or loss; a name with both or neither is
            refused (give ``'max'`` or ``'min'``, which take any name).
        min_delta: the least change that counts as an improvement, >= 0.
        cooldown: evaluations after a reduction during which the wait does not grow.
        min_ratio: the ratio is never reduced below it, in (0, 1].
        scale_drop: scale each layer's drop by the same factor.

    Example::

        loss = hapi_autoloss.TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=1.0)
        model.prepare(opt, loss, metrics=[paddle.metric.Accuracy()])
        model.fit(train, eval_data=val, epochs=40,
                  callbacks=[TopKOnPlateau(monitor="acc", factor=0.5, patience=3, min_ratio=0.1)])
    """

    monitor: str
    factor: float
    patience: int
    cooldown: int
    verbose: int
    min_ratio: float
    min_delta: float
    scale_drop: bool
    mode: str
    best: float | None
    wait: int
    cooldown_counter: int
    evaluations: int
    reductions: int

    def __init__(
        self,
        monitor: str = "acc",
        factor: float = 0.5,
        patience: int = 3,
        verbose: int = 1,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_ratio: float = 0.1,
        scale_drop: bool = True,
    ) -> None:
        super().__init__()
        monitor = check_monitor(monitor)
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0.0 < float(factor) < 1.0:
            raise ValueError(
                f"factor must be in (0, 1) (the ratio is multiplied by it), got {factor!r}. Fix: e.g. factor=0.5."
            )
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}. Fix: mode='max' for accuracies, 'min' for errors, or 'auto'.")
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = check_count(patience, "patience", 0, "patience=3 (evaluations)")
        self.cooldown = check_count(cooldown, "cooldown", 0, "cooldown=0 (evaluations)")
        # bool as paddle's ReduceLROnPlateau takes it (int(True) there)
        self.verbose = int(verbose) if isinstance(verbose, bool) else check_count(verbose, "verbose", 0, "verbose=1")
        self.min_ratio = validate_ratio(min_ratio, "min_ratio")
        self.min_delta = non_negative(min_delta, "min_delta", "min_delta=1e-4")
        self.scale_drop = bool(scale_drop)
        self.mode = resolve_mode(monitor, mode)
        self._new_run()
        self._layers: list[TopKLoss] = []
        self._ranges: list[Any] = []  # (ratio, drop) per TopKLoss from a loaded state, not yet set

    @property
    def ratio(self) -> float | None:
        """The first TopKLoss's ratio (None before the first fit finds the layers)."""
        return self._layers[0].ratio if self._layers else None

    # ------------------------------------------------------------ hapi hooks

    def on_train_begin(self, logs: Any = None) -> None:
        _hapi.forget_earlier_fits()  # another model's sigma_/topk_ keys
        before = self._layers if self.reductions else []
        self._layers = list(_hapi.iter_layers(self.model, TopKLoss))
        check_plateau_fit(self, self._layers)  # before any step
        # A new model starts a new run; a state loaded by hapi_autoloss.load_state wins (applied here).
        if begin_run(self, STATE_KEY, self._new_run):
            warn_reduced_layers(self._layers, before)
        ranges, self._ranges = self._ranges, []  # a state given by set_state_dict or load_state
        if ranges and len(ranges) != len(self._layers):
            raise ValueError(
                f"The TopKOnPlateau state holds k for {len(ranges)} TopKLoss layer(s), but this model's "
                f"loss has {len(self._layers)}. Fix: give it the state of a run with the same loss.")
        for layer, (ratio, drop) in zip(self._layers, ranges):
            layer.set_range(ratio, drop)
        _hapi.show_in_progress_bar(self.params, ["topk_ratio"])

    def _new_run(self) -> None:
        """At construction and at another model's fit: no best value, no wait, no cooldown."""
        self.best = None
        self.wait = self.cooldown_counter = self.evaluations = self.reductions = 0

    def on_train_batch_begin(self, step: int, logs: Any = None) -> None:
        if logs is not None and self._layers:
            logs["topk_ratio"] = self._layers[0].ratio

    def on_eval_end(self, logs: Any = None) -> None:
        if not self._layers:  # model.evaluate on its own, outside fit
            return
        value = (logs or {}).get(self.monitor)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is None:
            keys = sorted(k for k in (logs or {}) if k != "batch_size")
            raise ValueError(f"TopKOnPlateau monitors {self.monitor!r}, but the evaluation logs hold {keys}. "
                             f"{missing_monitor_fix(self.monitor, keys)}")
        self.step(float(value))

    def step(self, current: float) -> bool:
        """Take one evaluation's value; True when it reduced the ratio.

        Example::

            plateau.step(0.91)   # what on_eval_end does with logs['acc']
        """
        self.evaluations += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        # A NaN evaluation is never better, and never becomes the best (it would compare False forever).
        better = math.isfinite(current) and (self.best is None or (
            current > self.best + self.min_delta if self.mode == "max" else current < self.best - self.min_delta
        ))
        if better:
            self.best, self.wait = current, 0
            return False
        if self.cooldown_counter > 0:
            return False
        self.wait += 1
        if self.wait < self.patience:
            return False
        self.wait = 0
        reduced = False
        for layer in self._layers:
            old = layer.ratio
            new = max(old * self.factor, self.min_ratio)
            if new < old:
                layer.set_range(new, layer.drop * new / old if self.scale_drop else layer.drop)
                reduced = True
        if reduced:
            self.reductions += 1
            self.cooldown_counter = self.cooldown
            if self.verbose > 0 and _hapi.world()[0] == 0:
                print(f"\nTopKOnPlateau: {self.monitor} has not improved for {self.patience} evaluations; "
                      f"ratio reduced to {self.ratio:.4g} (drop {self._layers[0].drop:.4g}).")  # fmt: skip
        return reduced

    # ------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """The best value, wait, cooldown and counts, and each layer's ratio and drop."""
        return {
            "monitor": self.monitor,
            "best": self.best,
            "wait": int(self.wait),
            "cooldown_counter": int(self.cooldown_counter),
            "evaluations": int(self.evaluations),
            "reductions": int(self.reductions),
            "ranges": list(self._ranges) or [(float(layer.ratio), float(layer.drop)) for layer in self._layers],
        }

    def set_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state (refused if it monitored another key)."""
        watch = check_saved_monitor(state.get("monitor", self.monitor), self.monitor)
        loaded(self)  # the next fit continues from here, even on a new model
        best = state.get("best") if watch else None
        self.best = None if best is None else float(best)
        self.wait = int(state.get("wait", 0)) if watch else 0
        self.cooldown_counter = int(state.get("cooldown_counter", 0))
        self.evaluations = int(state.get("evaluations", 0))
        self.reductions = int(state.get("reductions", 0))
        self._ranges = state.get("ranges") or []  # set on this fit's losses at its train begin
