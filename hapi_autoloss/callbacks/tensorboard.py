"""TensorBoardExport: σ, task weights, per-task losses and top-k ratio in TensorBoard."""

from __future__ import annotations

import os
import socket
import struct
import time

from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.record_writer import masked_crc32c
from tensorboardX.summary import text as text_summary

from ._earlier_run import marked
from ._logfile import AppendOnlyFile
from ._scalars import ScalarExport


class _EventFile(AppendOnlyFile):
    """An append-only TensorBoard event file, written in the caller's thread.

    tensorboardX's ``SummaryWriter`` hands each event to a background thread
    through a multiprocessing queue (about 50 µs per scalar here) and its
    ``flush()`` fsyncs the file without waiting for that queue, so the last
    points of a run that raises are lost or cost a lot to keep. This writes the
    same records (tensorboardX's protos, TFRecord framing with masked CRC32C),
    all of a step's scalars in one event, and ``flush()`` is a plain OS write.
    """

    def __init__(self, log_dir: str, purge_step: int) -> None:
        # The nanosecond suffix keeps files unique and in time order when two runs
        # start in the same second (TensorBoard reads a folder's files by name); the
        # mark tells our files from a user's own SummaryWriter's (_earlier_run.py).
        name = marked(
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            f".{time.time_ns()}.{os.getpid()}"
        )
        self.path = os.path.join(log_dir, name)
        self._file = open(self.path, "wb")  # closed in close()
        # One reusable event per tag set: setting fields is 3x cheaper than building.
        self._templates: dict[tuple[str, ...], Event] = {}
        now = time.time()
        self._write(Event(wall_time=now, step=purge_step, file_version="brain.Event:2"))
        # TensorBoard drops every point at step >= purge_step read before this marker.
        self._write(Event(wall_time=now, step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def _write(self, event: Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(
            header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))
        )

    def write_scalars(self, step: int, values: dict[str, float], walltime: float) -> None:
        tags = tuple(values)
        event = self._templates.get(tags)
        if event is None:
            event = Event(summary=Summary(value=[Summary.Value(tag=tag) for tag in tags]))
            self._templates[tags] = event
        event.wall_time, event.step = walltime, step
        for slot, value in zip(event.summary.value, values.values()):
            slot.simple_value = value
        self._write(event)

    def write_text(self, step: int, tag: str, text: str, walltime: float) -> None:
        self._write(Event(wall_time=walltime, step=step, summary=text_summary(tag, text)))



class TensorBoardExport(ScalarExport):
    """Writes the training curves to TensorBoard event files, live, during ``fit``.

    Tags (one point per written step; the step is the model's global train step,
    1 for a new model's first batch, continued by a later fit of the same model
    and after a resume):

    - ``train/loss``, ``train/<metric>`` every ``every_n_steps`` train steps;
    - ``autoloss/sigma/<task>``, ``autoloss/weight/<task>``: the values the step's
      own forward pass used (σ before that step's update), as hapi's progress
      line and ``TqdmProgressBar`` show them for that step; and
      ``autoloss/loss/<task>`` (the raw, unweighted loss), from every
      ``AutoWeight`` in the loss;
    - ``topk/ratio``: the kept fraction of each ``TopKLoss`` (a second one is
      ``topk/ratio/1``...);
    - ``lr``: the learning rate the step's update used (read as the optimizer updates);
    - ``eval/loss`` (the mean over the evaluation set, each batch weighted by its
      size) and ``eval/<metric>`` after each evaluation of ``fit(eval_data=...)``;
    - ``autoloss/config`` (text, shown as ``autoloss/config/text_summary``): the
      AutoWeight and TopKLoss settings, once per run.

    Only rank 0 of ``paddle.distributed.launch`` writes. Each written step is on
    disk before training goes on, so an exception, Ctrl-C or a killed process
    loses nothing logged before it. The step is the model's, not the callback's:
    it is saved by ``model.save``; after ``model.load`` +
    ``hapi_autoloss.load_state`` (or ``BackupAndRestore``), or in a second
    ``fit`` of the same model, the run carries on from it and the points after
    it are replaced, not duplicated. A new model (step 0) moves the log files an
    earlier run of the exporters wrote in ``log_dir`` (named ``*.hapi-autoloss``)
    into a subfolder ``earlier-run-<its start time>``,
    listed as a run of its own, also with an exporter an earlier run used: use
    one folder per experiment. Training data that gives no batch raises a
    ``ValueError`` saying so.

    Args:
        log_dir: the folder (created if needed). Open it with
            ``tensorboard --logdir <log_dir>``.
        every_n_steps: write the train points every this many steps (>= 1).

    Example::

        model.fit(train_data, eval_data=val_data, epochs=10, callbacks=[
            AutoWeightCallback(), TensorBoardExport("runs/exp1")])
        # then: tensorboard --logdir runs
    """

    def __init__(self, log_dir: str | os.PathLike[str], every_n_steps: int = 1) -> None:
        super().__init__(log_dir, every_n_steps)

    def _open(self, start_step: int) -> _EventFile:
        # A new model (step 0) finds the folder's earlier run moved away (and purges at 0
        # whatever could not be moved); a continuing or resumed one what comes after its step.
        return _EventFile(self.log_dir, 0 if start_step == 0 else start_step + 1)
