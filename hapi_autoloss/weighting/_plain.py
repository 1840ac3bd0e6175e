"""Warnings for a plain training loop (no ``model.fit``, no PaddleSeg ``train``): the mistakes that
``AutoWeightCallback`` and PaddleSeg's ``attach`` make impossible, and that a loop of one's own makes
silently.

1. A call the method needs (``loss.training_calls()``) is evidently missing: famo's
   ``after_update`` after each optimizer step, dwa's and stch's ``end_epoch`` after each epoch.
2. Under ``paddle.distributed.launch``, σ's gradients are never averaged (``sync_gradients``).
3. A gradient-level method zeroed a step's gradients for a non-finite task loss or gradient, while
   the user's ``opt.step()`` still advances its moments and learning-rate schedule.

Paddle gives no cheap sign of an optimizer update (a parameter's ``_inplace_version``, and its
gradient's, stay the same through ``step`` and ``clear_grad``), so the calls due once per update or
per epoch are checked by counting training forwards since the last call (Python integers, no
device op, no host read):

- once per update (``after_update``, ``sync_gradients``): more than ``PER_UPDATE`` (100) training
  forwards without it, or, at an epoch's close (``end_epoch``), more training forwards without it
  than that epoch held (the whole epoch and some of the one before). A loop accumulating by hand up
  to 100 micro-batches per update, and updating at least once per epoch (before or after its
  ``end_epoch``), never warns.
- once per epoch (``end_epoch``): more than ``PER_EPOCH`` (a million) training forwards without it;
  an epoch of more batches than that would warn wrongly, and a shorter run is not told.

A loss that hapi drives (``attach``: ``AutoWeightCallback``) or PaddleSeg's ``attach`` took is
never checked: those trainers make every call themselves. Nor is σ's averaging where a
``paddle.DataParallel`` wraps the loss with the network (it averages σ itself). Each warning is given
once per loss, at the user's line (the first frame outside hapi_autoloss and paddle).
"""

from __future__ import annotations

import sys
import warnings
from types import FrameType
from typing import Any

import paddle

from .._hapi import world

PER_UPDATE = 100  # training forwards without a once-per-update call that no correct loop makes
PER_EPOCH = 1_000_000  # training forwards without end_epoch: no real epoch is that long
SYNCS = [0]  # sync_gradients calls in this process (any loss: a list of parameters names none)


def note_sync() -> None:
    """``sync_gradients`` ran (cheap: one integer)."""
    SYNCS[0] += 1


def _forwards(count: int) -> str:
    return f"{count} training forward{'' if count == 1 else 's'}"


def _user_level() -> int:
    """``stacklevel`` naming the first frame outside hapi_autoloss and paddle (the user's line): the
    depth differs by path (a forward inside paddle's ``Layer.__call__``, ``end_epoch``, a gradient-level
    method's per-task step)."""
    frame, level = sys._getframe(2), 2  # 1: PlainChecks._warn, the caller of warnings.warn
    while frame.f_back is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("hapi_autoloss", "paddle"):
        frame, level = frame.f_back, level + 1
    return level


def _in_data_parallel(loss: Any) -> bool:
    """Whether this forward runs inside a ``paddle.DataParallel`` whose layers hold the loss's σ, so
    that it averages σ's gradients itself. Paddle 3.3.1 marks no parameter with its DataParallel, but
    ``DataParallel.forward`` calls its layers (the loss among them) from a frame whose ``self`` is it.
    Walked once per loss (the first training forward), never per step."""
    own = {id(p) for p in loss.parameters() if not p.stop_gradient}
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        holder = frame.f_locals.get("self")
        if isinstance(holder, paddle.DataParallel) and own <= {id(p) for p in holder.parameters()}:
            return True
        frame = frame.f_back
    return False


def mark_driven(layer: Any) -> None:
    """A trainer makes every call for ``layer`` (PaddleSeg's ``attach``): never check it."""
    checks = getattr(layer, "_plain", None)
    if isinstance(checks, PlainChecks):
        checks.driven = True


class PlainChecks:
    def __init__(self, hooks: list[str], calls: list[str], method: str) -> None:
        self.needs_update = "after_update" in hooks
        self.needs_epoch = "end_epoch" in hooks
        self.calls = calls  # loss.training_calls(), for the messages
        self.method = method
        self.driven = False  # PaddleSeg's attach took the loss
        self.sync: bool | None = None  # σ under the launcher: found at the first training forward
        self.since_update = 0  # training forwards since the last after_update
        self.since_sync = 0  # ... since the last sync_gradients
        self.syncs = SYNCS[0]
        self.in_epoch = 0  # ... since the last end_epoch
        self.warned: set[str] = set()

    def _call(self, hook: str) -> str:
        return next((c for c in self.calls if hook in c), f"loss.{hook}()")

    def _warn(self, key: str, text: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            warnings.warn(text, UserWarning, stacklevel=_user_level())

    def _missing_update(self, count: int, where: str) -> None:
        self._warn("after_update", (
            f"AutoWeight(method={self.method!r}) saw {_forwards(count)} {where} without "
            "loss.after_update(...), so its weights never learn from the updates (they move only with "
            f"each batch's losses). Fix: call {self._call('after_update')}."))

    def _missing_sync(self, count: int, where: str) -> None:
        self._warn("sync", (
            f"AutoWeight(method={self.method!r}) has trainable parameters (σ) under paddle.distributed.launch "
            f"and saw {_forwards(count)} {where} without hapi_autoloss.sync_gradients, so each rank learns its "
            "own σ (a paddle.DataParallel averages only the layers it wraps, and none wraps this loss). Fix: call "
            "hapi_autoloss.sync_gradients(loss_fn) after loss.backward() and before opt.step(), on every rank "
            "(or wrap the network and the loss in one paddle.DataParallel)."))

    def _seen_sync(self) -> None:
        """A sync_gradients since the last look restarts the count of forwards without one."""
        if SYNCS[0] != self.syncs:
            self.syncs, self.since_sync = SYNCS[0], 0

    def forward(self, loss: Any) -> None:
        """A training forward of a loss that no trainer drives."""
        if self.sync is None:  # once: the launcher's world is fixed, σ's trainable set too
            self.sync = world()[1] > 1 and any(not p.stop_gradient for p in loss.parameters())
            self.sync = self.sync and not _in_data_parallel(loss)
        self.in_epoch += 1
        if self.needs_update:
            self.since_update += 1
            if self.since_update > PER_UPDATE:
                self._missing_update(self.since_update, "in a row")
        if self.sync:
            self._seen_sync()
            self.since_sync += 1
            if self.since_sync > PER_UPDATE:
                self._missing_sync(self.since_sync, "in a row")
        if self.needs_epoch and self.in_epoch > PER_EPOCH:
            self._warn("end_epoch", (
                f"AutoWeight(method={self.method!r}) saw {_forwards(self.in_epoch)} without "
                f"loss.end_epoch() (more than {PER_EPOCH}, no epoch is that long), so it stays at its first "
                f"epoch's weights (dwa: 1; stch: its warm-up). Fix: call {self._call('end_epoch')}."))

    def after_update(self) -> None:
        self.since_update = 0

    def end_epoch(self) -> None:
        """An epoch closed by hand: more training forwards without a once-per-update call than the
        epoch held means a whole epoch and more went by without it. (An epoch's forwards all without
        it are no proof: a full-batch loop may close its epoch before its one update's call.)"""
        if self.in_epoch:
            where = f"(more than this epoch's {self.in_epoch})"
            if self.needs_update and self.since_update > self.in_epoch:
                self._missing_update(self.since_update, where)
            if self.sync:
                self._seen_sync()
                if self.since_sync > self.in_epoch:
                    self._missing_sync(self.since_sync, where)
        self.in_epoch = 0

    def nonfinite(self, text: str) -> None:
        """A gradient-level method zeroed this step's gradients (``text``: which task, which value)."""
        self._warn("nonfinite", (
            f"{text} at a training forward, so AutoWeight(method={self.method!r}) gave every parameter a zero "
            "gradient for this step; your optimizer's step() would still advance its moments (Adam's), its "
            "weight decay and its learning-rate schedule on it (model.fit skips such a step). Fix: skip "
            "opt.step() for that batch (opt.clear_grad() instead; a non-finite loss shows in "
            "bool(paddle.isfinite(loss))), or train with model.fit."))
