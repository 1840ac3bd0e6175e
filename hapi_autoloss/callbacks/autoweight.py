"""AutoWeightCallback: lets ``model.fit`` train the weights inside ``AutoWeight``."""

from __future__ import annotations

from typing import Any

from paddle.callbacks import Callback

from .. import _hapi
from ..weighting import AutoWeight


class AutoWeightCallback(Callback):
    """Trains the loss's own parameters (σ) with the model's optimizer.

    At train begin it adds every trainable parameter found in the loss to
    ``model``'s optimizer (weight decay 0, learning rate × ``lr_scale``), clears
    their gradients after each real update (``accumulate_grad_batches`` included),
    averages them over ranks under ``paddle.distributed.launch``, and saves them
    with every ``model.save`` (hapi's ``ModelCheckpoint`` too). A second ``fit``
    adds nothing twice.

    Each step it puts ``sigma_<task>`` and ``weight_<task>`` (the values this
    batch is trained with) into ``logs``, so hapi's progress line shows them.

    Args:
        lr_scale: multiplies the optimizer's learning rate for the loss's
            parameters; > 0.
        show_in_progress_bar: add σ and the weights to hapi's progress line.

    Example::

        model.prepare(paddle.optimizer.Adam(1e-3, parameters=model.parameters()),
                      AutoWeight([mse, mse], method="kendall",
                                 task_types=["regression", "regression"]))
        model.fit(train_data, epochs=20, callbacks=[AutoWeightCallback()])
    """

    def __init__(self, lr_scale: float = 1.0, show_in_progress_bar: bool = True) -> None:
        super().__init__()
        if not lr_scale > 0:
            raise ValueError(f"lr_scale must be > 0, got {lr_scale!r}. Fix: e.g. lr_scale=1.0.")
        self.lr_scale = float(lr_scale)
        self.show_in_progress_bar = show_in_progress_bar
        self._weighting: list[AutoWeight] = []

    def on_train_begin(self, logs: Any = None) -> None:
        _hapi.attach(self.model, lr_scale=self.lr_scale)
        self._weighting = list(_hapi.iter_layers(self.model, AutoWeight))
        if self.show_in_progress_bar:
            _hapi.show_in_progress_bar(self.params, list(self._values()))

    def _values(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for aw in self._weighting:
            out.update({f"sigma_{k}": v for k, v in aw.sigmas().items()})
            out.update({f"weight_{k}": v for k, v in aw.weights().items()})
        return out

    def on_train_batch_begin(self, step: int, logs: Any = None) -> None:
        if logs is not None and self._weighting:
            logs.update(self._values())

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if logs is not None and self._weighting:
            logs.update(self._values())
