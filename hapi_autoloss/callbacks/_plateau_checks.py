"""The checks ``TopKOnPlateau`` makes: at construction, the monitored key and its mode; at train
begin, before any step, what it would reduce, what it monitors, and a TopKLoss it reduced in
another model's run."""

from __future__ import annotations

import difflib
import warnings
from typing import TYPE_CHECKING

from .. import _hapi
from ..topk import TopKLoss
from .topk_scheduler import TopKScheduler

if TYPE_CHECKING:
    from .topk_plateau import TopKOnPlateau


# mode='auto': a name containing one of these is better higher / lower (lowercased; both or neither: refused)
HIGHER_IS_BETTER = ("acc", "precision", "recall", "auc", "f1", "iou", "map", "dice")
LOWER_IS_BETTER = ("err", "mse", "mae", "rmse", "mape", "loss")


def check_monitor(monitor: object) -> str:
    """``monitor`` as given, refused when it is not a metric name: empty, or hapi's ``'loss'``."""
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"monitor must be a metric name such as 'acc', got {monitor!r}. Fix: monitor='acc'.")
    if monitor == "loss":
        raise ValueError(
            "TopKOnPlateau cannot monitor 'loss': the evaluation loss is the TopKLoss at the current k, which "
            "rises at every reduction (the hardest fraction's mean is above the mean of all), so k would "
            "shrink at every evaluation. Fix: monitor a metric, e.g. monitor='acc' with "
            "model.prepare(..., metrics=[paddle.metric.Accuracy()])."
        )
    return monitor


def resolve_mode(monitor: str, mode: str) -> str:
    """'max' or 'min': ``mode`` itself, or for 'auto' the one the name tells (refused when it does not)."""
    if mode != "auto":
        return mode
    name = monitor.lower()
    higher = any(word in name.replace("mape", "") for word in HIGHER_IS_BETTER)  # "map" is not in "mape"
    lower = any(word in name for word in LOWER_IS_BETTER)
    if higher == lower:
        raise ValueError(
            f"mode='auto' cannot tell whether a higher {monitor!r} is better. Fix: mode='max' (higher is "
            "better, as accuracy, precision, recall, AUC, F1, IoU) or mode='min' (lower is better, as an "
            "error rate or MSE)."
        )
    return "max" if higher else "min"


def missing_monitor_fix(monitor: str, names: list[str]) -> str:
    """The fix for a monitored key the evaluation will not log, given the keys it will (``names``)."""
    metrics = [name for name in names if name != "loss"]
    if not metrics:
        return (
            "Fix: add a metric to model.prepare, e.g. model.prepare(..., metrics=[paddle.metric.Accuracy()]) "
            "and monitor='acc'."
        )
    best = [name for name in metrics if name.startswith(monitor)] or difflib.get_close_matches(monitor, metrics, 1)
    return f"Fix: monitor one of them, e.g. monitor={(best or metrics)[0]!r}."


def check_saved_monitor(saved: str, monitor: str) -> bool:
    """Whether a saved state's best value and wait go on: refused when it is of another key than
    ``monitor``; False (start them over, with a warning) for a state that monitored 'loss'."""
    if saved == "loss":  # a state of a version that took 'loss' (monitor itself never is: refused)
        warnings.warn(
            f"The saved TopKOnPlateau monitored 'loss', which is refused now (the evaluation loss rises at "
            f"every reduction of k): its ratios go on, its best value and wait start over for {monitor!r}. "
            "Fix: nothing to do; the next evaluations set the best value.",
            stacklevel=3,
        )
        return False
    if saved != monitor:
        raise ValueError(
            f"The saved TopKOnPlateau monitored {saved!r}, this one monitors {monitor!r}, so its best value "
            f"would be compared with another quantity. Fix: monitor={saved!r}."
        )
    return True


def check_plateau_fit(plateau: TopKOnPlateau, layers: list[TopKLoss]) -> None:
    """Raise when ``plateau`` cannot work in this ``fit``: ``layers`` (the model's TopKLoss
    layers) empty or with a rule it cannot reduce, a TopKScheduler beside it, no eval_data,
    or a monitored key the evaluation will not log."""
    loss = _hapi.prepared_loss(plateau.model)
    if not layers:
        raise ValueError(
            f"TopKOnPlateau found no TopKLoss in the model's loss ({type(loss).__name__}), so it has "
            "no k to reduce. Fix: prepare the model with hapi_autoloss.TopKLoss(..., ratio=1.0), or drop "
            "the callback."
        )
    for layer in layers:
        if layer.band is not None:
            raise ValueError(
                f"TopKOnPlateau reduces ratio, but a TopKLoss uses band={layer.band}, which has none. "
                "Fix: build it with ratio=/drop= instead of band=."
            )
        if layer.anneal_refusal is not None:
            raise ValueError(f"TopKOnPlateau cannot reduce a TopKLoss's ratio: {layer.anneal_refusal}")
        if not plateau.scale_drop and layer.drop >= plateau.min_ratio:
            raise ValueError(
                f"A TopKLoss drops {layer.drop} and scale_drop=False keeps it, so ratio may reach "
                f"min_ratio={plateau.min_ratio} with nothing left. Fix: min_ratio > drop, or scale_drop=True."
            )
    others = _hapi.others_in_fit(plateau)
    if any(isinstance(c, TopKScheduler) for c in others):
        raise ValueError(
            "TopKOnPlateau and TopKScheduler both set the ratio in this fit, so each would undo the "
            "other. Fix: use one of them."
        )
    if any(isinstance(c, type(plateau)) for c in others):
        raise ValueError(
            "Two TopKOnPlateau callbacks in this fit would each reduce the ratio, so the reductions would "
            "compound. Fix: pass one TopKOnPlateau."
        )
    if _hapi.lacks_eval_data(plateau.model):
        raise ValueError(
            f"TopKOnPlateau monitors {plateau.monitor!r} of the evaluation, but fit got no eval_data, so "
            "it would never evaluate. Fix: model.fit(train_data, eval_data=val_data, ...)."
        )
    names = _hapi.metric_names(plateau.model)
    if plateau.monitor not in names:
        raise ValueError(
            f"TopKOnPlateau monitors {plateau.monitor!r}, which the evaluation logs will not have: they "
            f"hold {names}. {missing_monitor_fix(plateau.monitor, names)}"
        )


def warn_reduced_layers(layers: list[TopKLoss], reduced: list[TopKLoss]) -> None:
    """Warn when a new run's layer is one of ``reduced``, the layers the plateau reduced in its run on
    another model: its k is the layer's own state and goes on (as σ of a reused AutoWeight does)."""
    again = [layer for layer in layers if any(layer is x for x in reduced)]
    if again:
        warnings.warn(
            f"This TopKLoss was reduced to ratio={again[0].ratio:.4g} by TopKOnPlateau in another "
            "paddle.Model's fit, and k is the loss's own state: this model starts mining at that ratio "
            "(TopKOnPlateau's best value and wait start over). Fix: build a new TopKLoss for a fresh "
            "start (or set its ratio), or nothing if going on is intended.",
            stacklevel=3,
        )
