"""Reading what ``TensorBoardExport`` or ``VisualDLExport`` wrote, for ``hapi-autoloss plot``.

:func:`read_scalars` returns every scalar tag of a log folder as ``{tag: (steps, values)}``,
read with TensorBoard's ``EventAccumulator`` or VisualDL's ``LogReader``; the errors it
raises for a folder it cannot read are :class:`PlotError` subclasses. Import them from
:mod:`hapi_autoloss.plot`.

Example::

    from hapi_autoloss.plot import read_scalars
    steps, values = read_scalars("runs/quickstart")["autoloss/sigma/digit"]
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

INSTALL_HINT = 'pip install "hapi-autoloss[plot]"'
READERS = ("auto", "tensorboard", "visualdl")
# (title, tag prefix) per panel, in drawing order.
PANELS = (
    ("σ per task", "autoloss/sigma/"),
    ("task weight", "autoloss/weight/"),
    ("raw loss per task", "autoloss/loss/"),
    ("top-k ratio k", "topk/ratio"),
)

Series = dict[str, tuple[list[int], list[float]]]


class PlotError(Exception):
    """Base of the errors ``plot_curves`` raises for a log folder it cannot plot."""


class LogDirNotFoundError(PlotError, FileNotFoundError):
    """LOGDIR does not exist or is not a folder."""


class NoLogsError(PlotError):
    """LOGDIR holds no TensorBoard or VisualDL log file."""


class NoKnownTagsError(PlotError):
    """The logs hold none of the tags the exporters write."""


class MissingDependencyError(PlotError, ImportError):
    """matplotlib, or the reader for the logs, is not installed."""


# Public as hapi_autoloss.plot.*: tracebacks and pickles name that module.
for _error in (PlotError, LogDirNotFoundError, NoLogsError, NoKnownTagsError, MissingDependencyError):
    _error.__module__ = "hapi_autoloss.plot"


def _files(log_dir: str, marker: str) -> list[str]:
    return sorted(n for n in os.listdir(log_dir) if marker in n and os.path.isfile(os.path.join(log_dir, n)))


def _no_purge_note(record: logging.LogRecord) -> bool:
    # A resumed or continued run's purge marker is expected, not a problem to report.
    return not str(record.msg).startswith("Detected out of order event.step")


def _read_tensorboard(log_dir: str) -> Series:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as err:
        raise MissingDependencyError(
            f"Reading TensorBoard logs needs the tensorboard package ({err}). Fix: "
            f"{INSTALL_HINT}, or pip install tensorboard."
        ) from err
    # size_guidance 0 keeps every point; purge markers (resumed runs) are applied.
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    logger = logging.getLogger("tensorboard")
    level = logger.level
    logger.setLevel(logging.WARNING)  # not its INFO line per file read
    logger.addFilter(_no_purge_note)
    try:
        acc.Reload()
    finally:
        logger.setLevel(level)
        logger.removeFilter(_no_purge_note)
    out: Series = {}
    for tag in acc.Tags().get("scalars", []):
        events = acc.Scalars(tag)
        out[tag] = ([int(e.step) for e in events], [float(e.value) for e in events])
    return out


def _read_visualdl(log_dir: str) -> Series:
    try:
        from visualdl import LogReader
    except ImportError as err:
        raise MissingDependencyError(
            f"Reading VisualDL logs needs the visualdl package ({err}). Fix: "
            'pip install "hapi-autoloss[visualdl]".'
        ) from err
    names = _files(log_dir, "vdlrecords")
    # VisualDL shows a folder's newest file only; read the same one.
    path = os.path.join(log_dir, names[-1])
    try:
        reader = LogReader(file_path=path)
        tags = reader.get_tags().get("scalar", [])
    except Exception:  # protobuf's DecodeError: a record cut short (a crash while writing)
        return _read_visualdl_records(path)
    out: Series = {}
    for tag in tags:
        values = reader.get_data("scalar", tag)
        out[tag] = ([int(v.id) for v in values], [float(v.value) for v in values])
    return out


def _read_visualdl_records(path: str) -> Series:
    """Every scalar of a VisualDL file whose record parses, each record alone."""
    from visualdl.proto.record_pb2 import Record
    from visualdl.reader.record_reader import RecordReader

    out: Series = {}
    bad = 0
    for data in RecordReader(filepath=path).get_remain():
        record: Any = Record()
        try:
            record.ParseFromString(data)
        except Exception:
            bad += 1
            continue
        for value in record.values:
            if value.WhichOneof("one_value") == "value":
                steps, values = out.setdefault(value.tag, ([], []))
                steps.append(int(value.id))
                values.append(float(value.value))
    if bad:
        warnings.warn(
            f"The VisualDL file {path!r} is cut short ({bad} unreadable record(s), e.g. a crash "
            "while writing); the points before it are plotted. Fix: none for this file (a run stopped "
            "by Ctrl-C or an exception closes its file cleanly).",
            stacklevel=4,
        )
    return out


def _holds_our_tags(folder: str, reader: str) -> bool:
    """Whether ``folder`` holds logs ``plot_curves`` can draw (a tag of a panel).

    Logs it cannot read (their reader is not installed) count, so the hint still
    names them; a foreign TensorBoard run does not.
    """
    if not os.path.isdir(folder):
        return False
    has_tb, has_vdl = bool(_files(folder, "tfevents")), bool(_files(folder, "vdlrecords"))
    if not {"tensorboard": has_tb, "visualdl": has_vdl, "auto": has_tb or has_vdl}[reader]:
        return False  # checked first: read_scalars would look one level deeper again
    try:
        tags = read_scalars(folder, reader)
    except MissingDependencyError:
        return True
    except PlotError:
        return False
    return any(tag.startswith(prefix) for tag in tags for _, prefix in PANELS)


def _runs_below(log_dir: str, reader: str) -> list[str]:
    """The folders below ``log_dir``, at any depth (``exp1/earlier-run-*`` too, as TensorBoard
    and VisualDL list them), whose logs ``plot_curves`` can draw."""
    runs = []
    for root, dirs, _ in os.walk(log_dir):
        dirs.sort()
        if root != log_dir and _holds_our_tags(root, reader):
            runs.append(root)
    return runs


def read_scalars(log_dir: str | os.PathLike[str], reader: str = "auto") -> Series:
    """Every scalar tag in ``log_dir`` as ``{tag: (steps, values)}``.

    ``reader``: ``"tensorboard"``, ``"visualdl"``, or ``"auto"`` (TensorBoard's
    files when the folder has both).
    """
    log_dir = os.fspath(log_dir)
    if reader not in READERS:
        raise ValueError(f"Unknown reader {reader!r}. Fix: use one of {', '.join(READERS)}.")
    if not os.path.isdir(log_dir):
        what = "is a file, not a folder" if os.path.exists(log_dir) else "does not exist"
        raise LogDirNotFoundError(
            f"LOGDIR {log_dir!r} {what}. Fix: pass the log_dir given to TensorBoardExport "
            "or VisualDLExport, e.g. runs/quickstart."
        )
    has_tb, has_vdl = bool(_files(log_dir, "tfevents")), bool(_files(log_dir, "vdlrecords"))
    missing = {"tensorboard": not has_tb, "visualdl": not has_vdl, "auto": not (has_tb or has_vdl)}[reader]
    if missing:
        kind = {"tensorboard": "TensorBoard", "visualdl": "VisualDL"}.get(reader, "TensorBoard or VisualDL")
        subdirs = _runs_below(log_dir, reader)
        if subdirs:
            runs = ", ".join(subdirs[:3]) + (f", ... ({len(subdirs)} in all)" if len(subdirs) > 3 else "")
            hint = f"Its subfolders hold runs: {runs}. Fix: pass one run folder, e.g. {subdirs[0]}."
        elif not os.listdir(log_dir):
            hint = "It is empty. Fix: train with TensorBoardExport(log_dir) or VisualDLExport(log_dir) first."
        elif has_tb or has_vdl:
            other, name = ("TensorBoard", "tensorboard") if has_tb else ("VisualDL", "visualdl")
            hint = f"It holds {other} log files. Fix: use --reader auto or --reader {name} (reader='{name}')."
        else:
            hint = "Fix: train with TensorBoardExport(log_dir) or VisualDLExport(log_dir) first."
        raise NoLogsError(f"LOGDIR {log_dir!r} holds no {kind} log file. {hint}")
    if reader == "visualdl" or (reader == "auto" and not has_tb):
        return _read_visualdl(log_dir)
    return _read_tensorboard(log_dir)
