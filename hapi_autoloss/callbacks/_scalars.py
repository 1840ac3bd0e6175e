"""What the log exporters write, at which step, on which rank, and when it reaches disk.

``TensorBoardExport`` and ``VisualDLExport`` share everything here; each only says
how to open its file and how to append records to it (:class:`ScalarFile`).

Design decisions (the issue was silent on them):

- **What a train point shows**: the σ and task weights that step's own forward
  pass used, i.e. σ *before* that step's update (``AutoWeight.used()``), the same
  values hapi's progress line and ``TqdmProgressBar`` show for that step (put into
  ``logs`` by ``AutoWeightCallback``). ``autoloss/loss/<task>`` is that forward's
  raw loss. After the last step, ``AutoWeight.sigmas()`` is one update further.
- **eval/loss** = the mean over the whole evaluation set, each batch's loss
  weighted by its size (hapi's own logs at eval end carry only the last batch's
  loss). Under the launcher it is rank 0's share of the set. Metrics (``eval/acc``...)
  are hapi's, accumulated over the set by the Metric.
- **An epoch without a train batch** (empty data, ``drop_last=True`` with a batch
  larger than the data) raises a ``ValueError`` saying so, at train begin when
  the loader's length is known, else at that epoch's end.
- **Step** = the global train step: the number of train batches done since the
  very first run, this one included, so the first point is at step 1. It is
  saved with ``model.save`` and restored by ``hapi_autoloss.load_state``, so it
  carries on after a resume. Eval points go at the step they were run after.
- **Durability**: every written step is appended to the file and flushed to the
  operating system before training goes on (about a microsecond: the writers are
  synchronous and write one buffer per step; there is no background thread or
  queue to drain). An exception, Ctrl-C or ``kill -9`` therefore loses nothing
  logged before it. ``fsync`` (milliseconds) runs only when the file is closed,
  at train end or exit: an operating-system crash can cost the points since.
- **One folder holds one run**. A fresh run (step 0) hides an earlier run's
  points in the same folder; a resumed run replaces the points after its
  checkpoint's step instead of duplicating them (TensorBoard: a purge marker;
  VisualDL: the new file starts with the kept points copied forward, see
  ``visualdl.py``). Use one folder per experiment to compare runs.
"""

from __future__ import annotations

import atexit
import math
import numbers
import os
import tempfile
import time
import warnings
import weakref
from typing import IO, Any, Protocol

from paddle.callbacks import Callback

from .. import _hapi
from ..topk import TopKLoss
from ..weighting import AutoWeight
from ._checks import check_epoch_had_batches, check_has_batches, local_folder

TEXT_TAG = "autoloss/config"
# model -> (the batch's 'loss' list, global step, values read): see _train_values.
_SHARED: weakref.WeakKeyDictionary[Any, tuple[Any, int, dict[str, float]]] = weakref.WeakKeyDictionary()


class ScalarFile(Protocol):
    """A log file being written; all calls come from the training thread."""

    path: str

    def write_scalars(self, step: int, values: dict[str, float], walltime: float) -> None: ...

    def write_text(self, step: int, tag: str, text: str, walltime: float) -> None: ...

    def flush(self) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


class AppendOnlyFile:
    """The durability part both writers share: a flush is a plain OS write (cheap,
    survives a crash of this process); ``sync`` and ``close`` also fsync."""

    _file: IO[bytes]

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def sync(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


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


def check_log_dir(log_dir: str, owner: str) -> None:
    """Create ``log_dir`` and prove a file can be written there, or raise a clear error."""
    if os.path.exists(log_dir) and not os.path.isdir(log_dir):
        raise NotADirectoryError(
            f"{owner}: log_dir {log_dir!r} is a file, not a folder. Fix: pass a folder "
            "path, e.g. log_dir='runs/exp1'."
        )
    try:
        os.makedirs(log_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=log_dir, prefix=".autoloss-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise PermissionError(
            f"{owner} cannot write to log_dir {log_dir!r} ({err.strerror or err}). Fix: "
            "pass a folder you can write to, e.g. log_dir='runs/exp1', or fix its "
            "permissions."
        ) from err


class ScalarExport(Callback):
    """Base of ``TensorBoardExport`` and ``VisualDLExport``; see their docstrings.

    Subclasses implement :meth:`_open`.
    """

    def __init__(self, log_dir: str | os.PathLike[str], every_n_steps: int = 1) -> None:
        super().__init__()
        log_dir = local_folder(log_dir, type(self).__name__, "log_dir", "runs/exp1")
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(
                f"every_n_steps must be an int >= 1, got {every_n_steps!r}. Fix: e.g. "
                "every_n_steps=1 (every step) or 10."
            )
        self.log_dir = log_dir
        self.every_n_steps = every_n_steps
        self.global_step = 0
        self.epoch = 0
        self.file: ScalarFile | None = None
        self._in_fit = False
        self._warned_eval = False
        self._metrics: list[str] = []
        self._eval_metrics: list[str] = ["loss"]
        self._batches = 0  # train batches seen in this epoch
        self._eval_sum = 0.0  # Σ batch loss · batch size over this evaluation
        self._eval_count = 0
        # Per AutoWeight: {task: (sigma tag, weight tag, loss tag)}, built once per fit.
        self._weighting: list[tuple[AutoWeight, dict[str, tuple[str, str, str]]]] = []
        self._topk: list[Any] = []
        self._drop_shown: set[int] = set()

    # ------------------------------------------------------------ to implement

    def _open(self, start_step: int) -> ScalarFile:
        """Open a new file in ``self.log_dir``.

        ``start_step`` is the global step this run starts after: points at steps
        above it that an earlier run left in the folder must not be shown.
        """
        raise NotImplementedError

    # ------------------------------------------------------------ resume state

    def state_dict(self) -> dict[str, Any]:
        """``{'step': global train step, 'epoch': epochs done}``, saved by ``model.save``."""
        return {"step": int(self.global_step), "epoch": int(self.epoch)}

    def set_state_dict(self, state: dict[str, Any]) -> None:
        """Continue counting from a checkpoint (called by ``hapi_autoloss.load_state``)."""
        self.global_step = int(state.get("step", 0))
        self.epoch = int(state.get("epoch", 0))

    # ------------------------------------------------------------ hooks

    @property
    def is_writer(self) -> bool:
        """True on the process that writes: rank 0, or the only one."""
        return _hapi.world()[0] == 0

    def on_train_begin(self, logs: Any = None) -> None:
        check_has_batches(self.params)
        _hapi.register_state(self.model, type(self).__name__, self)  # may restore the step
        self._close()  # a previous fit that raised may have left its file open
        self._in_fit = True
        self._metrics = [m for m in _hapi.metric_names(self.model) if m != "loss"]
        self._weighting = self._autoweight_tags()
        self._topk = _topk_layers(self.model)
        self._drop_shown = set()  # per fit: a new run shows drop from its first step above 0
        if not self.is_writer:
            return
        check_log_dir(self.log_dir, type(self).__name__)
        self.file = self._open(self.global_step)
        atexit.register(self.file.close)  # VisualDL has no atexit close of its own
        self.file.write_text(self.global_step, TEXT_TAG, self._config_text(), time.time())
        self.file.flush()

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._batches = 0

    def on_train_batch_end(self, step: int, logs: Any = None) -> None:
        self.global_step += 1
        self._batches += 1
        if self.file is None or self.global_step % self.every_n_steps:
            return
        # Read everything now (logs is hapi's shared, mutable dict): floats, not refs.
        values = self._train_values(logs or {})
        self.file.write_scalars(self.global_step, values, time.time())
        self.file.flush()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self.file is not None:
            self.file.flush()
        check_epoch_had_batches(epoch, self._batches)
        self.epoch += 1

    def on_eval_begin(self, logs: Any = None) -> None:
        metrics = (logs or {}).get("metrics")
        self._eval_metrics = list(metrics) if isinstance(metrics, (list, tuple)) else ["loss"]
        self._eval_sum, self._eval_count = 0.0, 0

    def on_eval_batch_end(self, step: int, logs: Any = None) -> None:
        if self.file is None or not logs:
            return
        loss, size = _scalar(logs.get("loss")), logs.get("batch_size")
        if loss is not None and isinstance(size, numbers.Integral) and int(size) > 0:
            self._eval_sum += loss * int(size)
            self._eval_count += int(size)

    def on_eval_end(self, logs: Any = None) -> None:
        if not self._in_fit:
            if not self._warned_eval:
                self._warned_eval = True
                warnings.warn(
                    f"{type(self).__name__} writes eval points during fit(eval_data=...) only; "
                    "model.evaluate(callbacks=[...]) is not logged. Fix: pass eval_data to fit.",
                    stacklevel=2,
                )
            return
        if self.file is None:
            return
        values: dict[str, float] = {}
        logs = logs or {}
        for name in self._eval_metrics:
            if name == "loss":  # the set's mean, not hapi's last batch
                if self._eval_count:
                    values["eval/loss"] = self._eval_sum / self._eval_count
                continue
            value = _scalar(logs.get(name))
            if value is not None:
                values[f"eval/{name}"] = value
        if values:
            self.file.write_scalars(self.global_step, values, time.time())
        self.file.flush()

    def on_train_end(self, logs: Any = None) -> None:
        self._in_fit = False
        self._close()

    # ------------------------------------------------------------ internals

    def _close(self) -> None:
        if self.file is not None:
            atexit.unregister(self.file.close)
            self.file.close()
            self.file = None

    def _autoweight_tags(self) -> list[tuple[AutoWeight, dict[str, tuple[str, str, str]]]]:
        """Per AutoWeight layer, its tags per task; a task name seen twice gets ``_<i>``."""
        out, used = [], set()
        for i, aw in enumerate(_hapi.iter_layers(self.model, AutoWeight)):
            tags = {}
            for task in aw.task_names:
                key = task if task not in used else f"{task}_{i}"
                used.add(key)
                tags[task] = (f"autoloss/sigma/{key}", f"autoloss/weight/{key}", f"autoloss/loss/{key}")
            out.append((aw, tags))
        return out

    def _train_values(self, logs: dict[str, Any]) -> dict[str, float]:
        # Two exporters on one model read the same values at the same step: read them
        # once. hapi builds a new 'loss' list for every batch, which marks the batch.
        batch = logs.get("loss")
        cached = _SHARED.get(self.model) if batch is not None else None
        if cached is not None and cached[0] is batch and cached[1] == self.global_step:
            return cached[2]
        values = self._read_values(logs)
        if batch is not None:
            _SHARED[self.model] = (batch, self.global_step, values)
        return values

    def _read_values(self, logs: dict[str, Any]) -> dict[str, float]:
        values: dict[str, float] = {}
        loss = _scalar(logs.get("loss"))
        if loss is not None:
            values["train/loss"] = loss
        for name in self._metrics:
            value = _scalar(logs.get(name))
            if value is not None:
                values[f"train/{name}"] = value
        # σ and the weights this step's forward used (before its update), as hapi's
        # logs show them; reading syncs the device, so only on written steps.
        for aw, tags in self._weighting:
            for kind, read in enumerate((*aw.used(), aw.last_losses())):
                for task, value in read.items():
                    if task in tags:
                        values[tags[task][kind]] = float(value)
        for i, layer in enumerate(self._topk):
            suffix = "" if i == 0 else f"/{i}"
            ratio = _scalar(getattr(layer, "ratio", None))
            if ratio is not None:
                values[f"topk/ratio{suffix}"] = ratio
            # The dropped fraction (AoRR) once a ranked range is used; then on, so a drop back to 0 shows.
            drop = _scalar(getattr(layer, "drop", None))
            if drop is not None and (drop > 0 or i in self._drop_shown):
                self._drop_shown.add(i)
                values[f"topk/drop{suffix}"] = drop
        opt = _hapi.optimizer_of(self.model)
        if opt is not None and hasattr(opt, "get_lr"):
            lr = _scalar(opt.get_lr())
            if lr is not None and math.isfinite(lr):
                values["lr"] = lr
        return values

    def _config_text(self) -> str:
        """Markdown: the run's settings, the AutoWeight and TopKLoss configuration."""
        nranks = _hapi.world()[1]
        opt = _hapi.optimizer_of(self.model)
        rows = [
            ("exporter", type(self).__name__),
            ("every_n_steps", str(self.every_n_steps)),
            ("start step", str(self.global_step)),
            ("ranks", f"{nranks} (rank 0 writes)"),
            ("optimizer", type(opt).__name__ if opt is not None else "none"),
        ]
        for i, (aw, _) in enumerate(self._weighting):
            rows.append((f"AutoWeight {i}", aw.extra_repr()))
        for i, layer in enumerate(self._topk):
            extra = layer.extra_repr() if hasattr(layer, "extra_repr") else ""
            rows.append((f"TopKLoss {i}", extra or type(layer).__name__))
        table = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in rows)
        loss = _hapi.loss_layer(self.model)
        tree = "\n".join("    " + line for line in repr(loss).splitlines()) if loss is not None else ""
        return f"| setting | value |\n|---|---|\n{table}\n\nLoss:\n\n{tree}\n"
