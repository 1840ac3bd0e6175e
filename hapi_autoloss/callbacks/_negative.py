"""The refusal of a step with a negative task loss, for ``AutoWeightCallback``'s non-finite policy.

The check before an update refuses such a step on the rank holding the loss (a loss-level method's
task losses are read there, ``weighting/_since.py``; a gradient-level method's forward flags it) and
``agree`` carries that to the others, so every rank calls the policy. Every rank must raise the
same ValueError: so under the launcher one tiny all-reduce, on this failing step only, tells the
others that a rank holds a negative loss (a rank that skipped instead would wait for the next
step's collectives alone, until gloo's timeout).
"""

from __future__ import annotations

from typing import Any, Callable

import paddle

from .. import _hapi
from ..weighting._since import ANOTHER_RANK, NEGATIVE_TOLERANCE


def refuse_negative(weighting: list[Any], tagged: Callable[[Any, str], str], epoch: int, step: int) -> None:
    """Raise the ValueError if a task loss of an AutoWeight whose method needs losses >= 0 was below
    ``-NEGATIVE_TOLERANCE`` in this step on any rank; return otherwise (the usual policy follows)."""
    positive = [aw for aw in weighting if aw.weighting.positive_losses]  # the same on every rank
    if not positive:
        return
    texts = [aw.nonfinite_negative() for aw in positive]  # a host read, on this failing step only
    anywhere = [bool(text) for text in texts]
    _, nranks = _hapi.world()
    if nranks > 1:
        flags = paddle.to_tensor([int(here) for here in anywhere], dtype="int32")
        paddle.distributed.all_reduce(flags, op=paddle.distributed.ReduceOp.MAX)
        anywhere = [bool(v) for v in flags.numpy().tolist()]
    for aw, text in zip(positive, texts):
        if text:  # on this rank
            raise ValueError(_message(aw, tagged(aw, text), epoch, step))
    for aw, there in zip(positive, anywhere):
        if there:
            raise ValueError(_message(aw, tagged(aw, ANOTHER_RANK), epoch, step))


def _message(aw: Any, where: str, epoch: int, step: int) -> str:
    """Whatever ``on_nonfinite`` says: skipping would skip every such step and train nothing."""
    return (
        f"{where[0].upper()}{where[1:]} at epoch {epoch}, step {step}, but method={aw.method!r} "
        f"{aw.weighting.positive_losses}: it needs every task loss >= 0 (a loss below "
        f"-{NEGATIVE_TOLERANCE:g} is refused). No parameter, σ or optimizer moment was updated by this step. "
        "Fix: make that loss non-negative (e.g. subtract its lower bound), or use a method that takes any "
        "sign (equal, fixed, rlw, or a gradient-level method such as pcgrad)."
    )
