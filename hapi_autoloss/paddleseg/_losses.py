"""Our losses as PaddleSeg components: the classes that ``manager.LOSSES`` gets.

Checked against PaddleSeg 2.8.0 on paddlepaddle 3.3.1. Every loss here returns shape ``[1]``,
not a 0-d tensor: PaddleSeg 2.8.0's ``train`` logs ``loss.numpy()[0]`` for each loss, which
raises an IndexError on the 0-d tensors that paddle 3 reductions return.
"""

from __future__ import annotations

import math
from typing import Any

import paddle
from paddleseg.cvlibs import manager

from .. import topk as _topk
from .._args import is_real
from ..weighting import autoweight as _autoweight
from . import _attached, _epochs, _grad, _loss_args
from ._safe_losses import SafeCrossEntropyLoss, SafeDiceLoss, _labels

__all__ = ["AutoWeight", "SafeCrossEntropyLoss", "SafeDiceLoss", "TopKLoss"]

# PaddleSeg 2.8.0's losses that fail on paddle 3: CrossEntropyLoss and OhemCrossEntropyLoss mix
# int64 and float32 (TypeError), DiceLoss overwrites the label in place (the next loss sees 0 for
# ignored pixels, and a loss that saved the label fails in backward).
BROKEN = {"CrossEntropyLoss": "SafeCrossEntropyLoss", "DiceLoss": "SafeDiceLoss",
          "OhemCrossEntropyLoss": "TopKLoss"}


def build(loss: Any, what: str) -> Any:
    """A loss given as a Layer, or as a PaddleSeg config dict built from ``manager.LOSSES``."""
    if isinstance(loss, dict):
        if "type" not in loss:
            raise ValueError(f"{what} {loss!r} has no 'type'. Fix: e.g. {{'type': 'SafeDiceLoss'}}.")
        cfg = dict(loss)
        cls = manager.LOSSES[cfg.pop("type")]
        loss = cls(**{k: _built(v, what) for k, v in cfg.items()})
    if type(loss).__name__ in BROKEN and type(loss).__module__.startswith("paddleseg."):
        ours = BROKEN[type(loss).__name__]
        if ours == "TopKLoss":
            ours = _loss_args.ohem_replacement(loss)
        raise ValueError(
            f"{what} is PaddleSeg's {type(loss).__name__}, which fails on paddle 3 (see "
            f"hapi_autoloss.paddleseg). Fix: use {ours} instead."
        )
    if not callable(loss):
        raise TypeError(f"{what} is a {type(loss).__name__}, not a loss. Fix: a Layer or {{'type': ...}}.")
    return loss


def _built(value: Any, what: str) -> Any:
    """A config value with its nested ``{'type': ...}`` dicts (alone or in lists) built, as PaddleSeg's builder."""
    if isinstance(value, dict) and "type" in value:
        return build(value, what)
    if isinstance(value, list):
        return [_built(v, what) for v in value]
    return value


@manager.LOSSES.add_component
class TopKLoss(_topk.TopKLoss):
    """OHEM for PaddleSeg: the mean per-pixel cross-entropy of the hardest pixels (:class:`hapi_autoloss.TopKLoss`).

    Keeps every pixel with loss above ``threshold`` (or true-class probability below ``thresh``,
    PaddleSeg's ``OhemCrossEntropyLoss`` convention), and never fewer than
    ``k = max(ceil(ratio·n), min_kept)`` of the ``n`` non-ignored pixels. ``thresh`` (or
    ``threshold``) without ``ratio`` is ``OhemCrossEntropyLoss(thresh, min_kept)``'s rule: no
    fraction, only the pixels below ``thresh`` and at least ``min_kept`` (``min_kept`` without
    ``ratio`` or ``thresh`` is refused); that rule has no ratio, so ``TopKScheduler`` and ``TopKOnPlateau``
    refuse it (give ``ratio`` to combine both). Unlike PaddleSeg's, it keeps exactly ``min_kept`` (not
    ``min_kept − 1``), uses one ``topk`` instead of a full argsort and never reads a value back to
    the host. Returns ``[1]``.

    Args:
        ratio: fraction of the valid pixels kept at least, in (0, 1]; default 0.7, none with ``thresh``.
        min_kept: the least number of pixels kept (PaddleSeg's ``min_kept``); default 1.
        thresh: PaddleSeg's probability threshold, in (0, 1): same as ``threshold = −ln(thresh)``.
        threshold: a loss threshold instead of ``thresh``.
        ignore_index: label of pixels never kept.
        loss: the per-pixel loss; default ``paddle.nn.CrossEntropyLoss(axis=1, reduction="none")``.
        per: ``"pixel"`` (OHEM), ``"sample"`` (each image's mean) or ``"class"`` (each class's mean
            over the batch's pixels; ``ratio: 1.0`` is the class-balanced CE; ratio and min_kept
            then count classes, not pixels).
        drop, band, num_classes: as in :class:`hapi_autoloss.TopKLoss` (AoRR's dropped fraction,
            the JMLR band rule, the class count for ``per: class``).

    Example (YAML), PaddleSeg's ``OhemCrossEntropyLoss(thresh=0.7, min_kept=10000)``, then a
    ranked range (the hardest 0.5% dropped as likely label noise) and the class-balanced CE::

        loss: {types: [{type: TopKLoss, thresh: 0.7, min_kept: 10000}], coef: [1]}
        loss: {types: [{type: TopKLoss, ratio: 0.1, drop: 0.005}], coef: [1]}
        loss: {types: [{type: TopKLoss, ratio: 1.0, per: class}], coef: [1]}
    """

    def __init__(self, ratio: float | None = None, min_kept: int | None = None, thresh: float | None = None,
                 threshold: float | None = None, ignore_index: int = 255, per: str = "pixel",
                 loss: Any = None, drop: float = 0.0, band: Any = None, num_classes: int | None = None) -> None:
        rule = f"thresh={thresh!r}" if thresh is not None else f"threshold={threshold!r}"
        if thresh is not None:
            if threshold is not None or loss is not None:
                raise ValueError("thresh (a cross-entropy probability) was given with threshold or loss. "
                                 "Fix: give thresh alone, or threshold (in loss units) with your loss.")
            if not is_real(thresh) or not 0 < thresh < 1:
                raise ValueError(f"thresh must be a probability in (0, 1), got {thresh!r}. Fix: e.g. thresh=0.7.")
            threshold = -math.log(float(thresh))
        ratio, min_kept = _loss_args.topk_ratio(ratio, min_kept, threshold, band)
        if loss is None:
            loss = paddle.nn.CrossEntropyLoss(axis=1, reduction="none", ignore_index=int(ignore_index))
        super().__init__(build(loss, "TopKLoss's loss"), ratio=ratio, per=per, ignore_index=ignore_index,
                         min_kept=min_kept, threshold=threshold, drop=drop, band=band, num_classes=num_classes)
        self._ohem_rule = rule if ratio == _loss_args.OHEM_RATIO and self.threshold is not None else None

    @property
    def anneal_refusal(self) -> str | None:
        """OHEM's rule (thresh without ratio) has no ratio for TopKScheduler or TopKOnPlateau to change."""
        if self._ohem_rule is None or self.ratio != _loss_args.OHEM_RATIO:
            return None
        return _loss_args.ohem_anneal_refusal(self._ohem_rule)

    def forward(self, *inputs: paddle.Tensor) -> paddle.Tensor:
        logits, labels = inputs
        return super().forward(logits, _labels(labels)).reshape([1])


def _task_names(losses: list[Any]) -> list[str]:
    names: list[str] = []
    for loss in losses:
        base = type(loss).__name__.removeprefix("Safe").removesuffix("Loss").lower() or "loss"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}{n}"
        names.append(name)
    return names


@manager.LOSSES.add_component
class AutoWeight(_autoweight.AutoWeight):
    """:class:`hapi_autoloss.AutoWeight` for PaddleSeg: several losses on one output, weighted by
    a learned (or fixed) method, in place of ``MixedLoss``. Returns ``[1]``.

    Args:
        losses: the sub-losses, as in ``MixedLoss``: Layers, or config dicts (built from
            ``manager.LOSSES``). PaddleSeg's own ``CrossEntropyLoss``/``DiceLoss``/``OhemCrossEntropyLoss``
            fail on paddle 3 and are refused: use ``SafeCrossEntropyLoss``, ``SafeDiceLoss``, ``TopKLoss``.
        method: ``"kendall"`` (default), ``"liebel"``, ``"uw_so"``, ``"fixed"``..., or a gradient-level
            one (``"pcgrad"``, ``"mgda"``, ``"cagrad"``, ``"imtl"``, ``"nash_mtl"``, ``"aligned_mtl"``,
            ``"db_mtl"``, ``"gradnorm"``: the parameters both losses reach are shared, found at
            the first step; one instance per output, as a config builds them), or ``"dwa"``,
            ``"stch"``, whose epochs end every ``len(batch_sampler)`` iterations of ``train``
            (``_epochs``). Not ``famo``, which needs a forward after each update that ``train`` never makes.
        names: task names (default from the classes: ``crossentropy``, ``dice``...).
        ignore_index: if given (PaddleSeg's builder adds the dataset's), the entries of ``losses``
            that set none take it, and every sub-loss that has one must agree.
        **options: the method's options (``init``, ``clamp``, ``weights``...).

    Train it through ``paddleseg.core.train`` after ``hapi_autoloss.paddleseg.attach(model, losses,
    optimizer)``. Example (YAML)::

        loss:
          types:
            - type: AutoWeight
              method: liebel
              losses: [{type: SafeCrossEntropyLoss}, {type: SafeDiceLoss}]
          coef: [1]
    """

    def __init__(self, losses: list[Any], method: str = "kendall", names: list[str] | None = None,
                 ignore_index: int | None = None, **options: Any) -> None:
        if not isinstance(losses, (list, tuple)) or not losses:
            raise TypeError(f"losses must be a non-empty list, as in MixedLoss, got {losses!r}. "
                            "Fix: losses=[{'type': 'SafeCrossEntropyLoss'}, {'type': 'SafeDiceLoss'}].")
        losses = _loss_args.with_ignore_index(losses, ignore_index)  # the dataset's, where an entry sets none
        fns = [build(f, f"AutoWeight's losses[{i}]") for i, f in enumerate(losses)]
        for i, f in enumerate(fns):
            own = getattr(f, "ignore_index", None)
            if ignore_index is not None and own is not None and int(own) != int(ignore_index):
                fix = ("write ignore_index in each entry of AutoWeight's losses as the dataset's, or leave it out "
                       "there to take the dataset's" if isinstance(losses[i], dict) else f"build it with "
                       f"ignore_index={ignore_index}, e.g. {type(f).__name__}(ignore_index={ignore_index})")
                raise ValueError(f"losses[{i}] ignores label {own}, AutoWeight (the dataset) {ignore_index}. "
                                 f"Fix: {fix}.")
        names = list(names) if names is not None else _task_names(fns)
        if len(names) != len(fns):
            raise ValueError(f"{len(names)} names for {len(fns)} losses. Fix: one name per loss.")
        options.setdefault("task_types", ["classification"] * len(fns))
        super().__init__(dict(zip(names, fns)), method=method, routing="shared", **options)
        self.ignore_index = ignore_index
        why = _epochs.unsupported(self.weighting)
        if why is not None:
            raise ValueError(
                f"method={self.method!r} {why}. Fix: use one of {_epochs.supported()}, or train through "
                "paddle.Model.fit with AutoWeightCallback."
            )
        _epochs.track(self)  # dwa, stch: the iteration it last saw, to end epochs in train
        _attached.track(self)  # method and tasks, checked by resume_model

    @property
    def training(self) -> bool:  # type: ignore[override]
        return bool(self.__dict__.get("_seg_training", True))

    @training.setter
    def training(self, mode: bool) -> None:  # model.train() (train's start): check the next forward
        self.__dict__["_seg_training"] = mode
        self.__dict__["_seg_checked"] = False

    def set_state_dict(self, state_dict: dict[str, Any], use_structured_name: bool = True) -> Any:
        """``AutoWeight.set_state_dict``; another loss's state (its identity) is refused, and the
        identity is never loaded (an older checkpoint without it loads without a warning)."""
        if use_structured_name:
            state_dict = {**state_dict, _attached.KEY: _attached.own_identity(
                self, state_dict, _attached.KEY, "load the state of a loss built like this one")}
        return super().set_state_dict(state_dict, use_structured_name)

    def forward(self, *tensors: paddle.Tensor) -> paddle.Tensor:
        _attached.check(self)  # σ attached to train's model and optimizer (once per train call)
        _grad.check_ema(self)  # once, before the first step
        _epochs.advance(self)  # epochs that ended since the last forward, before this one's losses
        return super().forward(*tensors).reshape([1])
