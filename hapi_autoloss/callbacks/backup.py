"""BackupAndRestore: start the same script again after a crash and get the same run."""

from __future__ import annotations

import os
import pickle
import random
import warnings
from typing import Any

import numpy as np
import paddle
from paddle.callbacks import Callback

from .. import _hapi
from ._checks import check_has_batches, local_folder

STATE_KEY = "BackupAndRestore"
PREFIX = "backup-"


def _rng_state() -> np.ndarray:
    """Paddle's, NumPy's and Python's global random states (dropout, augmentation), as
    pickled bytes in a uint8 array."""
    blob = pickle.dumps((paddle.get_rng_state(), np.random.get_state(), random.getstate()))
    return np.frombuffer(blob, dtype=np.uint8).copy()


def _set_rng_state(blob: np.ndarray) -> None:
    paddle_state, numpy_state, python_state = pickle.loads(np.asarray(blob, dtype=np.uint8).tobytes())
    paddle.set_rng_state(paddle_state)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


class BackupAndRestore(Callback):
    """Backs the run up after every epoch and, when the same script starts again after
    a crash (``kill -9`` included), restores it and trains only the epochs that remain.

    Named and shaped after Keras's ``BackupAndRestore``. A backup is a ``model.save``
    into ``backup_dir``, written once an epoch and its evaluation are done: the network,
    the optimizer (its LR scheduler too), σ and its moments, every ``TopKLoss``'s k,
    rlw's random stream, the positions of ``TopKScheduler`` and the exporters, the
    epochs and steps done in this ``fit``, and each rank's global random states
    (Paddle's, NumPy's, Python's). On restart it restores all of that before any other
    callback starts, skips the done epochs (no batch, no callback, no evaluation; also
    counted off ``num_iters``) and puts hapi's ``DistributedBatchSampler`` at the epoch
    it had reached, so ``shuffle=True`` gives the same batches: the run ends bit for bit
    as an uninterrupted one, and the exporters' files hold every step once. Epochs are
    counted within this ``fit``, so a script may train or load before it (an earlier fit
    with exporters needs its own log folder: rerun on a fresh model, it moves the
    folder's earlier run into a subfolder ``earlier-run-<time>``, the crashed run's
    later steps included).

    Each backup is complete before the previous one is removed; a crash while
    writing leaves the previous one. A run that finished (all epochs, or stopped by
    ``EarlyStopping``) started again trains nothing and says so; delete
    ``backup_dir`` to train from scratch. Unlike Keras's, the backup is kept after
    training, so that a finished run is recognised.

    Not restored: ``EarlyStopping``'s and ``ReduceLROnPlateau``'s counters, and the order
    of a data loader you built yourself without a ``DistributedBatchSampler``.

    Args:
        backup_dir: a local folder for this run's backups (one run per folder).

    Example::

        model.fit(train_data, epochs=20, shuffle=True, callbacks=[
            AutoWeightCallback(), BackupAndRestore("runs/exp1/backup"),
            TensorBoardExport("runs/exp1")])
        # killed at epoch 7? run the same script again: it resumes after epoch 6.
    """

    def __init__(self, backup_dir: str | os.PathLike[str]) -> None:
        super().__init__()
        backup_dir = local_folder(backup_dir, "BackupAndRestore", "backup_dir", "runs/exp1/backup")
        self.backup_dir = backup_dir
        self.serial = 0  # backups written by this run, across restarts
        self.finished = False
        self.restored_from: str | None = None
        self._done = self._steps = self._epochs = 0
        self._base = {"epoch": 0, "step": 0}

    # ------------------------------------------------------------ saved with each backup

    def state_dict(self) -> dict[str, Any]:
        """The backup count and, counted within this fit (a script may train before it), the
        epochs and steps done; the random states go to one file per rank."""
        now = _hapi.progress(self.model)
        return {"serial": self.serial, "finished": self.finished, "epochs": self._epochs,
                "fit_epoch": now["epoch"] - self._base["epoch"], "fit_step": now["step"] - self._base["step"]}

    def set_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing: a backup is read by :meth:`set_params` itself, not by ``load_state``."""

    # ------------------------------------------------------------ hooks

    def set_params(self, params: Any) -> None:
        # hapi calls this for every callback before any on_train_begin: restoring here
        # means the exporters and schedulers start from the restored positions.
        super().set_params(params)
        epochs = params.get("epochs") if isinstance(params, dict) else None
        if epochs is None:  # evaluate / predict
            return
        model: Any = self.model
        self._epochs, self._done, self._steps, self.finished, self.restored_from = int(epochs), 0, 0, False, None
        self._base = _hapi.progress(model)
        path = self.latest()
        if path is None:
            return
        state = _hapi.read_state(path)
        mine = state.get("callbacks", {}).get(STATE_KEY, {})
        try:  # before model.load: a refused backup changes nothing
            _hapi.check_state(model, path, state)
        except ValueError as e:
            raise ValueError(
                f"BackupAndRestore cannot resume the run backed up in {self.backup_dir!r}: {e} Or, to "
                f"start a new run with this loss, delete {self.backup_dir!r} or pass another backup_dir."
            ) from None
        model.load(path)
        _hapi.load_state(model, path)
        rng = f"{path}.rng{_hapi.world()[0]}.npy"
        if os.path.exists(rng):
            _set_rng_state(np.load(rng))
        self.serial = int(mine.get("serial", 0))
        self._done, self._steps = int(mine.get("fit_epoch", 0)), int(mine.get("fit_step", 0))
        now = _hapi.progress(model)
        self._base = {"epoch": now["epoch"] - self._done, "step": now["step"] - self._steps}
        self.finished = bool(mine.get("finished")) or self._done >= self._epochs
        self.restored_from = path

    def on_train_begin(self, logs: Any = None) -> None:
        check_has_batches(self.params)
        _hapi.register_state(self.model, STATE_KEY, self)
        os.makedirs(self.backup_dir, exist_ok=True)
        callbacks = _hapi.callback_list_of(self)
        if callbacks is None:
            raise RuntimeError(
                "BackupAndRestore must be passed to model.fit(callbacks=[...]); it was called "
                "some other way. Fix: model.fit(..., callbacks=[BackupAndRestore(dir)])."
            )
        skip = self._epochs if self.finished else self._done
        # Each backup is written once the epoch before it and its evaluation are done.
        _hapi.skip_done_epochs(self.model, callbacks, skip, self._steps, self._backup)
        if _hapi.world()[0] != 0 or self.restored_from is None:
            return
        if self.finished:
            warnings.warn(
                f"BackupAndRestore: the run backed up in {self.backup_dir!r} has finished "
                f"({self._done} epochs done), so this fit trains nothing. Fix: delete that folder, "
                "or use another backup_dir, to train again.",
                stacklevel=2,
            )
        else:
            print(f"BackupAndRestore: restored {self.restored_from} after epoch {self._done}; "
                  f"training epochs {self._done + 1}..{self._epochs}.")

    def on_train_end(self, logs: Any = None) -> None:
        if not (self.finished and self.restored_from is not None):
            self.finished = True
            self._backup()

    # ------------------------------------------------------------ files

    def _backup(self) -> None:
        """Every rank's random states, then one complete ``model.save``, then the older backups go."""
        self.serial += 1
        prefix = os.path.join(self.backup_dir, f"{PREFIX}{self.serial}")
        rank, nranks = _hapi.world()
        np.save(f"{prefix}.rng{rank}.npy", _rng_state())
        if nranks > 1:
            paddle.distributed.barrier()  # every rank's file exists before rank 0 completes the backup
        model: Any = self.model
        model.save(prefix)
        if rank != 0:
            return
        keep = os.path.basename(prefix)
        for name in os.listdir(self.backup_dir):
            stem = name.split(".")[0]
            if stem.startswith(PREFIX) and stem != keep:
                os.remove(os.path.join(self.backup_dir, name))

    def latest(self) -> str | None:
        """The newest complete backup in ``backup_dir`` (by the progress stored in it), or None."""
        return _hapi.newest_checkpoint(self.backup_dir)
