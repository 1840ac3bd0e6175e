"""A gradient-level method that keeps a per-column history of the shared parameters (db_mtl's
buffer): the columns follow the parameters when a layer is frozen, unfrozen or replaced, and a
resumed run knows which parameter each saved column belongs to.

The shared layout is kept in the host buffer ``shared_columns`` (a stable key of each parameter's
structured name, and its size, per column); name it and the history in ``layout_buffers``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle

from . import _surrogate
from .gradient import GradWeighting


class KeepsColumns(GradWeighting):
    """The base of a method whose history follows the shared columns; it gets :meth:`shared_moved`."""

    def bind(self, tasks: list[str], task_types: list[str | None]) -> None:
        super().bind(tasks, task_types)
        # (id, name key, size) per shared parameter of the last step; None: unknown
        self._columns: list[tuple[int, int, int]] | None = None
        self._loaded: list[tuple[int, int]] | None = None  # (name key, size) of a loaded history
        self._holding: list[Any] = []  # the parameters of _columns, alive: their ids stay theirs
        # (name key, size) per shared parameter, on the host (read on loading)
        empty = paddle.to_tensor(np.zeros([0, 2], np.int64), place=paddle.CPUPlace())
        self.register_buffer("shared_columns", empty)

    def shared_layout(self, layout: list[tuple[int, int, int]], params: list[Any]) -> None:
        """Parameter mode, each step before combine_grads: the shared columns as (id, key of the
        structured name, size) per parameter ``params``. Where they differ from those the history
        was kept for (a layer frozen, unfrozen or replaced), :meth:`shared_moved`: matched by
        identity in the process, by name and size after a load (the ids of a saved run are unknown)."""
        if self._loaded is None and layout == self._columns:
            return
        old: list[tuple[int, int]] | None
        if self._loaded is not None:
            old, new = self._loaded, [(key, n) for _, key, n in layout]
        else:
            old = [(i, n) for i, _, n in self._columns] if self._columns is not None else None
            new = [(i, n) for i, _, n in layout]
        if old is not None and old != new:
            self.shared_moved(_surrogate.moved(old, new), sum(n for _, n in old))
        self._columns, self._loaded, self._holding = layout, None, list(params)
        keys = np.array([(key, n) for _, key, n in layout], dtype=np.int64).reshape([-1, 2])
        self.shared_columns = paddle.to_tensor(keys, place=paddle.CPUPlace())

    def state_loaded(self) -> None:
        super().state_loaded()
        saved = self.shared_columns.numpy()  # the loaded history's layout (none in an older checkpoint)
        self._loaded = [(int(a), int(b)) for a, b in saved] if saved.size else None
        self._columns, self._holding = None, []
