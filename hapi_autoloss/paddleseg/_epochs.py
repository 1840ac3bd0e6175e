"""Epoch ends inside ``paddleseg.core.train``, for methods that need them (dwa, stch), and which
methods PaddleSeg's ``train`` cannot run.

Checked against PaddleSeg 2.8.0 (``paddleseg/core/train.py``) on paddlepaddle 3.3.1, whose ``train``
has epochs only implicitly: ``iters_per_epoch = len(batch_sampler)`` and ``for data in loader:
iter += 1``. As :mod:`._grad` reads ``scaler``, an AutoWeight whose method overrides ``end_epoch``
reads ``iter`` and ``iters_per_epoch`` from ``train``'s frame at each training forward: epoch e
is iterations e·iters_per_epoch + 1 .. (e + 1)·iters_per_epoch, and when a forward's epoch
``(iter − 1) // iters_per_epoch`` is past the last forward's, it calls ``loss.end_epoch()`` once
per finished epoch before this forward's losses are observed, so the new epoch trains with the new
weights, as ``AutoWeightCallback.on_epoch_end`` does. The last epoch of a run is closed by the
next run's first forward (``resume_model=``), if any. Under ``paddle.distributed.launch`` every
rank ends the epoch at the same iteration (``end_epoch`` is a collective).

Epochs are counted in iterations from iteration 1, not in loader passes: ``train`` resumed at
``iter_N`` starts a new pass of its loader there, yet its epochs end where the uninterrupted
run's did.

Resume: the last iteration the loss saw is a buffer (``seg_iter``), saved in ``model.pdparams``
with the method's buffers (dwa's history, weights and the running epoch's sums, stch's count and
nadir sums), so a run resumed from any ``iter_N``, in mid-epoch too, goes on exactly as the
uninterrupted run (with the same batches). That needs the loss to be a sublayer of the model
(:func:`~hapi_autoloss.paddleseg.attach`); without it the first training forward is refused.
A train that starts at iteration 1 with a loss that trained before keeps the method's state
(dwa's history, as a second ``fit`` does), ends the last run's last epoch if it was complete, and
forgets one that did not end. One loss on several outputs (``types: [aw, aw]``) ends each epoch once.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import numpy as np
import paddle

from ..weighting.base import METHODS, Weighting
from . import _train_frame


def unsupported(method: Weighting | type[Weighting]) -> str | None:
    """Why PaddleSeg's ``train`` cannot run this method (an instance or a class), or None. Asked
    of the method's hooks, never its name: a forward after each update is one ``train`` never
    makes; epoch ends are found here; a gradient-level method runs (``attach`` tells it the network)."""
    cls = method if isinstance(method, type) else type(method)
    if "after_update" in cls.training_hooks():
        return "needs a forward after each update, which PaddleSeg's train never makes"
    return None


def supported() -> str:
    """The registered methods PaddleSeg's ``train`` can run, for error messages."""
    return ", ".join(sorted(name for name, cls in METHODS.items() if unsupported(cls) is None))


def track(loss: Any) -> None:
    """Give ``loss`` its position buffer if its method needs epoch ends."""
    if "end_epoch" in type(loss.weighting).training_hooks():
        loss.register_buffer("seg_iter", paddle.zeros([], dtype="int64").cpu())  # on the host: set every step
        loss.register_buffer("seg_per", paddle.zeros([], dtype="int64").cpu())  # its run's epoch length


# (the train call (its batch sampler) each loss saw last, its last iteration there): outside the
# loss, so it still pickles, and no host read of seg_iter after a train call's first forward
_RUNS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _ended(it: int, per: int) -> int:
    """Epochs ended before iteration ``it``'s forward (0 before iteration 1)."""
    return max(0, (it - 1) // per)


def _name(loss: Any) -> str:
    return f"{type(loss).__name__}(method={loss.method!r})"


def advance(loss: Any) -> None:
    """At a training forward of ``loss`` (with a ``seg_iter`` buffer): end the epochs that
    ended since its last forward, before this one's losses are observed."""
    if getattr(loss, "seg_iter", None) is None or not paddle.is_grad_enabled():
        return
    local = _train_frame.train_locals()
    if local is None:
        raise RuntimeError(
            f"{_name(loss)} learns at epoch ends, which only paddleseg.core.train's iterations tell it, but "
            "this training forward is outside train, so no epoch would ever end. Fix: train it with "
            "paddleseg.core.train after hapi_autoloss.paddleseg.attach, or use hapi_autoloss.AutoWeight "
            "with paddle.Model.fit and AutoWeightCallback (in your own loop, hapi_autoloss.AutoWeight "
            "and loss.end_epoch() after each epoch)."
        )
    if not {"iter", "iters_per_epoch", "batch_sampler"} <= local.keys():
        raise RuntimeError(f"{_name(loss)} found no iter, iters_per_epoch or batch_sampler in paddleseg.core."
                           "train (checked against PaddleSeg 2.8.0). Fix: use PaddleSeg 2.8, or paddle.Model.fit.")
    it, per = int(local["iter"]), int(local["iters_per_epoch"])
    model = local.get("model")
    if it == int(local.get("start_iter", 0)) + 1 and (  # this train's first forward
            model is None or all(sub is not loss for sub in model.sublayers())):
        raise RuntimeError(
            f"{_name(loss)} keeps its epoch state in buffers, but it is not a sublayer of train's model, so "
            "iter_N/model.pdparams would not save them and a resumed run would start its epochs over. "
            "Fix: call hapi_autoloss.paddleseg.attach(model, losses, optimizer) before train."
        )
    run = local["batch_sampler"]  # one per train call: tells this run from the last one
    seen = _RUNS.get(loss)
    same = seen is not None and seen[0]() is run
    last = seen[1] if same and seen is not None else int(loss.seg_iter)
    if same and last == it:  # another output's forward in this iteration (types: [aw, aw])
        return
    if last != it - 1:  # not the next iteration of the run the loss saw last
        if it != 1:
            ckpt = os.path.join(str(local.get("resume_model") or "iter_N"), "model.pdparams")
            raise RuntimeError(
                f"{_name(loss)} is at iteration {last}, but train resumes at iteration {it - 1}: the checkpoint's "
                "model.pdparams lacks this loss's state, or is another run's. Fix: call attach before "
                "train(resume_model=...), and resume from a checkpoint saved that way; from a checkpoint saved "
                f"without it, load the network's weights with model.set_state_dict(paddle.load({ckpt!r})) and "
                "train without resume_model (the loss's epochs start over)."
            )
        before = int(loss.seg_per) or per  # the last run's epoch length (this one's if unknown)
        for _ in range(_ended(last + 1, before) - _ended(last, before)):
            loss.end_epoch()  # the last run's last epoch, complete but not yet ended
        loss.begin_training()  # a new run: forget an epoch that did not end
        last = 0
    for _ in range(_ended(it, per) - _ended(last, per)):
        loss.end_epoch()
    loss.seg_iter.set_value(np.array(it, dtype=np.int64))
    if not same:
        loss.seg_per.set_value(np.array(per, dtype=np.int64))
    _RUNS[loss] = (weakref.ref(run), it)
