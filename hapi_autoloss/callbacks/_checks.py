"""Checks the callbacks share: a folder argument, and an epoch that trained on no batch at all.

hapi itself says nothing useful then: an empty training set, or ``drop_last=True``
with a batch larger than the data, gives its progress bar a ``TypeError`` about
``num``, and with ``verbose=0`` ``fit`` returns having trained nothing. Each of our
callbacks calls these, so whichever runs first says what happened.

Example::

    def on_train_begin(self, logs=None):
        check_has_batches(self.params)        # hapi knows the length: 0 steps
    def on_epoch_end(self, epoch, logs=None):
        check_epoch_had_batches(epoch, self._batches)  # data without a length
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

_FIX = (
    "Fix: give fit training data with at least one full batch: check that the dataset is "
    "not empty, and use a batch_size no larger than the data (or drop_last=False)."
)


def no_batches_error(epoch: int | None = None) -> ValueError:
    """The error for training data that yields no batch (``epoch`` None: known before
    training, from the loader's length)."""
    if epoch is None:
        return ValueError(
            "The training data gives 0 batches per epoch (hapi counts 0 steps): it is empty, "
            f"or drop_last=True drops its only, incomplete batch. {_FIX}"
        )
    return ValueError(
        f"Epoch {epoch} had no training batches: the training data is empty, or "
        f"drop_last=True dropped its only, incomplete batch. {_FIX}"
    )


def check_has_batches(params: Mapping[str, Any] | None) -> None:
    """At ``on_train_begin``: raise when hapi knows an epoch has 0 steps.

    ``params['steps']`` is ``len(loader)``; None (data without a length) passes.
    """
    steps = params.get("steps") if isinstance(params, Mapping) else None
    if isinstance(steps, int) and not isinstance(steps, bool) and steps <= 0:
        raise no_batches_error()


def check_epoch_had_batches(epoch: int, batches: int) -> None:
    """At ``on_epoch_end``: raise when this epoch saw no train batch."""
    if batches <= 0:
        raise no_batches_error(epoch)


def local_folder(path: str | os.PathLike[str], owner: str, arg: str, example: str) -> str:
    """``path`` as a str, or a clear error if it is empty, a URL, or an existing file."""
    folder = os.fspath(path)
    if not isinstance(folder, str) or not folder:
        raise ValueError(f"{owner} needs a {arg}. Fix: e.g. {owner}({example!r}).")
    if "://" in folder:
        raise ValueError(
            f"{owner} writes local files only, got {arg}={folder!r}. Fix: use a local or mounted "
            f"folder, e.g. {example!r}, and copy it afterwards."
        )
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(
            f"{owner}: {arg} {folder!r} is a file, not a folder. Fix: pass a folder path, e.g. {example!r}."
        )
    return folder
