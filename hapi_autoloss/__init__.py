"""hapi-autoloss: learned loss weights and hard-example mining for ``paddle.Model``."""

from ._hapi import attach, load_state
from ._version import __version__
from .checkpoint import checkpoint_info, latest_checkpoint
from .loop import param_groups, sync_gradients
from .losses import DiceLoss
from .topk import TopKLoss
from .weighting import AutoWeight

__all__ = [
    "AutoWeight",
    "DiceLoss",
    "TopKLoss",
    "__version__",
    "attach",
    "checkpoint_info",
    "latest_checkpoint",
    "load_state",
    "param_groups",
    "sync_gradients",
]
