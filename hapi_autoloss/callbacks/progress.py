"""TqdmProgressBar: a tqdm bar for ``model.fit`` with loss, metrics, σ and k."""

from __future__ import annotations

import sys
from typing import IO, Any, Callable

from paddle.callbacks import ProgBarLogger

from .. import _hapi
from .._args import check_count
from ._checks import check_epoch_had_batches, check_has_batches
from ._readout import EvalMean
from ._tqdm_bar import LazyBar, copy_values, format_postfix


class TqdmProgressBar(ProgBarLogger):
    """Replaces hapi's progress line with a tqdm bar per epoch and per evaluation.

    Shows the loss, the metrics, σ per task (``σ_<task>``, from
    ``AutoWeightCallback``) and the kept top-k ratio (``k``, from
    ``TopKScheduler``): every key listed in ``params['metrics']``, which those
    callbacks extend.

    What a step shows: the σ, weights and k that step's own forward pass used,
    i.e. σ *before* that step's update, the same values hapi's progress line and
    the exporters (``TensorBoardExport``, ``VisualDLExport``) show for that step.
    An epoch's final line is its last step's. The eval bar shows the mean loss of
    the batches evaluated so far (at the end the exporters' ``eval/loss``; hapi's
    own line shows the last batch's), the metrics, and σ and k of the last train
    step. Being a ``ProgBarLogger``, it stops hapi from adding its own bar. Silent
    on every rank but 0. Training data that gives no batch raises a ``ValueError``
    saying so.

    Values are copied at each step's end and formatted only when tqdm redraws
    (every ``mininterval`` seconds): about 10 µs a step.

    Args:
        verbose: 0 silent; 1 a live bar per epoch, left on screen when done;
            2 one plain line every ``log_freq`` steps and at the end (for log
            files). ``None`` (default) takes ``fit(verbose=...)``, like hapi's
            own bar: hapi's default is 2, so pass ``fit(verbose=1)`` for the
            live bar.
        log_freq: steps between lines when ``verbose=2`` (``fit(log_freq=...)``
            does not reach a progress bar passed in ``callbacks``: set it here).
        show_weights: show each task's weight (``w_<task>``): True for every task, False
            for none, ``None`` (default) for the tasks without a σ (dwa, famo, mgda...).
        file: where to write; default ``sys.stderr`` (tqdm's).
        mininterval: least seconds between redraws (tqdm's).
        **tqdm_kwargs: passed to ``tqdm`` (e.g. ``ncols=100``, ``ascii=True``).

    Example::

        model.fit(train_data, eval_data=val_data, epochs=10, verbose=1,
                  callbacks=[AutoWeightCallback(), TopKScheduler(), TqdmProgressBar()])
        # Epoch 1/10: 100%|██████████| 50/50 [00:02<00:00, 24.1step/s, loss=0.41, σ_depth=0.93, σ_seg=1.1, k=0.9]
    """

    def __init__(
        self,
        verbose: int | None = None,
        log_freq: int = 10,
        show_weights: bool | None = None,
        file: IO[str] | None = None,
        mininterval: float = 0.1,
        **tqdm_kwargs: Any,
    ) -> None:
        if verbose not in (None, 0, 1, 2, 3):
            raise ValueError(f"verbose must be None, 0, 1 or 2, got {verbose!r}. Fix: e.g. verbose=1.")
        log_freq = check_count(log_freq, "log_freq", 1, "log_freq=10")
        super().__init__(log_freq=log_freq, verbose=2 if verbose is None else verbose)
        self.model = None
        self.params = {}  # type: ignore[typeddict-item]  # set by hapi's set_params
        self._verbose_arg = verbose
        self.show_weights = show_weights
        self.file = file
        self.mininterval = float(mininterval)
        self.tqdm_kwargs = tqdm_kwargs
        self._bar: LazyBar | None = None
        self._mode = "train"
        self._train: dict[str, float] = {}  # last train values shown, copied from logs
        self._eval: dict[str, float] = {}
        self._eval_keys: list[str] = ["loss"]
        self._eval_loss = EvalMean()
        self._count = 0
        self._printed = -1
        self._batches = 0  # train batches in this epoch, on every rank
        self._keys: list[str] = []

    # ------------------------------------------------------------ helpers

    def _level(self) -> int:
        if self._verbose_arg is not None:
            return int(self._verbose_arg)
        return int(self.params.get("verbose", 2) or 0) if isinstance(self.params, dict) else 2

    def _on(self) -> bool:
        return self._level() > 0 and _hapi.world()[0] == 0

    @property
    def is_open(self) -> bool:
        """Whether a bar is drawn now (its values are copied from ``logs`` at every step)."""
        return self._bar is not None

    def _out(self) -> IO[str]:
        return self.file if self.file is not None else sys.stderr

    def _train_keys(self) -> list[str]:
        metrics = self.params.get("metrics") if isinstance(self.params, dict) else None
        keys = list(metrics) if isinstance(metrics, list) else ["loss"]
        sigmas = {k[len("sigma_"):] for k in keys if k.startswith("sigma_")}
        if self.show_weights is None:  # a task's weight where it has no σ to show (dwa, famo, mgda...)
            return [k for k in keys if not k.startswith("weight_") or k[len("weight_"):] not in sigmas]
        return [k for k in keys if self.show_weights or not k.startswith("weight_")]

    def _open(self, desc: str, total: Any, values: Callable[[], dict[str, float]]) -> None:
        self._close()
        self._count = 0
        self._printed = -1  # the count of the last plain line printed (verbose 2)
        line_mode = self._level() >= 2
        self._bar = LazyBar(
            total=total if isinstance(total, int) and total > 0 else None,
            desc=desc,
            unit="step",
            file=self._out(),
            mininterval=self.mininterval,
            leave=True,
            # verbose 2 prints its own lines: the bar itself never draws.
            delay=float("inf") if line_mode else 0.0,
            render=lambda: format_postfix(values()),
            **self.tqdm_kwargs,
        )

    def _step(self) -> None:
        bar = self._bar
        if bar is None:
            return
        bar.update(1)
        self._count += 1
        if self._level() >= 2 and self._count % self.log_freq == 0 and self._count != bar.total:
            self._line(bar)
            self._printed = self._count

    def _line(self, bar: LazyBar) -> None:
        # Not tqdm.write: that clears and redraws the bars on the same file.
        out = self._out()
        out.write(str(bar) + "\n")
        out.flush()

    def _close(self) -> None:
        bar, self._bar = self._bar, None
        if bar is None:
            return
        # The last line, unless _step just printed it (data without a length: no total).
        if self._level() >= 2 and not bar.disable and self._printed != self._count:
            self._line(bar)
        bar.close()

    def _eval_values(self) -> dict[str, float]:
        extra = {k: v for k, v in self._train.items() if k not in self._eval_keys and k != "loss"}
        return {**self._eval, **extra}

    # ------------------------------------------------------------ train

    def on_train_begin(self, logs: Any = None) -> None:
        check_has_batches(self.params)
        self._close()
        self.epochs = self.params.get("epochs")
        self._train = {}

    def on_epoch_begin(self, epoch: int | None = None, logs: Any = None) -> None:
        self.epoch = epoch
        self._batches = 0
        self._train = {}  # 0% of an epoch shows no value of the previous epoch's last step
        if not self._on():
            return
        self._keys = self._train_keys()  # complete now: every on_train_begin has run
        desc = f"Epoch {int(epoch or 0) + 1}/{self.epochs}" if self.epochs else f"Epoch {int(epoch or 0) + 1}"
        self._open(desc, self.params.get("steps"), lambda: self._train)

    def on_train_batch_begin(self, step: int, logs: Any = None) -> None:
        pass  # hapi's timers are not needed: tqdm measures the rate

    def on_train_batch_end(self, step: int, logs: Any = None) -> None:
        self._batches += 1
        if self._bar is None:
            return
        copy_values(logs, self._keys, self._train)
        self._step()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        # No copy here: logs may hold σ after the last update by now; the final line
        # shows the last step's values, like every other line.
        self._close()
        check_epoch_had_batches(epoch, self._batches)

    def on_train_end(self, logs: Any = None) -> None:
        self._close()

    # ------------------------------------------------------------ eval

    def on_eval_begin(self, logs: Any = None) -> None:
        logs = logs or {}
        metrics = logs.get("metrics")
        self._eval_keys = list(metrics) if isinstance(metrics, (list, tuple)) else ["loss"]
        self._eval = {}
        self._eval_loss = EvalMean()
        if self._on():
            self._open("Eval", logs.get("steps"), self._eval_values)

    def on_eval_batch_begin(self, step: int, logs: Any = None) -> None:
        pass

    def on_eval_batch_end(self, step: int, logs: Any = None) -> None:
        if self._bar is None:
            return
        self._copy_eval(logs)
        self._step()

    def on_eval_end(self, logs: Any = None) -> None:
        if self._bar is not None:
            copy_values(logs, self._eval_keys, self._eval)
            if self._eval_loss.mean is not None:
                self._eval["loss"] = self._eval_loss.mean
        self._close()

    def _copy_eval(self, logs: Any) -> None:
        copy_values(logs, self._eval_keys, self._eval)
        mean = self._eval_loss.add(logs)
        if mean is not None and "loss" in self._eval:  # the set's mean so far, as eval/loss
            self._eval["loss"] = mean

    # ------------------------------------------------------------ predict

    def on_predict_begin(self, logs: Any = None) -> None:
        if self._on():
            self._open("Predict", (logs or {}).get("steps"), dict)

    def on_predict_batch_begin(self, step: int, logs: Any = None) -> None:
        pass

    def on_predict_batch_end(self, step: int, logs: Any = None) -> None:
        self._step()

    def on_predict_end(self, logs: Any = None) -> None:
        self._close()
