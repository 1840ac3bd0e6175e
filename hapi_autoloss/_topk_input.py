"""What TopKLoss ranks: the wrapped loss's checked output, the ignored mask, per-sample means."""

from __future__ import annotations

import inspect
import math
from typing import Any

import paddle


def _unreduced_fix(loss: Any) -> str:
    """How to get one loss per element from the wrapped ``loss``."""
    reduction = getattr(loss, "reduction", None)
    if reduction == "none":
        return "it reduces although built with reduction='none': make it return one loss per sample (or pixel)."
    if reduction is not None:
        return ("build it with reduction='none', e.g. "
                "TopKLoss(paddle.nn.CrossEntropyLoss(reduction='none')).")
    try:
        takes = "reduction" in inspect.signature(loss).parameters
    except (TypeError, ValueError):
        takes = False
    if takes:  # a function such as paddle.nn.functional.cross_entropy, or a partial of one
        return ("call it with reduction='none', e.g. TopKLoss(functools.partial("
                "paddle.nn.functional.cross_entropy, reduction='none')).")
    return ("it takes no reduction='none': wrap a function that returns one loss per sample (or pixel) "
            "instead, e.g. TopKLoss(lambda out, lab: per_sample_loss(out, lab)).")


def check_loss(loss: Any, raw: Any, inputs: tuple[paddle.Tensor, ...], per: str) -> paddle.Tensor:
    """The wrapped loss's output as float32, or a clear error when there is nothing to rank."""
    name = type(loss).__name__
    if not isinstance(raw, paddle.Tensor):
        if not paddle.in_dynamic_mode():
            raise RuntimeError(
                f"The wrapped loss {name} returned a static-graph {type(raw).__name__}: TopKLoss needs "
                "PaddlePaddle's dynamic graph mode (eager, or paddle.jit.to_static's default mode). Fix: "
                "remove paddle.enable_static(), or use paddle.jit.to_static without full_graph=True."
            )
        raise TypeError(
            f"The wrapped loss {name} returned {type(raw).__name__}, not a paddle.Tensor. "
            "Fix: return one loss value per element as a tensor."
        )
    if not paddle.is_floating_point(raw):
        raise TypeError(
            f"The wrapped loss {name} returned {raw.dtype} values; TopKLoss ranks "
            "floating-point losses. Fix: return float losses."
        )
    first = inputs[0] if inputs and isinstance(inputs[0], paddle.Tensor) else None
    first_shape = list(first.shape) if first is not None else []
    batch = int(first_shape[0]) if first_shape else None
    shape = list(raw.shape)
    if not shape or (math.prod(shape) == 1 and batch is not None and batch > 1):
        raise ValueError(
            f"The wrapped loss {name} returned an already reduced value (shape "
            f"{list(raw.shape)}) for a batch of {batch}, so there is nothing to rank. "
            f"Fix: {_unreduced_fix(loss)}"
        )
    if per == "sample" and batch is not None and int(shape[0]) != batch:
        raise ValueError(
            f"per='sample' ranks the first dimension as the batch, but the loss has shape "
            f"{list(raw.shape)} for a batch of {batch}. Fix: return losses shaped "
            "[batch, ...], or use per='pixel'."
        )
    # Rank in float32 whatever the loss's dtype, so float16 losses work.
    return raw if raw.dtype == paddle.float32 else raw.astype("float32")


def label_of(purpose: str, values: paddle.Tensor, inputs: tuple[paddle.Tensor, ...]) -> paddle.Tensor:
    """The label (the last argument), checked to hold one entry per loss element."""
    if len(inputs) < 2 or not isinstance(inputs[-1], paddle.Tensor):
        raise ValueError(
            f"{purpose}, so TopKLoss reads the label from its last argument, but "
            f"it got {len(inputs)} argument(s). Fix: call it as loss(output, label)."
        )
    label = inputs[-1]
    n_label, n_loss = math.prod(label.shape), math.prod(values.shape)
    if n_label != n_loss:
        raise ValueError(
            f"{purpose}, which needs one label per loss element, but the label has shape "
            f"{list(label.shape)} ({n_label} elements) and the per-element loss "
            f"{list(values.shape)} ({n_loss}). Fix: pass class-index labels shaped "
            "like the loss ([N,H,W] or [N,1,H,W]), not one-hot or soft labels."
        )
    return label


def ignored_mask(
    ignore_index: int | None, values: paddle.Tensor, inputs: tuple[paddle.Tensor, ...]
) -> paddle.Tensor | None:
    """Which loss elements have the label ``ignore_index`` (shaped like ``values``); None: none set."""
    if ignore_index is None:
        return None
    label = label_of("ignore_index is set", values, inputs)
    # equal() with a 0-d tensor of the label's dtype: no Python-scalar promotion of the label.
    return paddle.equal(label, paddle.full([], ignore_index, dtype=label.dtype)).reshape(values.shape)


def fitting_mask(
    ignore_index: int | None, values: paddle.Tensor, inputs: tuple[paddle.Tensor, ...]
) -> paddle.Tensor | None:
    """:func:`ignored_mask` for the wrapped loss's own ``ignore_index``, only where the label holds one
    entry per loss element; None otherwise (a loss reducing per sample masks its padding itself)."""
    if ignore_index is None or len(inputs) < 2 or not isinstance(inputs[-1], paddle.Tensor):
        return None
    if math.prod(inputs[-1].shape) != math.prod(values.shape):
        return None
    return ignored_mask(ignore_index, values, inputs)


def per_class(
    values: paddle.Tensor,
    ignored: paddle.Tensor | None,
    inputs: tuple[paddle.Tensor, ...],
    num_classes: int | None,
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """Each class's mean loss over the valid elements with that label ([C], float32), and
    which classes have none in this batch (they are ranked like ignored elements).

    Float labels (BCE targets, smoothed ones too) are rounded to the nearest class; labels
    outside 0..C−1 are left out like ignored ones (no host read can check them here).
    """
    label = label_of("per='class' ranks classes", values, inputs)
    if num_classes is None:
        num_classes = _classes_on_axis_1(inputs[0], values)
    if paddle.is_floating_point(label):
        label = paddle.round(label)
    index = label.reshape([-1]).astype("int64")
    outside = paddle.logical_or(index < 0, index >= num_classes)
    mask = outside if ignored is None else paddle.logical_or(ignored.reshape([-1]), outside)
    # Sums and counts in float64: float32 stops counting at 2**24 elements (a batch of 8 at 1024×2048).
    flat = paddle.masked_fill(values.reshape([-1]).astype("float64"), mask, 0.0)  # also an ignored NaN
    weight = paddle.logical_not(mask).astype("float64")
    index = paddle.masked_fill(index, mask, 0)
    zeros = paddle.zeros([num_classes], dtype="float64")
    total = paddle.index_add(zeros, index, 0, flat)
    count = paddle.index_add(zeros, index, 0, weight)
    return (total / paddle.clip(count, min=1.0)).astype("float32"), count == 0


def _classes_on_axis_1(first: paddle.Tensor, values: paddle.Tensor) -> int:
    """C read from logits ``[N, C, ...]``, refused when the shapes say axis 1 is not the class axis."""
    shape = list(first.shape)
    classes = int(shape[1]) if len(shape) >= 2 else 0
    # A binary logit [N, 1] (BCE), channels-last logits, [N, T, C] sequences and multi-label
    # [N, C] losses all fail this: the logits must hold C values per loss element.
    if classes < 2 or math.prod(shape) != classes * math.prod(values.shape):
        raise ValueError(
            f"per='class' reads the number of classes C from the first argument's axis 1, but shape "
            f"{shape} is not logits [N, C, ...] with C values per loss element (the loss has shape "
            f"{list(values.shape)}). Fix: TopKLoss(..., per='class', num_classes=C), e.g. 2 for a binary logit."
        )
    return classes


def per_sample(
    values: paddle.Tensor, ignored: paddle.Tensor | None
) -> tuple[paddle.Tensor, paddle.Tensor | None]:
    """Each sample's mean over its valid elements, and which samples have none."""
    n = int(values.shape[0])
    if ignored is None and math.prod(values.shape) == n:  # one value per sample already
        return values.reshape([n]), None
    flat = values.reshape([n, -1])
    if ignored is None:
        return flat.mean(axis=1), None
    mask = ignored.reshape([n, -1])
    total = paddle.masked_fill(flat, mask, 0.0).sum(axis=1)
    count = float(flat.shape[1]) - mask.astype("float32").sum(axis=1)
    return total / paddle.clip(count, min=1.0), count == 0
