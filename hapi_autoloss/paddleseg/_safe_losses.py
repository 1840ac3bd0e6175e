"""PaddleSeg's CrossEntropyLoss and DiceLoss, working on paddle 3, with PaddleSeg's arguments."""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddleseg.cvlibs import manager

from .. import losses as _losses
from . import _loss_args

__all__ = ["SafeCrossEntropyLoss", "SafeDiceLoss"]


def _labels(labels: paddle.Tensor) -> paddle.Tensor:
    """[N, H, W] int64 from [N, H, W] or [N, 1, H, W] (PaddleSeg gives the former)."""
    if labels.ndim == 4 and labels.shape[1] == 1:
        labels = labels.squeeze(1)
    return labels if labels.dtype == paddle.int64 else labels.astype("int64")


@manager.LOSSES.add_component
class SafeCrossEntropyLoss(paddle.nn.Layer):
    """PaddleSeg's ``CrossEntropyLoss`` (mean over the non-ignored pixels, optional class weights),
    without its paddle 3 TypeError. Logits ``[N, C, H, W]``, labels ``[N, H, W]`` int; returns ``[1]``.

    With class weights the mean is weighted: Σ w_y·CE / Σ w_y over the non-ignored pixels. A batch
    whose pixels are all ignored gives 0. PaddleSeg's ``avg_non_ignore=False`` (divide by every
    pixel, unweighted only) and ``data_format`` (``"NCHW"``, ``"NHWC"``) work as there;
    ``top_k_percent_pixels`` other than 1 is refused (in (0, 1): use ``TopKLoss(ratio=...)``, unweighted).

    Example (YAML)::

        loss: {types: [{type: SafeCrossEntropyLoss, ignore_index: 255}], coef: [1]}
    """

    def __init__(self, weight: list[float] | None = None, ignore_index: int = 255, top_k_percent_pixels: float = 1.0,
                 avg_non_ignore: bool = True, data_format: str = "NCHW") -> None:
        super().__init__()
        _loss_args.check_ce(weight, top_k_percent_pixels, avg_non_ignore, data_format)
        self.ignore_index = int(ignore_index)
        self.avg_non_ignore, self.data_format = avg_non_ignore, data_format
        self.weight = None if weight is None else paddle.to_tensor(weight, dtype="float32")

    def forward(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        labels = _labels(labels)
        if self.data_format == "NHWC":
            logits = logits.transpose([0, 3, 1, 2])
        if self.weight is not None and logits.shape[1] != self.weight.shape[0]:
            raise ValueError(f"{self.weight.shape[0]} class weights for {logits.shape[1]} classes. "
                             "Fix: give one weight per class.")
        per_pixel = F.cross_entropy(logits.astype("float32"), labels, axis=1, reduction="none",
                                    ignore_index=self.ignore_index, weight=self.weight).reshape(labels.shape)
        valid = (labels != self.ignore_index).astype("float32")
        if self.weight is not None:
            index = (labels * valid.astype("int64")).flatten()  # ignored: class 0, then weight × 0
            valid = valid * paddle.gather(self.weight, index).reshape(labels.shape)
        count = valid.sum() if self.avg_non_ignore else float(math.prod(labels.shape))  # the shape: no device op
        return (per_pixel.sum() / (count + 1e-8)).reshape([1])


@manager.LOSSES.add_component
class SafeDiceLoss(_losses.DiceLoss):
    """PaddleSeg's ``DiceLoss`` (``smooth`` = 1, every class counted equally, or by ``weight``: one
    real number per class, a list or 1-D array, ``Σ_c w_c·(1 − mean_n ratio[n, c]) / C`` as
    PaddleSeg's) that never writes into the label, so it can follow or precede a cross-entropy on the
    same label. Returns ``[1]``.
    See :class:`hapi_autoloss.DiceLoss` for the formula.

    Example (YAML)::

        - type: MixedLoss
          losses: [{type: SafeCrossEntropyLoss}, {type: SafeDiceLoss}]
          coef: [0.8, 0.2]
    """

    def __init__(self, weight: list[float] | None = None, ignore_index: int | None = 255, smooth: float = 1.0,
                 eps: float = 1e-8) -> None:
        super().__init__(ignore_index=ignore_index, smooth=smooth, eps=eps)
        self.weight = _loss_args.check_dice_weight(weight)
        self._weight_tensor: dict[str, paddle.Tensor] = {}  # made at the first forward (a dict: not a buffer)

    def forward(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        if self.weight is None:
            return super().forward(logits, labels).reshape([1])
        if logits.shape[1] != len(self.weight):
            raise ValueError(f"{len(self.weight)} class weights for {logits.shape[1]} classes. "
                             "Fix: give one weight per class.")
        per_class = 1.0 - self.dice_ratios(logits, labels).mean(axis=0)
        weight = self._weight_tensor.get("w")
        if weight is None:  # once, not a host-to-device copy per step
            weight = self._weight_tensor["w"] = paddle.to_tensor(self.weight, dtype="float32")
        return (weight * per_class).mean().reshape([1])
