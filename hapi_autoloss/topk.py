"""TopKLoss: average only the k largest losses (hard-example mining, OHEM)."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import paddle

PER_CHOICES = ("sample", "pixel")
# ratio·n within this of an integer counts as that integer, so float noise such as
# 0.07·100 = 7.000000000000001 keeps 7 elements, not 8.
ROUNDING_TOLERANCE = 1e-6

LossFn = Callable[..., paddle.Tensor]


def validate_ratio(ratio: Any, name: str = "ratio") -> float:
    """``ratio`` as a float, or a clear error when it is not in (0, 1]."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise TypeError(
            f"{name} must be a number in (0, 1], got {type(ratio).__name__} {ratio!r}. "
            f"Fix: e.g. {name}=0.1 to keep the hardest 10%."
        )
    value = float(ratio)
    if not (0.0 < value <= 1.0):  # also False for NaN
        raise ValueError(
            f"{name} must be in (0, 1] (the fraction of losses kept), got {ratio!r}. "
            f"Fix: e.g. {name}=0.1 to keep the hardest 10%, or {name}=1.0 for the plain mean."
        )
    return value


def k_of(ratio: float, n: int, min_kept: int = 1) -> int:
    """How many of ``n`` valid losses :class:`TopKLoss` keeps (host-side, for reference).

    ``k = min(max(ceil(ratio·n − 1e-6), min_kept), n)``; 0 when ``n == 0``.

    Example::

        k_of(0.1, 1000)   # 100
        k_of(0.1, 5)      # 1  (0.5 rounds up)
        k_of(0.001, 10)   # 1  (never 0 while something is valid)
    """
    if n <= 0:
        return 0
    return min(max(math.ceil(ratio * n - ROUNDING_TOLERANCE), min_kept), n)


class TopKLoss(paddle.nn.Layer):
    """Average Top-k loss (Lyu et al., NeurIPS 2017): the mean of the k largest losses.

    ``k = n`` gives the plain mean, ``k = 1`` the maximum. It wraps any loss that
    returns one value per element (``reduction="none"``) and returns a 0-d float32
    tensor. Only the kept elements get a gradient.

    Which elements are ranked:

    - ``per="sample"``: each sample's loss, i.e. its mean over the non-batch
      dimensions (over the valid elements when ``ignore_index`` is set; a sample
      with none is left out).
    - ``per="pixel"``: every element (OHEM for segmentation).

    How many are kept, out of the ``n`` valid ones (ignored pixels do not count)::

        k = min(max(ceil(ratio·n − 1e-6), min_kept), n)

    Rounding up means k never becomes 0 while something is valid (ratio·n = 0.01
    keeps 1); the 1e-6 absorbs float noise (0.07·100 keeps 7). If nothing is
    valid, k = 0 and the loss is 0 with a zero gradient, never NaN. At
    ``ratio=1`` the result is the mean over the valid elements.

    With ``threshold`` (PaddleSeg OHEM semantics, in loss units) the kept set is
    ``{loss > threshold} ∪ top-k``: every element harder than the threshold, and
    never fewer than k. For cross-entropy, PaddleSeg's probability threshold
    ``thresh=0.7`` is ``threshold=-ln(0.7) ≈ 0.357``.

    The forward is vectorised and never reads a tensor value on the host (no sync):
    one unsorted ``paddle.topk`` of a static size ``k_max`` (k computed from the
    shapes). With ``ignore_index``, k is a tensor; ignored entries are ranked at
    −inf and ``k_max − k`` entries of +inf are appended, so the same static topk
    holds exactly the k kept entries.

    Args:
        loss: a Layer or function returning per-element losses, e.g.
            ``paddle.nn.CrossEntropyLoss(reduction="none")``. It is called with
            every argument the TopKLoss gets (hapi: ``*outputs, *labels``).
        ratio: fraction of the valid losses kept, in (0, 1]. Settable later
            (``TopKScheduler`` anneals it).
        per: ``"sample"`` or ``"pixel"``.
        ignore_index: elements whose label (the last argument) equals it are never
            kept and do not count in n. The label must have as many elements as
            the per-element loss (``[N,1,H,W]`` and ``[N,H,W]`` both work). Give
            the wrapped cross-entropy the same ``ignore_index``: Paddle's raises on
            a label outside the classes.
        min_kept: the least k while something is valid; an int >= 1.
        threshold: optional loss threshold, see above.

    Example::

        ce = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=255)
        loss = hapi_autoloss.TopKLoss(ce, ratio=0.1, per="pixel", ignore_index=255)
        model.prepare(optimizer, loss)           # logits [N,C,H,W], label [N,1,H,W]
        model.fit(data, epochs=10, callbacks=[hapi_autoloss.callbacks.TopKScheduler()])
    """

    loss: LossFn
    per: str
    ignore_index: int | None
    min_kept: int
    threshold: float | None
    _ratio: float

    def __init__(
        self,
        loss: LossFn,
        ratio: float = 0.7,
        per: str = "sample",
        ignore_index: int | None = None,
        min_kept: int = 1,
        threshold: float | None = None,
    ) -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(
                f"loss must be a paddle.nn.Layer or a function, got {type(loss).__name__}. "
                "Fix: e.g. TopKLoss(paddle.nn.CrossEntropyLoss(reduction='none'))."
            )
        if per not in PER_CHOICES:
            raise ValueError(
                f"Unknown per {per!r}. Fix: per='sample' ranks each sample's mean loss, "
                "per='pixel' ranks every element."
            )
        if isinstance(min_kept, bool) or not isinstance(min_kept, numbers.Integral) or min_kept < 1:
            raise ValueError(
                f"min_kept must be an int >= 1 (the least number of losses kept), got "
                f"{min_kept!r}. Fix: e.g. min_kept=1."
            )
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)
        ):
            raise TypeError(
                f"ignore_index must be an int label value or None, got {ignore_index!r}. "
                "Fix: e.g. ignore_index=255."
            )
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(
                threshold
            ):
                raise ValueError(
                    f"threshold must be a finite number (a loss value) or None, got {threshold!r}. "
                    "Fix: e.g. threshold=0.357 (cross-entropy of probability 0.7)."
                )
            threshold = float(threshold)
        self.loss = loss
        self.per = per
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.min_kept = int(min_kept)
        self.threshold = threshold
        self._ratio = validate_ratio(ratio)

    @property
    def ratio(self) -> float:
        """Fraction of the valid losses kept, in (0, 1]."""
        return self._ratio

    @ratio.setter
    def ratio(self, value: float) -> None:
        self._ratio = validate_ratio(value)

    def checkpoint_state(self) -> dict[str, Any]:
        """What ``model.save`` keeps besides tensors: the current ratio."""
        return {"ratio": self._ratio}

    def check_checkpoint_state(self, state: dict[str, Any], source: str) -> None:
        validate_ratio(state.get("ratio", self._ratio), f"ratio saved in {source}")

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore the ratio, so ``model.evaluate`` after ``load_state`` keeps the right k."""
        self.ratio = state.get("ratio", self._ratio)

    def extra_repr(self) -> str:
        return (
            f"ratio={self._ratio}, per={self.per}, ignore_index={self.ignore_index}, "
            f"min_kept={self.min_kept}, threshold={self.threshold}"
        )

    # ------------------------------------------------------------ forward

    def forward(self, *inputs: paddle.Tensor) -> paddle.Tensor:
        raw = self.loss(*inputs)
        values = self._check_loss(raw, inputs)
        ignored = self._ignored_mask(values, inputs)
        if self.per == "sample":
            values, ignored = self._per_sample(values, ignored)
        else:
            values = values.reshape([-1])
            ignored = None if ignored is None else ignored.reshape([-1])
        return self._top_k_mean(values, ignored)

    def _check_loss(self, raw: Any, inputs: tuple[paddle.Tensor, ...]) -> paddle.Tensor:
        name = type(self.loss).__name__
        if not isinstance(raw, paddle.Tensor):
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
                "Fix: build it with reduction='none', e.g. "
                "TopKLoss(paddle.nn.CrossEntropyLoss(reduction='none'))."
            )
        if self.per == "sample" and batch is not None and int(shape[0]) != batch:
            raise ValueError(
                f"per='sample' ranks the first dimension as the batch, but the loss has shape "
                f"{list(raw.shape)} for a batch of {batch}. Fix: return losses shaped "
                "[batch, ...], or use per='pixel'."
            )
        # Rank in float32 whatever the loss's dtype, so float16 losses work.
        return raw if raw.dtype == paddle.float32 else raw.astype("float32")

    def _ignored_mask(self, values: paddle.Tensor, inputs: tuple[paddle.Tensor, ...]) -> paddle.Tensor | None:
        if self.ignore_index is None:
            return None
        if len(inputs) < 2 or not isinstance(inputs[-1], paddle.Tensor):
            raise ValueError(
                "ignore_index is set, so TopKLoss reads the label from its last argument, but "
                f"it got {len(inputs)} argument(s). Fix: call it as loss(output, label)."
            )
        label = inputs[-1]
        n_label, n_loss = math.prod(label.shape), math.prod(values.shape)
        if n_label != n_loss:
            raise ValueError(
                f"ignore_index needs one label per loss element, but the label has shape "
                f"{list(label.shape)} ({n_label} elements) and the per-element loss "
                f"{list(values.shape)} ({n_loss}). Fix: pass class-index labels shaped "
                "like the loss ([N,H,W] or [N,1,H,W]), not one-hot or soft labels."
            )
        return (label == self.ignore_index).reshape(values.shape)

    def _per_sample(
        self, values: paddle.Tensor, ignored: paddle.Tensor | None
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

    def _top_k_mean(self, values: paddle.Tensor, ignored: paddle.Tensor | None) -> paddle.Tensor:
        """Mean of the k largest valid entries of the 1-D ``values``; 0-d float32."""
        n = int(values.shape[0])
        if n == 0:
            return values.sum()  # an empty batch: 0, and the graph stays connected
        if ignored is None:
            if self._ratio >= 1.0:
                return values.mean()
            # k = k_max exactly: no ranking among the selected needed, and topk's own
            # backward (a scatter of k values) is the cheapest way back.
            kept = paddle.topk(values, k_of(self._ratio, n, self.min_kept), sorted=False)[0]
            if self.threshold is None:
                return kept.mean()
            return self._with_threshold(values, None, kept, kept.detach(), None)
        n_valid = n - ignored.sum()  # int64, on the device
        if self._ratio >= 1.0:  # k = n_valid whatever min_kept: the masked mean
            total = paddle.masked_fill(values, ignored, 0.0).sum()
            return total / paddle.clip(n_valid.astype("float32"), min=1.0)
        # k depends on the valid count, a tensor. Ignored entries rank last, and
        # k_max − k entries of +inf appended to the ranking fill the rest of a static
        # top-k_max (k_max from the shapes), which then holds exactly the top k real
        # entries, in any order: no sort, no host read.
        k_max = k_of(self._ratio, n, self.min_kept)
        k = self._k_tensor(n_valid, k_max)
        ranked = paddle.masked_fill(values.detach(), ignored, -math.inf)
        pad = paddle.masked_fill(
            paddle.full([k_max], -math.inf, dtype="float32"),
            paddle.arange(k_max, dtype="int64") < k_max - k,
            math.inf,
        )
        top, index = paddle.topk(paddle.concat([ranked, pad]), k_max, sorted=False)
        keep = index < n
        # Gather with gradient from the unmasked values: the backward is one scatter.
        kept = paddle.take_along_axis(values, paddle.minimum(index, paddle.full([], n - 1, dtype="int64")), axis=0)
        if self.threshold is None:
            total = paddle.where(keep, kept, paddle.zeros_like(kept)).sum()
            return total / paddle.clip(k.astype("float32"), min=1.0)
        return self._with_threshold(values, ignored, kept, top, keep)

    def _k_tensor(self, n_valid: paddle.Tensor, k_max: int) -> paddle.Tensor:
        """k as an int64 0-d tensor, the same formula as :func:`k_of`, without a host read."""
        k = paddle.ceil(n_valid.astype("float64") * self._ratio - ROUNDING_TOLERANCE).astype("int64")
        k = paddle.maximum(k, paddle.full([], self.min_kept, dtype="int64"))
        return paddle.minimum(paddle.minimum(k, n_valid), paddle.full([], k_max, dtype="int64"))

    def _with_threshold(
        self,
        values: paddle.Tensor,
        ignored: paddle.Tensor | None,
        kept: paddle.Tensor,
        top: paddle.Tensor,
        keep: paddle.Tensor | None,
    ) -> paddle.Tensor:
        """Mean over {loss > threshold} ∪ top-k, each element counted once."""
        assert self.threshold is not None
        above = values.detach() > self.threshold
        if ignored is not None:
            above = paddle.logical_and(above, paddle.logical_not(ignored))
        # Top-k entries above the threshold are already in `above`; add the others.
        extra = top <= self.threshold
        if keep is not None:
            extra = paddle.logical_and(extra, keep)
        total = paddle.where(above, values, paddle.zeros_like(values)).sum() + paddle.where(
            extra, kept, paddle.zeros_like(kept)
        ).sum()
        count = above.astype("float32").sum() + extra.astype("float32").sum()
        return total / paddle.clip(count, min=1.0)
