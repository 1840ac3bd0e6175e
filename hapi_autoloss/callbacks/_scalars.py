"""What the log exporters write, at which step, on which rank, and when it reaches disk.

``TensorBoardExport`` and ``VisualDLExport`` share everything here; each only says
how to open its file and how to append records to it (:class:`ScalarFile`, in
``_logfile.py``). What a point holds is read by ``_readout.Readout``.

Design decisions (the issue was silent on them):

- **What a train point shows**: the σ and task weights that step's own forward
  pass used, i.e. σ *before* that step's update (``AutoWeight.used()``), the same
  values hapi's progress line and ``TqdmProgressBar`` show for that step (put into
  ``logs`` by ``AutoWeightCallback``). ``autoloss/loss/<task>`` is that forward's
  raw loss. After the last step, ``AutoWeight.sigmas()`` is one update further.
- **Eval points are written in a running fit only** (hapi's ``fit`` on the
  stack calls us): a standalone ``model.evaluate(callbacks=[...])`` warns and
  writes nothing, also after a fit that raised (hapi then skips ``on_train_end``).
- **eval/loss** = the mean over the whole evaluation set, each batch's loss
  weighted by its size (hapi's own logs at eval end carry only the last batch's
  loss). Under the launcher it is rank 0's share of the set. Metrics (``eval/acc``...)
  are hapi's, accumulated over the set by the Metric.
- **An epoch without a train batch** (empty data, ``drop_last=True`` with a batch
  larger than the data) raises a ``ValueError`` saying so, at train begin when
  the loader's length is known, else at that epoch's end.
- **Step** = the model's global train step (``_hapi.progress``): the number of
  train batches the model has done, over all its fits, this one included, so the
  first point of a new model is at step 1. It is the model's, not the
  exporter's: a new exporter on a model that trained before carries on at its
  step, an exporter reused by a new model starts again at 1. It is saved with
  ``model.save`` and restored by ``hapi_autoloss.load_state`` and
  ``BackupAndRestore``, so it carries on after a resume. Eval points go at the
  step they were run after.
- **Durability**: every written step is appended to the file and flushed to the
  operating system before training goes on (about a microsecond: the writers are
  synchronous and write one buffer per step; there is no background thread or
  queue to drain). An exception, Ctrl-C or ``kill -9`` therefore loses nothing
  logged before it. ``fsync`` (milliseconds) runs only when the file is closed,
  at train end or exit: an operating-system crash can cost the points since.
- **One folder holds one run**. A fresh run (a model at step 0) moves an
  earlier run's log files (the exporters' own) into a subfolder ``earlier-run-<its start time>``, which
  TensorBoard and VisualDL list as a run of its own (``_earlier_run.py``: TensorBoard's
  default loader does not purge the tags a new run never writes); a continued or resumed run (a model
  at step s > 0) replaces the points after step s instead of duplicating them
  (TensorBoard: a purge marker; VisualDL: the new file starts with the kept
  points copied forward, see ``visualdl.py``). Use one folder per experiment
  to compare runs.
"""

from __future__ import annotations

import atexit
import os
import time
import warnings
from typing import Any

from paddle.callbacks import Callback

from .. import _hapi
from .._args import check_count
from ._checks import check_epoch_had_batches, check_has_batches, local_folder
from ._earlier_run import opened, opened_new_run, set_aside_earlier_run
from ._logfile import ScalarFile, check_log_dir
from ._readout import EvalMean, Readout, _scalar

__all__ = ["ScalarExport"]

TEXT_TAG = "autoloss/config"


class ScalarExport(Callback):
    """Base of ``TensorBoardExport`` and ``VisualDLExport``; see their docstrings.

    Subclasses implement :meth:`_open`.
    """

    def __init__(self, log_dir: str | os.PathLike[str], every_n_steps: int = 1) -> None:
        super().__init__()
        log_dir = local_folder(log_dir, type(self).__name__, "log_dir", "runs/exp1")
        self.log_dir = log_dir
        self.every_n_steps = check_count(every_n_steps, "every_n_steps", 1, "every_n_steps=1 (every step) or 10")
        self.global_step = 0  # the model's train step at the last point (see the module's docstring)
        self.file: ScalarFile | None = None
        self._warned_eval = False
        self._eval_metrics: list[str] = ["loss"]
        self._batches = 0  # train batches seen in this epoch
        self._eval_loss = EvalMean()
        self._readout: Readout | None = None  # built once per fit

    # ------------------------------------------------------------ to implement

    def _open(self, start_step: int) -> ScalarFile:
        """Open a new file in ``self.log_dir``.

        ``start_step`` is the global step this run starts after: points at steps
        above it that an earlier run left in the folder must not be shown.
        """
        raise NotImplementedError

    # ------------------------------------------------------------ resume state

    def state_dict(self) -> dict[str, Any]:
        """``{'step': the model's train steps, 'epoch': its epochs done}``, saved by ``model.save``."""
        return _hapi.progress(self.model)

    def set_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing: the step is the model's, which ``hapi_autoloss.load_state`` restores."""

    # ------------------------------------------------------------ hooks

    @property
    def is_writer(self) -> bool:
        """True on the process that writes: rank 0, or the only one."""
        return _hapi.world()[0] == 0

    def on_train_begin(self, logs: Any = None) -> None:
        check_has_batches(self.params)
        _hapi.register_state(self.model, type(self).__name__, self)  # the model counts its steps
        self._close()  # a previous fit that raised may have left its file (and lr hook)
        self.global_step = _hapi.progress(self.model)["step"]  # restored by load_state / BackupAndRestore
        self._readout = Readout(self.model)
        if not self.is_writer:
            return
        self._readout.watch_lr()
        check_log_dir(self.log_dir, type(self).__name__)
        if self.global_step == 0:  # a new model: an earlier run's files go to a subfolder
            set_aside_earlier_run(self.log_dir, self.model, type(self).__name__)
        self.file = self._open(self.global_step)
        opened(self.file.path)
        if self.global_step == 0:
            opened_new_run(self.model, self.file.path)
        atexit.register(self.file.close)  # VisualDL has no atexit close of its own
        text = self._readout.config_text(type(self).__name__, self.every_n_steps, self.global_step)
        self.file.write_text(self.global_step, TEXT_TAG, text, time.time())
        self.file.flush()

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._batches = 0

    def on_train_batch_begin(self, step: int, logs: Any = None) -> None:
        if self.file is not None and self._readout is not None:
            self._readout.batch_begins()  # see Readout._lr_used

    def on_train_batch_end(self, step: int, logs: Any = None) -> None:
        self.global_step = _hapi.progress(self.model)["step"]  # this step included
        self._batches += 1
        if self.file is None or self._readout is None or self.global_step % self.every_n_steps:
            return
        # Read everything now (logs is hapi's shared, mutable dict): floats, not refs.
        values = self._readout.train_values(logs or {}, self.global_step)
        self.file.write_scalars(self.global_step, values, time.time())
        self.file.flush()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self.file is not None:
            self.file.flush()
        check_epoch_had_batches(epoch, self._batches)

    def on_eval_begin(self, logs: Any = None) -> None:
        metrics = (logs or {}).get("metrics")
        self._eval_metrics = list(metrics) if isinstance(metrics, (list, tuple)) else ["loss"]
        self._eval_loss = EvalMean()

    def on_eval_batch_end(self, step: int, logs: Any = None) -> None:
        if self.file is None or not logs:
            return
        self._eval_loss.add(logs)

    def on_eval_end(self, logs: Any = None) -> None:
        if not _hapi.in_running_fit(self):
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
                if self._eval_loss.mean is not None:
                    values["eval/loss"] = self._eval_loss.mean
                continue
            value = _scalar(logs.get(name))
            if value is not None:
                values[f"eval/{name}"] = value
        if values:
            self.file.write_scalars(self.global_step, values, time.time())
        self.file.flush()

    def on_train_end(self, logs: Any = None) -> None:
        self._close()

    # ------------------------------------------------------------ internals

    def _close(self) -> None:
        if self._readout is not None:
            self._readout.unwatch_lr()
        if self.file is not None:
            atexit.unregister(self.file.close)
            self.file.close()
            self.file = None
