"""Closing a callback's training epoch once: before every callback's ``on_epoch_end`` inside hapi's
``fit`` (so a ``ModelCheckpoint`` listed first saves the closed epoch), at ``on_epoch_end`` when the
callback is driven by hand; never for an epoch ``BackupAndRestore`` skips (no ``on_epoch_begin``
reached the callback) nor one a fit that raised left open.

Example::

    self._closer = EpochCloser()                          # __init__
    self._closer.train_begins(self, self._close)          # on_train_begin
    self._closer.epoch_begins()                           # on_epoch_begin
    self._closer.epoch_ends(epoch, logs, self._close)     # on_epoch_end
"""

from __future__ import annotations

from typing import Any, Callable

from .. import _hapi

Close = Callable[[int, Any], None]


class EpochCloser:
    def __init__(self) -> None:
        self.open = False  # an epoch began and was not closed yet
        self.hooked = False  # hapi's fit closes it through its CallbackList

    def train_begins(self, callback: Any, close: Close) -> None:
        self.open = False  # an epoch a raised fit left open is not this fit's
        callbacks = _hapi.callback_list_of(callback)
        self.hooked = callbacks is not None
        if callbacks is not None:
            _hapi.before_epoch_end(callbacks, lambda epoch, logs: self._once(epoch, logs, close))

    def epoch_begins(self) -> None:
        self.open = True

    def epoch_ends(self, epoch: int, logs: Any, close: Close) -> None:
        if not self.hooked:  # driven by hand, not by hapi's fit: each call ends an epoch
            self.open = True
        self._once(epoch, logs, close)

    def _once(self, epoch: int, logs: Any, close: Close) -> None:
        if self.open:
            self.open = False
            close(epoch, logs)
