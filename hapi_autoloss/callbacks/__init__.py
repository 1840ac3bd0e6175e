"""Callbacks for ``paddle.Model.fit``, one concern each."""

from .autoweight import AutoWeightCallback
from .progress import TqdmProgressBar
from .tensorboard import TensorBoardExport
from .topk_scheduler import TopKScheduler
from .visualdl import VisualDLExport

__all__ = ["AutoWeightCallback", "TensorBoardExport", "TopKScheduler", "TqdmProgressBar", "VisualDLExport"]
