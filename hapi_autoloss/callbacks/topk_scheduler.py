"""TopKScheduler: anneals the ratio of every TopKLoss during ``model.fit``."""

from __future__ import annotations

from typing import Any

from paddle.callbacks import Callback

from .. import _hapi
from .._args import check_count
from ..topk import TopKLoss
from ._checks import check_epoch_had_batches, check_has_batches
from ._epoch_close import EpochCloser
from ._run import begin_run, loaded
from ._topk_schedule import BY_CHOICES, RangeSchedule

__all__ = ["BY_CHOICES", "STATE_KEY", "TopKScheduler"]

STATE_KEY = "TopKScheduler"


class TopKScheduler(RangeSchedule, Callback):
    """Anneals ``TopKLoss.ratio`` from ``start`` to ``end`` over a ``model.fit`` run.

    Training on every example first and on the hardest ones later (k from 100% to
    10%) avoids mining "hard" examples that are only hard because the network has
    not learned anything yet.

    Positions are 0-based epochs (``by="epoch"``) or global steps, i.e. batches
    counted across epochs (``by="step"``). With ``T = total`` units,
    ``W = warmup`` and ``a = max(W − 1, 0)``, unit ``t`` trains at::

        p = 0 if t < W else clip((t − a) / (T − 1 − a), 0, 1)
        ratio = schedule(p, start, end)

    so the first ``max(W, 1)`` units train at ``start``, unit ``T − 1`` at
    ``end``, and any later unit holds ``end``. A run with a single unit
    (``epochs=1``, ``by="epoch"``) trains at ``end``. Schedules (see
    :mod:`hapi_autoloss.schedules`): ``"linear"``, ``"cosine"``, ``"exp"``
    (geometric) and ``"step"`` (``drops`` equal drops).

    ``total=None`` takes the run's length from ``fit``: its epochs, or epochs ×
    steps per epoch (``num_iters`` when given). To reach ``end`` after a fixed
    number of steps and hold it, as TF DeepLab's ``hard_example_mining_step``,
    use :meth:`deeplab`.

    Every ``TopKLoss`` in the model's loss is set, nested inside ``AutoWeight``
    too; evaluation uses the current ratio as well. ``topk_ratio`` (the value the
    batch trains with) is put into ``logs`` and shown by hapi's progress bar.

    The position and the resolved total are saved by ``model.save(path)`` (hapi's
    ``ModelCheckpoint`` too) in ``<path>.autoloss`` and restored by
    ``hapi_autoloss.load_state``. hapi's ``fit`` has no initial epoch, so a resumed
    run calls ``fit(epochs=remaining)`` and the schedule continues where it stopped,
    over the original total. Likewise one instance passed to two ``fit`` calls of the
    same model continues. A fit of another ``paddle.Model`` (a notebook cell that builds
    the model again) starts a new run: position 0, ``total`` from that fit, every
    ``TopKLoss`` set to ``start``, unless ``load_state`` gave it a state to go on from.
    The epoch is counted before any callback's ``on_epoch_end``, so a ``ModelCheckpoint``
    holds it wherever it is listed.

    With ``drop_end`` (and ``drop_start``, default 0) the dropped fraction of a ranked
    range (``TopKLoss(drop=...)``, AoRR) follows the same schedule and progress, e.g.
    ``TopKScheduler(1.0, 0.2, drop_end=0.1)`` ends averaging ranks 10%..20%; drop must
    stay below the ratio at every unit (checked before training). ``topk_drop`` is then
    logged too. Without them the layers' drop is left as it is.

    Args:
        start: ratio of the first unit, in (0, 1].
        end: ratio from unit ``total − 1`` on, in (0, start].
        schedule: ``"linear"``, ``"cosine"``, ``"exp"`` or ``"step"``.
        by: ``"epoch"`` or ``"step"``.
        warmup: units (epochs or steps) trained at ``start`` before annealing;
            >= 0 (0 and 1 are the same).
        total: schedule length in units (counted from the model's first fit); None =
            the whole fit run.
        drops: number of drops of the ``"step"`` schedule; >= 1.
        drop_start: dropped fraction of the first unit, in [0, 1); default 0 when
            ``drop_end`` is given.
        drop_end: dropped fraction from unit ``total − 1`` on; None with
            ``drop_start`` given: a constant drop.

    Example::

        loss = hapi_autoloss.TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"))
        model.prepare(optimizer, loss)
        model.fit(data, epochs=10, callbacks=[TopKScheduler(start=1.0, end=0.1)])
        # epochs 0..9 train with ratio 1.0, 0.9, 0.8, ..., 0.1
    """

    def __init__(
        self,
        start: float = 1.0,
        end: float = 0.1,
        schedule: str = "linear",
        by: str = "epoch",
        warmup: int = 0,
        total: int | None = None,
        drops: int = 3,
        drop_start: float | None = None,
        drop_end: float | None = None,
    ) -> None:
        Callback.__init__(self)
        RangeSchedule.__init__(self, start, end, schedule, by, warmup, total, drops, drop_start, drop_end)
        self.epochs_done = 0  # absolute, across fit calls and resumes
        self.steps_done = 0
        self.ratio = self.start
        self.drop = self.drop_start
        self._layers: list[TopKLoss] = []
        self._epoch_start, self._closer = 0, EpochCloser()

    @classmethod
    def deeplab(cls, top_k: float = 0.2, hard_example_mining_step: int = 100_000) -> TopKScheduler:
        """TF DeepLab's schedule: linear from 1.0 at step 0 to ``top_k`` at step
        ``hard_example_mining_step``, constant after.

        Example::

            TopKScheduler.deeplab(top_k=0.2, hard_example_mining_step=100000)
        """
        steps = check_count(hard_example_mining_step, "hard_example_mining_step", 1, "100000")
        return cls(start=1.0, end=top_k, schedule="linear", by="step", total=steps + 1)

    # ------------------------------------------------------------ position

    @property
    def position(self) -> int:
        return self.epochs_done if self.by == "epoch" else self.steps_done

    def _apply(self) -> None:
        self.ratio = self.ratio_at(self.position)
        self.drop = self.drop_at(self.position)
        for layer in self._layers:
            layer.set_range(self.ratio, self.drop)

    def _resolve_total(self) -> int:
        params = self.params or {}
        epochs = params.get("epochs")
        if self.by == "epoch":
            return int(epochs) + self.epochs_done
        num_iters = getattr(self.model, "num_iters", None)
        if isinstance(num_iters, int) and num_iters > 0:
            return num_iters + self.steps_done
        steps = params.get("steps")
        if steps is None:
            raise ValueError(
                "TopKScheduler(by='step') needs the number of training steps, but the training "
                "data has no length (an iterable dataset), so hapi does not know the steps per "
                "epoch. Fix: pass total=<number of steps>, or use by='epoch'."
            )
        return int(epochs) * int(steps) + self.steps_done

    # ------------------------------------------------------------ hapi hooks

    def on_train_begin(self, logs: Any = None) -> None:
        check_has_batches(self.params)
        _hapi.forget_earlier_fits()  # another model's sigma_/topk_ keys
        self._layers = list(_hapi.iter_layers(self.model, TopKLoss))
        if not self._layers:
            loss = _hapi.prepared_loss(self.model)
            raise ValueError(
                f"TopKScheduler found no TopKLoss in the model's loss ({type(loss).__name__}), so "
                "it has nothing to anneal. Fix: prepare the model with a TopKLoss, e.g. "
                "model.prepare(opt, hapi_autoloss.TopKLoss(paddle.nn.CrossEntropyLoss("
                "reduction='none'))) or inside AutoWeight, or drop the callback."
            )
        if any(isinstance(c, TopKScheduler) for c in _hapi.others_in_fit(self)):
            raise ValueError(
                "Two TopKSchedulers in this fit both set the ratio at every unit, so the last one would "
                "silently win. Fix: pass one TopKScheduler."
            )
        # A new model starts a new run; a state loaded by hapi_autoloss.load_state wins (applied here).
        begin_run(self, STATE_KEY, self._new_run)  # registering also makes model.save write it
        if self.total is None:
            self.total = self._resolve_total()
        self._check_warmup(self.total)
        self._check_layers(self._layers)
        _hapi.show_in_progress_bar(self.params, ["topk_ratio"] + (["topk_drop"] if self.drop is not None else []))
        self._closer.train_begins(self, self._end_epoch)  # counted before a ModelCheckpoint listed first saves
        self._apply()

    def _new_run(self) -> None:
        """Another model's fit: start over, with a total taken from this fit."""
        self.epochs_done = self.steps_done = 0
        if not self._explicit_total:
            self.total = None
        self.ratio, self.drop = self.start, self.drop_start

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch_start = self.steps_done
        self._closer.epoch_begins()
        if self.by == "epoch":
            self._apply()

    def on_train_batch_begin(self, step: int, logs: Any = None) -> None:
        if self.by == "step":
            self._apply()
        if logs is not None:
            logs["topk_ratio"] = self.ratio
            if self.drop is not None:
                logs["topk_drop"] = self.drop

    def on_train_batch_end(self, step: int, logs: Any = None) -> None:
        self.steps_done += 1

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self._closer.epoch_ends(epoch, logs, self._end_epoch)

    def _end_epoch(self, epoch: int, logs: Any = None) -> None:
        check_epoch_had_batches(epoch, self.steps_done - self._epoch_start)
        self.epochs_done += 1

    # ------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """The position and resolved schedule length, as plain Python numbers."""
        return {
            "by": self.by,
            "epochs_done": int(self.epochs_done),
            "steps_done": int(self.steps_done),
            "total": None if self.total is None else int(self.total),
            "ratio": float(self.ratio),
            "drop": None if self.drop is None else float(self.drop),
        }

    def set_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position. An explicit ``total=`` given to this
        instance wins over the saved one."""
        by = state.get("by", self.by)
        if by != self.by:
            raise ValueError(
                f"The saved TopKScheduler counted by={by!r}, this one counts by={self.by!r}, so "
                "its position would be read in the wrong unit. Fix: build the scheduler with "
                f"by={by!r}, as in the run that saved it."
            )
        loaded(self)  # the next fit continues from here, even on a new model
        self.epochs_done = int(state["epochs_done"])
        self.steps_done = int(state["steps_done"])
        if not self._explicit_total and state.get("total") is not None:
            self.total = int(state["total"])
        # k follows at the next train begin, on that fit's losses (not the last model's)
