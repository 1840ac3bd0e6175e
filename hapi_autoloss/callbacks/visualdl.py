"""VisualDLExport: σ, task weights, per-task losses and top-k ratio in VisualDL."""

from __future__ import annotations

import os
import time
from typing import Any

from ._earlier_run import MARK, marked
from ._logfile import AppendOnlyFile
from ._scalars import ScalarExport

INSTALL_HINT = 'pip install "hapi-autoloss[visualdl]"'


def _import_visualdl() -> dict[str, Any]:
    try:
        import visualdl  # noqa: F401  (the package first: its modules may be cached)
        from visualdl.component import base_component
        from visualdl.proto.record_pb2 import Record
        from visualdl.reader.record_reader import RecordReader
        from visualdl.writer.record_writer import RecordWriter
    except ImportError as err:
        raise ImportError(
            f"VisualDLExport needs the visualdl package, which is not installed ({err}). "
            f"Fix: {INSTALL_HINT}, or use TensorBoardExport."
        ) from err
    return {"RecordReader": RecordReader, "components": base_component, "Record": Record,
            "RecordWriter": RecordWriter}


def newest_vdl_file(log_dir: str) -> str | None:
    """Our newest file in ``log_dir``, which a resume copies forward: the greatest ``vdlrecords``
    name with our mark (a user's own ``LogWriter`` file started later sorts after it), else the
    greatest of all (files of versions before the mark)."""
    if not os.path.isdir(log_dir):
        return None
    names = sorted(n for n in os.listdir(log_dir) if "vdlrecords" in n)
    ours = [n for n in names if n.endswith(MARK)]
    names = ours or names
    return os.path.join(log_dir, names[-1]) if names else None


def _clean(tag: str) -> str:
    return tag.replace("%", "_")  # VisualDL refuses '%' in tags


class _RecordFile(AppendOnlyFile):
    """An append-only VisualDL record file, written in the caller's thread.

    VisualDL's ``LogWriter`` queues each record to a background thread (about
    20 µs a scalar here) and registers no ``atexit`` close, so a run that dies
    loses what is queued. This writes the same records with VisualDL's own record
    builders and framing, and ``flush()`` is a plain OS write.

    VisualDL shows only the newest file of a folder and has no purge, so on resume
    the new file first copies the earlier run's scalars and texts up to
    ``keep_until``: the folder's newest file then holds the whole run, each step once.
    """

    def __init__(self, log_dir: str, keep_until: int | None, vdl: dict[str, Any]) -> None:
        self._vdl = vdl
        previous = newest_vdl_file(log_dir) if keep_until is not None else None
        # Same naming as LogWriter; the nanosecond suffix makes this file the newest
        # even when the previous run started in the same second; the mark tells our
        # files from a user's own LogWriter's (_earlier_run.py).
        name = marked(f"vdlrecords.{int(time.time()):010d}.log.{time.time_ns()}.{os.getpid()}")
        self.path = os.path.join(log_dir, name)
        self._file = open(self.path, "wb")  # closed in close()
        self._writer = vdl["RecordWriter"](self._file)
        self._templates: dict[str, Any] = {}
        self._add(vdl["components"].meta_data(tag="meta_data_tag", display_name="", step=0, walltime=self._ms()))
        if previous is not None and keep_until is not None:
            self._copy_forward(previous, keep_until)
        self._file.flush()

    @staticmethod
    def _ms(walltime: float | None = None) -> int:
        return round((time.time() if walltime is None else walltime) * 1000)

    def _add(self, record: Any) -> None:
        self._writer.write(record.SerializeToString())

    def _copy_forward(self, previous: str, keep_until: int) -> None:
        # VisualDL's RecordReader splits the file; each record is parsed alone, so a
        # record cut short by a machine crash is skipped instead of failing them all
        # (VisualDL's LogReader gives up on the whole file).
        Record = self._vdl["Record"]
        for data in self._vdl["RecordReader"](filepath=previous).get_remain():
            record = Record()
            try:
                record.ParseFromString(data)
            except Exception:  # a truncated last record
                continue
            if not record.values:
                continue
            value = record.values[0]
            if value.WhichOneof("one_value") in ("value", "text") and value.id <= keep_until:
                self._writer.write(data)

    def write_scalars(self, step: int, values: dict[str, float], walltime: float) -> None:
        ms = self._ms(walltime)
        for tag, value in values.items():
            record = self._templates.get(tag)
            if record is None:  # one reusable record per tag: cheaper than building one
                record = self._vdl["components"].scalar(tag=_clean(tag), value=0.0, step=0, walltime=0)
                self._templates[tag] = record
            slot = record.values[0]
            slot.id, slot.timestamp, slot.value = step, ms, value
            self._add(record)

    def write_text(self, step: int, tag: str, text: str, walltime: float) -> None:
        record = self._vdl["components"].text(tag=_clean(tag), text_string=text, step=step, walltime=self._ms(walltime))
        self._add(record)



class VisualDLExport(ScalarExport):
    """Writes the training curves to VisualDL record files, live, during ``fit``.

    Same tags, steps, rank and durability rules as ``TensorBoardExport``:

    - ``train/loss``, ``train/<metric>`` every ``every_n_steps`` train steps;
    - ``autoloss/sigma/<task>``, ``autoloss/weight/<task>`` (the values the step's
      forward used: σ before that step's update), ``autoloss/loss/<task>``;
    - ``topk/ratio``, ``lr``, ``eval/loss`` (the set's mean, batches weighted by
      size), ``eval/<metric>``;
    - ``autoloss/config`` (text), once per run.

    VisualDL shows only a folder's newest record file and cannot purge, so a
    continuing run (a model at step s > 0: a second ``fit``, a resume) starts its
    file with the earlier points up to step s, copied forward: the run reads as
    one curve, each step once, and the points a crashed run wrote after its
    checkpoint are replaced. Older files are left as they are (VisualDL ignores
    them; the newest holds the whole run, so n fits write about n²/2 fits' points
    to disk). A new model (step 0) moves the folder's earlier run (the exporters' own files) into a subfolder
    ``earlier-run-<its start time>`` (a run of its own) and starts an empty file,
    also with an exporter an earlier run used.

    Needs ``pip install "hapi-autoloss[visualdl]"``.

    Args:
        log_dir: the folder (created if needed). Open it with
            ``visualdl --logdir <log_dir>``.
        every_n_steps: write the train points every this many steps (>= 1).

    Example::

        model.fit(train_data, epochs=10, callbacks=[
            AutoWeightCallback(), VisualDLExport("runs/exp1")])
        # then: visualdl --logdir runs
    """

    def __init__(self, log_dir: str | os.PathLike[str], every_n_steps: int = 1) -> None:
        self._vdl = _import_visualdl()  # fail at construction, not at train begin
        super().__init__(log_dir, every_n_steps)

    def _open(self, start_step: int) -> _RecordFile:
        return _RecordFile(self.log_dir, None if start_step == 0 else start_step, self._vdl)
