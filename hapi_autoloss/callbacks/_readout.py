"""What an exporter's train point holds: the tags and values read from the model and
hapi's ``logs``, and the run's configuration text.

:class:`Readout` is built once per fit by ``ScalarExport`` (see ``_scalars.py``).

Example::

    readout = Readout(model)                     # at on_train_begin
    values = readout.train_values(logs, step=7)  # {'train/loss': 0.41, 'autoloss/sigma/seg': 0.93, ...}
"""

from __future__ import annotations

import numbers
import weakref
from typing import Any

from .. import _hapi
from ..topk import TopKLoss
from ..weighting import AutoWeight

# model -> (the batch's 'loss' list, global step, values read): see Readout.train_values.
_SHARED: weakref.WeakKeyDictionary[Any, tuple[Any, int, dict[str, float]]] = weakref.WeakKeyDictionary()


def _topk_layers(model: Any) -> list[Any]:
    return list(_hapi.iter_layers(model, TopKLoss))


def _scalar(value: Any) -> float | None:
    """A logs entry as one float: hapi gives lists (one loss per output), metrics floats."""
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        # Several losses are summed by hapi before the update: log what is optimized.
        parts = [_scalar(v) for v in value]
        return None if any(p is None for p in parts) else float(sum(p for p in parts if p is not None))
    if isinstance(value, numbers.Number):
        return float(value)  # type: ignore[arg-type]
    size = getattr(value, "size", None)
    if size == 1:
        return float(value.reshape(-1)[0]) if hasattr(value, "reshape") else float(value)
    return None


class EvalMean:
    """The evaluation set's mean loss so far, Σ batch loss · batch size / Σ batch size
    (hapi's own ``logs['loss']`` in evaluation is the last batch's alone)."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, logs: Any) -> float | None:
        """Adds one eval batch's ``logs``; returns the mean so far (None before any)."""
        loss, size = _scalar((logs or {}).get("loss")), (logs or {}).get("batch_size")
        if loss is not None and isinstance(size, numbers.Integral) and int(size) > 0:
            self.total += loss * int(size)
            self.count += int(size)
        return self.mean

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


def _autoweight_tags(model: Any) -> list[tuple[AutoWeight, dict[str, tuple[str, str, str]]]]:
    """Per AutoWeight layer, its tags per task; a task name seen twice gets ``_<i>``."""
    out, used = [], set()
    for i, aw in enumerate(_hapi.iter_layers(model, AutoWeight)):
        tags = {}
        for task in aw.task_names:
            key = task if task not in used else f"{task}_{i}"
            used.add(key)
            tags[task] = (f"autoloss/sigma/{key}", f"autoloss/weight/{key}", f"autoloss/loss/{key}")
        out.append((aw, tags))
    return out


class Readout:
    """The train values of one fit: hapi's loss and metrics, every AutoWeight's σ,
    weights and raw losses, every TopKLoss's ratio (and drop), and the learning rate."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.metrics = [m for m in _hapi.metric_names(model) if m != "loss"]
        # Per AutoWeight: {task: (sigma tag, weight tag, loss tag)}.
        self.weighting = _autoweight_tags(model)
        self.topk = _topk_layers(model)
        self.drop_shown: set[int] = set()  # per fit: a new run shows drop from its first step above 0
        # The lr of this batch: read by the optimizer's minimize as it updates (no callback runs
        # between hapi's forward and update), else at its begin and end (see _lr_used).
        self.lr_begin: tuple[float | None, Any] = (None, None)
        self.updates_begin: int | None = None
        self.watching = False

    def train_values(self, logs: dict[str, Any], step: int) -> dict[str, float]:
        """``{tag: value}`` of the train batch that ended at global ``step``."""
        # Two exporters on one model read the same values at the same step: read them
        # once. hapi builds a new 'loss' list for every batch, which marks the batch.
        batch = logs.get("loss")
        cached = _SHARED.get(self.model) if batch is not None else None
        if cached is not None and cached[0] is batch and cached[1] == step:
            return cached[2]
        values = self._read_values(logs)
        if batch is not None:
            _SHARED[self.model] = (batch, step, values)
        return values

    def _read_values(self, logs: dict[str, Any]) -> dict[str, float]:
        values: dict[str, float] = {}
        loss = _scalar(logs.get("loss"))
        if loss is not None:
            values["train/loss"] = loss
        for name in self.metrics:
            value = _scalar(logs.get(name))
            if value is not None:
                values[f"train/{name}"] = value
        # σ and the weights this step's forward used (before its update), as hapi's
        # logs show them; reading syncs the device, so only on written steps.
        for aw, tags in self.weighting:
            for kind, read in enumerate((*aw.used(), aw.last_losses())):
                for task, value in read.items():
                    if task in tags:
                        values[tags[task][kind]] = float(value)
        for i, layer in enumerate(self.topk):
            suffix = "" if i == 0 else f"/{i}"
            ratio = _scalar(getattr(layer, "ratio", None))
            if ratio is not None:
                values[f"topk/ratio{suffix}"] = ratio
            # The dropped fraction (AoRR) once a ranked range is used; then on, so a drop back to 0 shows.
            drop = _scalar(getattr(layer, "drop", None))
            if drop is not None and (drop > 0 or i in self.drop_shown):
                self.drop_shown.add(i)
                values[f"topk/drop{suffix}"] = drop
        lr = self._lr_used()
        if lr is not None:
            values["lr"] = lr
        return values

    def watch_lr(self) -> None:
        """From ``on_train_begin``: have the optimizer keep the lr of each update, whatever the
        callbacks' order (a warmup's ``set_lr`` at batch begin listed after us, paddle's
        ``LRScheduler(by_step=True)`` listed before us). The wrapper is put on once per
        optimizer and stays (a call and a read per update; a forward hook on the network took
        Paddle's layers off their hook-free path, and stayed after a fit that raised)."""
        opt = _hapi.optimizer_of(self.model)
        self.watching = opt is not None and _hapi.keep_update_lr(opt)

    def unwatch_lr(self) -> None:
        self.watching = False

    def batch_begins(self) -> None:
        """At ``on_train_batch_begin``: the updates so far, and the lr now."""
        opt = _hapi.optimizer_of(self.model)
        self.updates_begin = _hapi.update_lr(opt)[0]
        self.lr_begin = (self._lr(), self._schedule_count())

    def _lr_used(self) -> float | None:
        """The lr of this batch's update, as the optimizer kept it; with no update in the batch
        (accumulation) or none kept, the lr at batch end unless the schedule stepped since its
        begin (then the begin's: the step came after the forward)."""
        count, lr = _hapi.update_lr(_hapi.optimizer_of(self.model))
        if self.watching and lr is not None and count != self.updates_begin:
            return lr
        begin, count = self.lr_begin
        if begin is not None and count is not None and self._schedule_count() != count:
            return begin
        return self._lr()

    def _schedule_count(self) -> Any:
        return _hapi.schedule_count(_hapi.optimizer_of(self.model))

    def _lr(self) -> float | None:
        return _hapi.current_lr(_hapi.optimizer_of(self.model))

    def config_text(self, exporter: str, every_n_steps: int, start_step: int) -> str:
        """Markdown: the run's settings, the AutoWeight and TopKLoss configuration."""
        nranks = _hapi.world()[1]
        opt = _hapi.optimizer_of(self.model)
        rows = [
            ("exporter", exporter),
            ("every_n_steps", str(every_n_steps)),
            ("start step", str(start_step)),
            ("ranks", f"{nranks} (rank 0 writes)"),
            ("optimizer", type(opt).__name__ if opt is not None else "none"),
        ]
        for i, (aw, _) in enumerate(self.weighting):
            rows.append((f"AutoWeight {i}", aw.extra_repr()))
        for i, layer in enumerate(self.topk):
            extra = layer.extra_repr() if hasattr(layer, "extra_repr") else ""
            rows.append((f"TopKLoss {i}", extra or type(layer).__name__))
        table = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in rows)
        loss = _hapi.loss_layer(self.model)
        tree = "\n".join("    " + line for line in repr(loss).splitlines()) if loss is not None else ""
        return f"| setting | value |\n|---|---|\n{table}\n\nLoss:\n\n{tree}\n"
