"""When hapi's callbacks read a train step's ``logs``, so values that cost a device read go in only then.

Checked against paddlepaddle 3.3.1 (``paddle/hapi/callbacks.py``, ``Model.fit``).
"""

from __future__ import annotations

from typing import Any, Callable

from paddle.hapi.callbacks import EarlyStopping, LRScheduler, ModelCheckpoint, ProgBarLogger, ReduceLROnPlateau

# hapi's callbacks that never read a train step's logs: ModelCheckpoint and LRScheduler read
# none; EarlyStopping and ReduceLROnPlateau read them at on_eval_end only, after the
# epoch's end (see before_epoch_end). Exact types: a subclass may read more.
SILENT = (ModelCheckpoint, LRScheduler, EarlyStopping, ReduceLROnPlateau)


def is_progbar(callback: Any) -> bool:
    """hapi's own progress line (exactly that class: a subclass may print otherwise)."""
    return type(callback) is ProgBarLogger


def progbar_prints(logger: Any) -> bool:
    """Whether hapi's ``ProgBarLogger`` prints ``logs`` at the coming ``on_train_batch_end``.

    Its rule: count the step (``train_step``, reset each epoch), print when that count is
    a multiple of ``log_freq`` and below ``steps``; the epoch's last line is printed at
    ``on_epoch_end``. ``_is_print()`` (verbose on rank 0) is the caller's to check once.
    """
    done = getattr(logger, "train_step", 0) + 1
    steps = getattr(logger, "steps", None)
    return done % max(1, int(logger.log_freq)) == 0 and (steps is None or done < steps)


def progbar_on(logger: Any) -> bool:
    """Whether hapi's ``ProgBarLogger`` prints at all on this process."""
    return bool(logger._is_print())


def before_epoch_end(callbacks: Any, fn: Callable[[int, Any], None]) -> None:
    """Run ``fn(epoch, logs)`` before every callback's ``on_epoch_end`` in this fit.

    ``callbacks`` is hapi's ``CallbackList`` of the fit; its hook is wrapped on this
    instance only (the next ``fit`` builds a new list). hapi passes the train epoch's
    ``logs``, the dict its steps filled, which its evaluation then reuses.
    """
    end = callbacks.on_epoch_end

    def on_epoch_end(epoch: int, logs: Any = None) -> None:
        fn(epoch, logs)
        end(epoch, logs)

    callbacks.on_epoch_end = on_epoch_end


# The logs keys our callbacks write (prefixes and whole names).
OUR_KEYS = ("sigma_", "weight_", "topk_ratio", "topk_drop", "nonfinite_skipped")


def forget_earlier_fits() -> None:
    """Drop the keys our callbacks wrote from hapi's train-step ``logs`` dict.

    ``Model._run_one_epoch(..., logs={})`` has a mutable default: every ``fit`` in the process
    fills the same dict, so another model's ``sigma_<task>`` from an earlier fit would reach
    this fit's callbacks. Called at train begin, before a step fills it again.
    """
    from paddle.hapi.model import Model

    for shared in Model._run_one_epoch.__defaults__ or ():
        if isinstance(shared, dict):
            for key in [k for k in shared if isinstance(k, str) and k.startswith(OUR_KEYS)]:
                del shared[key]
