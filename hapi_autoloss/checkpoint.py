"""Finding the checkpoint to resume from, and what it holds."""

from __future__ import annotations

from ._hapi import checkpoint_info, newest_checkpoint

__all__ = ["checkpoint_info", "latest_checkpoint"]


def latest_checkpoint(save_dir: str) -> str | None:
    """The path prefix of the complete checkpoint in ``save_dir`` that is furthest into
    training, or None.

    ``model.save`` writes ``<prefix>.autoloss`` last, atomically, after hapi's
    ``.pdparams`` and ``.pdopt``; a process killed while saving leaves no
    ``.autoloss`` for that prefix, so an earlier checkpoint is returned. "Furthest"
    is read from the train steps stored in each ``.autoloss`` (ties: the last
    written), never from file names: hapi's ``final`` and ``EarlyStopping``'s
    ``best_model`` are ranked like the numbered ones. How far a checkpoint is:
    :func:`checkpoint_info`.

    Example::

        path = hapi_autoloss.latest_checkpoint("checkpoints")   # e.g. "checkpoints/final"
        model.load(path)
        hapi_autoloss.load_state(model, path)
        hapi_autoloss.checkpoint_info(path)                     # {'epoch': 5, 'step': 30}
    """
    return newest_checkpoint(save_dir)
