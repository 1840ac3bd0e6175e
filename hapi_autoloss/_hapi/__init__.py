"""The one place that touches the internals of ``paddle.Model`` (hapi).

Checked against paddlepaddle 3.3.1 (``paddle/hapi/model.py``, ``paddle/hapi/callbacks.py``,
``paddle/optimizer/*.py``). Every other module goes through the names exported here,
so a change in hapi is fixed in this package. What hapi gets wrong for a loss that
owns parameters, and where we fix it:

1. The optimizer was built from ``model.parameters()``, the network's only.
   -> ``optimizer.attach`` adds the loss's parameters to ``model._optimizer`` (flat
   list or a complete param group), with no weight decay and no clipping.
2. ``train_batch`` clears only ``model.network``'s gradients after an update.
   -> ``attach`` makes ``network.clear_gradients`` clear them too; hapi calls it
   exactly after each real update, in the AMP path as well.
3. Under ``paddle.distributed.launch`` hapi wraps only the network in DataParallel.
   -> ``attach`` averages the loss's gradients over ranks right before ``minimize``.
4. ``Model.save`` / ``Model.load`` cover the network and the optimizer only.
   -> ``state.wrap_save`` makes ``model.save`` also write ``<path>.autoloss``;
   ``state.load_state`` reads it.
5. ``fit`` has no initial epoch. -> ``progress`` counts epochs and steps across
   runs and lets a restored run skip the epochs it has done.
"""

from .decay import asks_no_decay
from .logs import SILENT, before_epoch_end, forget_earlier_fits, is_progbar, progbar_on, progbar_prints
from .lr import current_lr, keep_update_lr, schedule_count, update_lr
from .model import (
    bind_network,
    callback_list_of,
    check_attached,
    forward_again,
    iter_layers,
    lacks_eval_data,
    loss_layer,
    loss_parameters,
    metric_names,
    optimizer_of,
    others_in_fit,
    prepared_loss,
    require_dynamic_mode,
    show_in_progress_bar,
    world,
)
from .optimizer import attach, is_attached
from .owner import check_other_train
from .policy import in_running_fit
from .progress import after_train_batch, progress, skip_done_epochs
from .registry import freeze_state, register_state
from .state import (
    STATE_SUFFIX,
    check_state,
    checkpoint_info,
    load_state,
    newest_checkpoint,
    read_state,
    save_state,
)

__all__ = [
    "SILENT",
    "STATE_SUFFIX",
    "after_train_batch",
    "asks_no_decay",
    "attach",
    "before_epoch_end",
    "bind_network",
    "callback_list_of",
    "check_attached",
    "check_other_train",
    "check_state",
    "checkpoint_info",
    "current_lr",
    "forget_earlier_fits",
    "forward_again",
    "freeze_state",
    "in_running_fit",
    "is_attached",
    "is_progbar",
    "iter_layers",
    "keep_update_lr",
    "lacks_eval_data",
    "load_state",
    "loss_layer",
    "loss_parameters",
    "metric_names",
    "newest_checkpoint",
    "optimizer_of",
    "others_in_fit",
    "prepared_loss",
    "progbar_on",
    "progbar_prints",
    "progress",
    "read_state",
    "register_state",
    "require_dynamic_mode",
    "save_state",
    "schedule_count",
    "show_in_progress_bar",
    "skip_done_epochs",
    "update_lr",
    "world",
]
