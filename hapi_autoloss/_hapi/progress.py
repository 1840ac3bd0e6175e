"""The run's progress (epochs and train steps done, across fits and resumes), and
skipping the epochs a restored run has already done.

Checked against paddlepaddle 3.3.1 (``paddle/hapi/model.py``: ``fit`` loops
``for epoch in range(epochs)`` around ``cbks.on_epoch_begin``, ``self._run_one_epoch``,
``cbks.on_epoch_end`` and an optional evaluation; ``_run_one_epoch`` calls
``self.train_batch`` per batch). hapi's ``fit`` has no ``initial_epoch``, so a restored
run skips the done epochs: no batch, no callback, no evaluation, and the data
sampler continues at the epoch it had reached.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

# model -> {"epoch": epochs done, "step": train batches done}
_PROGRESS: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()
# model -> the skipping state of the current fit, set by skip_done_epochs
_SKIP: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
# model -> {owner key: function} run after each train batch, before on_train_batch_end
_AFTER_BATCH: weakref.WeakKeyDictionary[Any, dict[str, Callable[[], None]]] = weakref.WeakKeyDictionary()


def progress(model: Any) -> dict[str, int]:
    """A copy of ``{'epoch': epochs done, 'step': train steps done}`` of ``model``."""
    return dict(_PROGRESS.get(model, {"epoch": 0, "step": 0}))


def set_progress(model: Any, saved: dict[str, Any]) -> None:
    _PROGRESS[model] = {"epoch": int(saved.get("epoch", 0)), "step": int(saved.get("step", 0))}


def after_train_batch(model: Any, key: str, fn: Callable[[], None]) -> None:
    """Run ``fn()`` after each of ``model``'s train batches, before any ``on_train_batch_end``
    (hapi's progress bar prints there first); a later call with the same ``key`` replaces it."""
    track_progress(model)
    _AFTER_BATCH.setdefault(model, {})[key] = fn


def track_progress(model: Any) -> None:
    """Count ``model``'s train steps and epochs from now on (once per model)."""
    _PROGRESS.setdefault(model, {"epoch": 0, "step": 0})
    if getattr(model, "_autoloss_progress_wrapped", False):
        return
    train_batch, run_one_epoch = model.train_batch, model._run_one_epoch

    def counted_train_batch(*args: Any, **kwargs: Any) -> Any:
        out = train_batch(*args, **kwargs)
        _PROGRESS[model]["step"] += 1
        for fn in _AFTER_BATCH.get(model, {}).values():
            fn()
        return out

    def counted_run_one_epoch(data_loader: Any, callbacks: Any, mode: str, *args: Any, **kwargs: Any) -> Any:
        skip = _SKIP.get(model)
        if skip is not None and skip["skipping"]:
            return {}
        if mode == "train" and skip is not None and skip.get("sampler_epoch") is not None:
            sampler: Any = getattr(data_loader, "batch_sampler", None)
            if callable(getattr(sampler, "set_epoch", None)):
                # DistributedBatchSampler shuffles with RandomState(epoch), epoch counted
                # per iteration from 0 in every fit: put it where the first run was.
                sampler.set_epoch(skip["sampler_epoch"])
            skip["sampler_epoch"] = None
        out = run_one_epoch(data_loader, callbacks, mode, *args, **kwargs)
        if mode == "train":
            _PROGRESS[model]["epoch"] += 1
        return out

    model.train_batch = counted_train_batch
    model._run_one_epoch = counted_run_one_epoch
    model._autoloss_progress_wrapped = True


def skip_done_epochs(model: Any, callbacks: Any, done: int, after_epoch: Callable[[int], None]) -> None:
    """Make this ``fit`` skip its epochs ``0 .. done-1`` and call ``after_epoch(epoch)``
    once every callback's ``on_epoch_end`` has run for a trained epoch.

    ``callbacks`` is hapi's ``CallbackList`` of this fit; its hooks are wrapped on this
    instance only, so the next ``fit`` (a new list) is untouched.
    """
    track_progress(model)
    state: dict[str, Any] = {"skipping": False, "sampler_epoch": done if done > 0 else None}
    _SKIP[model] = state
    epoch_begin, epoch_end = callbacks.on_epoch_begin, callbacks.on_epoch_end
    begin, end = callbacks.on_begin, callbacks.on_end

    def on_epoch_begin(epoch: int | None = None, logs: Any = None) -> None:
        state["skipping"] = epoch is not None and epoch < done
        if not state["skipping"]:
            epoch_begin(epoch, logs)

    def on_epoch_end(epoch: int | None = None, logs: Any = None) -> None:
        if not state["skipping"]:
            epoch_end(epoch, logs)
            after_epoch(int(epoch or 0))

    def on_begin(mode: str, logs: Any = None) -> None:
        if mode == "train":
            state["skipping"] = False
        if not (state["skipping"] and mode == "eval"):
            begin(mode, logs)

    def on_end(mode: str, logs: Any = None) -> None:
        if mode == "train":
            state["skipping"] = False
            _SKIP.pop(model, None)
        if not (state["skipping"] and mode == "eval"):
            end(mode, logs)

    callbacks.on_epoch_begin, callbacks.on_epoch_end = on_epoch_begin, on_epoch_end
    callbacks.on_begin, callbacks.on_end = on_begin, on_end
