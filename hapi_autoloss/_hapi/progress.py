"""The run's progress (epochs and train steps done, across fits and resumes), and
skipping the epochs a restored run has already done.

Checked against paddlepaddle 3.3.1 (``paddle/hapi/model.py``: ``fit`` loops
``for epoch in range(epochs)`` around ``cbks.on_epoch_begin``, ``self._run_one_epoch``,
``cbks.on_epoch_end`` and an optional evaluation; ``_run_one_epoch`` calls
``self.train_batch`` per batch and counts ``self.num_iters`` down). hapi's ``fit`` has
no ``initial_epoch``, so a restored run skips the done epochs: no batch, no callback,
no evaluation, and the data sampler continues at the epoch it had reached.

Everything is kept on the model object itself (not in module-level maps), so a model
and all it holds are freed like any other object once the user drops it.
"""

from __future__ import annotations

from typing import Any, Callable

from .model import slot


def progress(model: Any) -> dict[str, int]:
    """A copy of ``{'epoch': epochs done, 'step': train steps done}`` of ``model``."""
    return dict(slot(model, "_autoloss_progress", lambda: {"epoch": 0, "step": 0}))


def set_progress(model: Any, saved: dict[str, Any]) -> None:
    model._autoloss_progress = {"epoch": int(saved.get("epoch", 0)), "step": int(saved.get("step", 0))}


def after_train_batch(model: Any, key: str, fn: Callable[..., None]) -> None:
    """Run ``fn(inputs, labels, update)`` (``model.train_batch``'s arguments) after each of
    ``model``'s train batches, before any ``on_train_batch_end`` (hapi's progress bar prints
    there first); a later call with the same ``key`` replaces it."""
    track_progress(model)
    slot(model, "_autoloss_after_batch", dict)[key] = fn


def track_progress(model: Any) -> None:
    """Count ``model``'s train steps and epochs from now on (once per model)."""
    slot(model, "_autoloss_progress", lambda: {"epoch": 0, "step": 0})
    if getattr(model, "_autoloss_progress_wrapped", False):
        return
    train_batch, run_one_epoch = model.train_batch, model._run_one_epoch

    def counted_train_batch(*args: Any, **kwargs: Any) -> Any:
        around = list(getattr(model, "_autoloss_around_batch", {}).values())
        for fn in around:
            fn(True)
        try:
            out = train_batch(*args, **kwargs)
        finally:  # an exception (a refused step, Ctrl-C) ends the step too
            for fn in around:
                fn(False)
        model._autoloss_progress["step"] += 1
        for fn in list(getattr(model, "_autoloss_after_batch", {}).values()):
            fn(*args, **kwargs)
        return out

    def counted_run_one_epoch(data_loader: Any, callbacks: Any, mode: str, *args: Any, **kwargs: Any) -> Any:
        skip = getattr(model, "_autoloss_skip", None)
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
            model._autoloss_progress["epoch"] += 1
        return out

    model.train_batch = counted_train_batch
    model._run_one_epoch = counted_run_one_epoch
    model._autoloss_progress_wrapped = True


def around_train_batch(model: Any, key: str, fn: Callable[[bool], None]) -> None:
    """Call ``fn(True)`` as each of ``model``'s train steps (hapi's ``train_batch``: forward,
    backward, the update) starts and ``fn(False)`` when it ends, however it ends."""
    track_progress(model)
    slot(model, "_autoloss_around_batch", dict)[key] = fn


def skip_done_epochs(model: Any, callbacks: Any, done: int, steps_done: int,
                     between_epochs: Callable[[], None]) -> None:
    """Make this ``fit`` skip its epochs ``0 .. done-1`` (and count ``steps_done`` off
    ``num_iters``), and call ``between_epochs()`` before each trained epoch after the
    first, when the previous epoch and its evaluation are complete.

    ``callbacks`` is hapi's ``CallbackList`` of this fit; its hooks are wrapped on this
    instance only, so the next ``fit`` (a new list) is untouched.
    """
    track_progress(model)
    state: dict[str, Any] = {"skipping": False, "sampler_epoch": done if done > 0 else None, "trained": False}
    model._autoloss_skip = state
    if steps_done and getattr(model, "num_iters", None) is not None:
        model.num_iters -= steps_done  # hapi counts it down per batch run
    epoch_begin, begin, end = callbacks.on_epoch_begin, callbacks.on_begin, callbacks.on_end

    def on_epoch_begin(epoch: int | None = None, logs: Any = None) -> None:
        state["skipping"] = epoch is not None and epoch < done
        if state["skipping"]:
            return
        if state["trained"]:
            between_epochs()
        state["trained"] = True
        epoch_begin(epoch, logs)

    def on_epoch_end(epoch: int | None = None, logs: Any = None, _end: Any = callbacks.on_epoch_end) -> None:
        if not state["skipping"]:
            _end(epoch, logs)

    def on_begin(mode: str, logs: Any = None) -> None:
        if not (state["skipping"] and mode == "eval"):
            begin(mode, logs)

    def on_end(mode: str, logs: Any = None) -> None:
        if mode == "train":
            state["skipping"] = False
            model._autoloss_skip = None
        if not (state["skipping"] and mode == "eval"):
            end(mode, logs)

    callbacks.on_epoch_begin, callbacks.on_epoch_end = on_epoch_begin, on_epoch_end
    callbacks.on_begin, callbacks.on_end = on_begin, on_end
