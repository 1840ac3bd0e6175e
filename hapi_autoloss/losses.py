"""Segmentation losses that PaddleSeg would provide (PaddleSeg 2.8.0 does not import with numpy 2).

``DiceLoss`` follows PaddleSeg's ``DiceLoss`` (per image, per class, then averaged, ``smooth`` = 1
by default) but never modifies its inputs in place and never reads a value back to the host, so it
can sit inside ``AutoWeight`` or a compiled graph.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F

from ._args import non_negative, positive

__all__ = ["DiceLoss"]


class DiceLoss(paddle.nn.Layer):
    """Soft Dice loss for segmentation logits, averaged over images and classes.

    For logits ``x`` of shape ``[N, C, H, W]`` and integer labels ``y`` (``[N, H, W]`` or
    ``[N, 1, H, W]``), with ``p = softmax(x, axis=1)``, one-hot ``t`` and the mask ``m``
    (0 where ``y == ignore_index``, else 1), per image n and class c::

        I[n, c] = Σ_hw  p[n,c,h,w] · t[n,c,h,w] · m[n,h,w]              (soft intersection)
        U[n, c] = Σ_hw (p[n,c,h,w] + t[n,c,h,w]) · m[n,h,w]             (soft |A| + |B|)
        loss    = 1 − mean_{n, c} (2·I[n, c] + smooth) / (U[n, c] + smooth)

    So every class counts equally (absent classes included: their term rewards putting no
    probability on them), and ignored pixels are excluded from both the intersection and
    the union. A label that is neither ``ignore_index`` nor in ``[0, C)`` one-hot encodes to
    all zeros (no error is raised, since checking it would need a host sync).

    The loss is unitless, in ``[0, 1]``; 0 means a perfect (hard, confident) prediction.
    An image whose pixels are all ignored contributes exactly 0 to ``1 − mean`` when
    ``smooth > 0`` (its ratio is ``smooth / smooth = 1``), and 1 when ``smooth == 0``
    (a tiny ``eps`` in the denominator keeps it finite).

    Args:
        ignore_index: label value whose pixels are left out; ``None`` ignores nothing.
            Default 255, as in PaddleSeg.
        smooth: added to numerator and denominator (Laplace smoothing, in pixels); >= 0.
            Default 1.0, as in PaddleSeg.
        eps: added to the denominator only, so ``smooth=0`` stays finite. Default 1e-8.

    Returns a 0-d float32 tensor, computed in float32 whatever the logits' dtype.

    Example::

        dice = DiceLoss(ignore_index=255)
        logits = paddle.randn([2, 3, 64, 64])            # N, C, H, W
        labels = paddle.randint(0, 3, [2, 64, 64])       # N, H, W (or N, 1, H, W)
        dice(logits, labels)                             # 0-d float32, about 0.5

        # PaddleSeg's MixedLoss 0.8·CE + 0.2·Dice, or learned weights:
        AutoWeight({"ce": paddle.nn.CrossEntropyLoss(axis=1), "dice": DiceLoss()},
                   method="kendall", task_types=["classification"] * 2, routing="shared")
    """

    def __init__(self, ignore_index: int | None = 255, smooth: float = 1.0, eps: float = 1e-8) -> None:
        super().__init__()
        smooth = non_negative(smooth, "smooth", "smooth=1.0")
        eps = positive(eps, "eps", "eps=1e-8")
        if ignore_index is not None and not isinstance(ignore_index, int):
            raise TypeError(
                f"ignore_index must be an int or None, got {type(ignore_index).__name__}. Fix: e.g. 255."
            )
        self.ignore_index = ignore_index
        self.smooth = float(smooth)
        self.eps = float(eps)

    def forward(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        return 1.0 - self.dice_ratios(logits, labels).mean()

    def dice_ratios(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """The ``[N, C]`` ratios ``(2·I + smooth) / (U + smooth + eps)``, float32; the loss is ``1 − mean``."""
        if logits.ndim != 4:
            raise ValueError(
                f"DiceLoss expects logits [N, C, H, W], got shape {list(logits.shape)}. Fix: return "
                "per-pixel class scores with the class axis at position 1."
            )
        n, c, h, w = logits.shape
        if labels.ndim == 4:
            if labels.shape[1] != 1:
                raise ValueError(
                    f"4-D labels must be [N, 1, H, W], got {list(labels.shape)}. Fix: give class "
                    "indices, not one-hot labels."
                )
            labels = labels.squeeze(1)
        if labels.ndim != 3 or list(labels.shape) != [n, h, w]:
            raise ValueError(
                f"labels of shape {list(labels.shape)} do not match logits {list(logits.shape)}. "
                f"Fix: labels [N, H, W] = {[n, h, w]} (or [N, 1, H, W]) of class indices."
            )
        if paddle.is_floating_point(labels):
            raise TypeError(
                f"DiceLoss labels must be integer class indices, got {labels.dtype}. Fix: "
                "labels.astype('int64')."
            )
        if logits.dtype != paddle.float32:
            logits = logits.astype("float32")  # float16/bfloat16 sums over H·W would lose precision
        labels = labels.astype("int64").unsqueeze(1)  # [N, 1, H, W]
        prob = F.softmax(logits, axis=1)
        # One-hot by comparison: no transpose, and out-of-range labels give zeros, not an error.
        classes = paddle.arange(c, dtype="int64").reshape([1, c, 1, 1])
        target = (labels == classes).astype("float32")
        if self.ignore_index is not None:
            mask = (labels != self.ignore_index).astype("float32")  # [N, 1, H, W], broadcast over C
            prob = prob * mask
            target = target * mask
        inter = (prob * target).sum(axis=[2, 3])  # [N, C]
        union = (prob + target).sum(axis=[2, 3])
        return (2.0 * inter + self.smooth) / (union + self.smooth + self.eps)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, smooth={self.smooth}"
