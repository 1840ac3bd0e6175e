"""Finding the checkpoint to resume from."""

from __future__ import annotations

import os

from ._hapi import STATE_SUFFIX


def latest_checkpoint(save_dir: str) -> str | None:
    """The path prefix of the newest complete checkpoint in ``save_dir``, or None.

    ``model.save`` writes ``<prefix>.autoloss`` last, atomically, after hapi's
    ``.pdparams`` and ``.pdopt``; a process killed while saving leaves no
    ``.autoloss`` for that prefix, so the previous checkpoint is returned. Newest
    means last written, which also works when a resumed run numbers its epochs
    from 0 again (hapi's ``fit`` has no ``initial_epoch``).

    Example::

        path = hapi_autoloss.latest_checkpoint("checkpoints")   # e.g. "checkpoints/2"
        model.load(path)
        hapi_autoloss.load_state(model, path)
    """
    if not os.path.isdir(save_dir):
        return None
    found = []
    for name in os.listdir(save_dir):
        if not name.endswith(STATE_SUFFIX):
            continue
        prefix = os.path.join(save_dir, name[: -len(STATE_SUFFIX)])
        if os.path.exists(prefix + ".pdparams"):
            found.append((os.stat(os.path.join(save_dir, name)).st_mtime_ns, prefix))
    return max(found)[1] if found else None
