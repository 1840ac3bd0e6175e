"""A new model's run in a folder that holds an earlier run: the earlier run's log files go
into a subfolder, ``earlier-run-<its start time>``, which TensorBoard and VisualDL list as
a run of its own.

Why move rather than hide: TensorBoard's default (fast) loader applies the purge marker
only to the tags the new run writes again, so an earlier run's ``eval/*``, metrics,
other tasks or ``topk/*`` stayed on screen under the new run's name; ``--load_fast=false``,
VisualDL (newest file only) and ``hapi-autoloss plot`` showed the new run alone. Moved,
the folder holds one run for every reader, and nothing is deleted.

Only a new model (step 0) moves anything: a continued or resumed run (step s > 0:
a second ``fit``, ``BackupAndRestore``, ``load_state``) appends to the folder as before.
Both exporters of one fit share the folder: the first to start moves the earlier files of
both kinds, and the files this model's new run opened are never moved.

Only our own files move: their names end in :data:`MARK` (a user's own ``SummaryWriter`` or
``LogWriter`` writes the same ``events.out.tfevents.*`` / ``vdlrecords.*`` names, without it).
Files of hapi-autoloss versions before the mark stay where they are. A marked file that another
process may still be writing (modified in the last :data:`QUIET` seconds or since this module was
imported, and not opened by this process's exporters) stays too, with a warning.
"""

from __future__ import annotations

import os
import re
import time
import warnings
import weakref
from typing import Any

MARK = ".hapi-autoloss"  # the end of every log file name our exporters write
PREFIX = "earlier-run-"
_IMPORTED = time.time()  # "this process started", for the files of other processes
QUIET = 30.0  # s: a file another process wrote this recently may still be written (a live run)
_STAMP = re.compile(r"(?:tfevents|vdlrecords)\.(\d{9,11})\.")

# model -> paths of the files its new run (step 0) opened: kept in place for its other exporter.
_NEW_RUN_FILES: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
# Every log file this process's exporters opened: theirs to move once a new run starts.
_WRITTEN_HERE: set[str] = set()


def marked(name: str) -> str:
    """``name`` with the mark that says our exporters wrote the file."""
    return name + MARK


def opened(path: str) -> None:
    """Remember that an exporter of this process writes ``path``."""
    _WRITTEN_HERE.add(os.path.abspath(path))


def opened_new_run(model: Any, path: str) -> None:
    """Remember that ``model``'s new run (step 0) writes ``path``."""
    _NEW_RUN_FILES.setdefault(model, set()).add(os.path.abspath(path))


def _started(log_dir: str, names: list[str]) -> float:
    stamps = [int(m.group(1)) for n in names if (m := _STAMP.search(n))]
    if stamps:
        return float(min(stamps))
    return min(os.path.getmtime(os.path.join(log_dir, n)) for n in names)


def set_aside_earlier_run(log_dir: str, model: Any, owner: str) -> str | None:
    """Move the log files of an earlier run in ``log_dir`` into a new subfolder named
    after that run's start time; returns the subfolder, or None when there was none."""
    keep = _NEW_RUN_FILES.get(model, set())
    names: list[str] = []
    busy: list[str] = []
    for name in sorted(os.listdir(log_dir)):
        path = os.path.abspath(os.path.join(log_dir, name))
        if not name.endswith(MARK) or path in keep or not os.path.isfile(path):
            continue
        if path in _WRITTEN_HERE or os.path.getmtime(path) < min(_IMPORTED, time.time() - QUIET):
            names.append(name)
        else:
            busy.append(name)
    if busy:
        warnings.warn(
            f"{owner}: left {', '.join(busy)} in {log_dir!r}: written by another process in the last "
            f"{QUIET:.0f} s or since this one started (another run logging into this folder?). Fix: give each "
            "run its own log_dir, or wait until the other run has ended.",
            stacklevel=3,
        )
    if not names:
        return None
    base = os.path.join(log_dir, PREFIX + time.strftime("%Y%m%d-%H%M%S", time.localtime(_started(log_dir, names))))
    target, n = base, 1
    while os.path.exists(target):
        n += 1
        target = f"{base}-{n}"
    try:
        os.makedirs(target)
        for name in names:
            os.replace(os.path.join(log_dir, name), os.path.join(target, name))
    except OSError as err:
        warnings.warn(
            f"{owner}: could not move the earlier run's log files in {log_dir!r} into {target!r} "
            f"({err}); TensorBoard's default loader may show some of its curves with this run's. "
            "Fix: give each run its own log_dir, or open it with tensorboard --load_fast=false.",
            stacklevel=3,
        )
        return None
    return target
