"""hapi-autoloss inside PaddleSeg: our losses in ``manager.LOSSES``, and σ trained right by ``train``.

Importing this module registers, in PaddleSeg's ``manager.LOSSES``:

- ``AutoWeight``: learned (or fixed) weights of several losses on one output, in place of
  ``MixedLoss`` (``losses: [...]`` as in MixedLoss, ``method: liebel``...), or their per-task
  gradients combined by a gradient-level method (``method: pcgrad``, ``mgda``...), or weights
  that move at epoch ends (``method: dwa``, ``stch``: an epoch is ``len(batch_sampler)``
  iterations of ``train``). Not ``famo``, which needs a forward after each update.
- ``TopKLoss``: per-pixel OHEM; ``thresh`` and ``min_kept`` without ``ratio`` work as PaddleSeg's
  ``OhemCrossEntropyLoss(thresh, min_kept)`` (the pixels below ``thresh``, at least ``min_kept``:
  exactly ``min_kept`` where PaddleSeg's keeps one fewer); ``ratio`` adds a kept fraction.
- ``SafeCrossEntropyLoss`` and ``SafeDiceLoss``: PaddleSeg's CE and Dice with their arguments,
  working on paddle 3 (PaddleSeg 2.8.0's ``CrossEntropyLoss`` raises a TypeError there, its
  ``DiceLoss`` overwrites the label in place).

and gives :func:`attach`, the one line a training script needs (σ's optimizer, gradients, ranks
and checkpoints; the network a gradient-level method differentiates, with ``train``'s AMP scale;
dwa's and stch's epoch state). Needs PaddleSeg 2.8
(``pip install "hapi-autoloss[paddleseg]"``, which brings numpy < 2). ``import hapi_autoloss``
alone never imports PaddleSeg.

Example::

    import hapi_autoloss.paddleseg
    from paddleseg.core import train

    losses = {"types": [hapi_autoloss.paddleseg.AutoWeight(
        [{"type": "SafeCrossEntropyLoss"}, {"type": "SafeDiceLoss"}], method="liebel")], "coef": [1]}
    optimizer = paddle.optimizer.AdamW(lr, parameters=model.parameters())
    hapi_autoloss.paddleseg.attach(model, losses, optimizer)  # σ: no decay, grads cleared, ranks, checkpoints
    train(model, train_dataset, optimizer=optimizer, losses=losses, iters=1000)
"""

from __future__ import annotations

try:
    import paddleseg  # noqa: F401
except ImportError as e:  # numpy 2 breaks PaddleSeg 2.8's opencv import too
    raise ImportError(
        f"hapi_autoloss.paddleseg needs PaddleSeg, which failed to import ({e}). Fix: "
        'pip install "hapi-autoloss[paddleseg]" (PaddleSeg 2.8.0 with numpy < 2), in its own environment.'
    ) from e

from ._losses import AutoWeight, SafeCrossEntropyLoss, SafeDiceLoss, TopKLoss
from ._trainer import attach

__all__ = ["AutoWeight", "SafeCrossEntropyLoss", "SafeDiceLoss", "TopKLoss", "attach"]
