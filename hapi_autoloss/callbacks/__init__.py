"""Callbacks for ``paddle.Model.fit``, one concern each."""

from .autoweight import AutoWeightCallback
from .backup import BackupAndRestore
from .progress import TqdmProgressBar
from .tensorboard import TensorBoardExport
from .topk_plateau import TopKOnPlateau
from .topk_scheduler import TopKScheduler
from .visualdl import VisualDLExport

__all__ = [
    "AutoWeightCallback",
    "BackupAndRestore",
    "TensorBoardExport",
    "TopKOnPlateau",
    "TopKScheduler",
    "TqdmProgressBar",
    "VisualDLExport",
]
