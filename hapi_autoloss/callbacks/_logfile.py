"""The log file side of the exporters: the calls a writer answers, how it reaches disk,
and the check that ``log_dir`` can be written.

``TensorBoardExport`` and ``VisualDLExport`` each open one :class:`ScalarFile`;
both build it on :class:`AppendOnlyFile`, so a flush is a plain OS write and only
``sync``/``close`` fsync (see the durability note in ``_scalars.py``).
"""

from __future__ import annotations

import os
import tempfile
from typing import IO, Protocol


class ScalarFile(Protocol):
    """A log file being written; all calls come from the training thread."""

    path: str

    def write_scalars(self, step: int, values: dict[str, float], walltime: float) -> None: ...

    def write_text(self, step: int, tag: str, text: str, walltime: float) -> None: ...

    def flush(self) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


class AppendOnlyFile:
    """The durability part both writers share: a flush is a plain OS write (cheap,
    survives a crash of this process); ``sync`` and ``close`` also fsync."""

    _file: IO[bytes]

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def sync(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


def check_log_dir(log_dir: str, owner: str) -> None:
    """Create ``log_dir`` and prove a file can be written there, or raise a clear error."""
    if os.path.exists(log_dir) and not os.path.isdir(log_dir):
        raise NotADirectoryError(
            f"{owner}: log_dir {log_dir!r} is a file, not a folder. Fix: pass a folder "
            "path, e.g. log_dir='runs/exp1'."
        )
    try:
        os.makedirs(log_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=log_dir, prefix=".autoloss-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise PermissionError(
            f"{owner} cannot write to log_dir {log_dir!r} ({err.strerror or err}). Fix: "
            "pass a folder you can write to, e.g. log_dir='runs/exp1', or fix its "
            "permissions."
        ) from err
