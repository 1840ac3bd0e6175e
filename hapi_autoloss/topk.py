"""TopKLoss: average only the k largest losses (hard-example mining, OHEM)."""

from __future__ import annotations

from typing import Any, Callable

import paddle

from . import _hapi, _ranked, _topk_input
from ._kept_counts import ROUNDING_TOLERANCE, k_of, m_of
from ._topk_args import (
    check_num_classes_applies,
    check_threshold_drop,
    validate_band,
    validate_counts,
    validate_drop,
    validate_per,
    validate_ratio,
    wrapped_ignore_index,
)

__all__ = ["ROUNDING_TOLERANCE", "TopKLoss", "k_of", "m_of", "validate_drop", "validate_ratio"]

PER_CHOICES = ("sample", "pixel", "class")
DEFAULT_RATIO = 0.7

LossFn = Callable[..., paddle.Tensor]


class TopKLoss(paddle.nn.Layer):
    """Average Top-k loss (Lyu et al., NeurIPS 2017) and its ranked range (AoRR, Hu, Lyu
    et al., NeurIPS 2020): the mean of ranks m+1..k of the descending losses.

    It wraps any loss that returns one value per element (``reduction="none"``) and
    returns a 0-d float32 tensor; each kept loss gets the gradient 1/(k − m), every
    other loss exactly 0. With ``drop=0`` (m = 0, the default) it is ATk; ``k = n``
    gives the plain mean, ``k = 1`` the maximum, and ``k = n`` with ``drop > 0`` a
    trimmed mean (the easiest n − m). AoRR drops the very hardest losses as likely
    label noise or outliers and averages the next ones.

    Which elements are ranked: ``per="sample"`` each sample's loss, i.e. its mean over
    the non-batch dimensions (over the valid elements when ``ignore_index`` is set; a
    sample with none is left out); ``per="pixel"`` every element (OHEM); ``per="class"``
    each class's mean loss over the batch's valid elements with that label (classes
    absent from the batch are left out), so ``ratio=1.0`` is the class-balanced mean
    (every class present weighs the same, however rare) and ``ratio < 1`` mines the
    hardest classes. Float labels are rounded to the nearest class; labels outside
    0..C−1 are left out like ignored ones.

    How many, out of the ``n`` valid ones (ignored pixels do not count)::

        k = min(max(ceil(ratio·n − 1e-6), min_kept), n)       # the top bound
        m = max(min(floor(drop·n + 1e-6), k − min(min_kept, k)), 0)  # dropped

    k never becomes 0 while something is valid and at least ``min_kept`` losses (or
    all k) stay averaged; the 1e-6 absorbs float noise (0.07·100 keeps 7). If nothing
    is valid the loss is 0 with a zero gradient, never NaN.

    ``band=(a, b)`` instead keeps the losses in ``[μ − b·σ, μ + a·σ]``, μ and σ
    (population std) of the valid losses of the batch, without gradient through them:
    the statistical rule of the JMLR 2022 version, whose official code uses a = 1,
    b = 2 (on a validation set's losses; here on the batch's). With min(a, b) >= 1 the
    band is never empty (else it can be, and the loss is then 0). It replaces ``ratio``,
    ``drop`` and ``threshold``.

    With ``threshold`` (PaddleSeg OHEM, in loss units; only with ``drop=0``) the kept
    set is ``{loss > threshold} ∪ top-k``. PaddleSeg's ``thresh=0.7`` is
    ``threshold=-ln(0.7) ≈ 0.357`` for cross-entropy.

    The forward never reads a tensor on the host (no sync): one unsorted
    ``paddle.topk`` of a static size ``k_max`` (from the shapes), and for ``drop > 0``
    a second one of size ``m_max`` among those k_max; with ``ignore_index`` k and m
    are tensors and +inf pads fill the static sizes (see :mod:`hapi_autoloss._ranked`).
    On the CPU from 2**18 ranked losses on (per-pixel segmentation), an exact radix
    select on the float bits replaces ``topk`` (:mod:`hapi_autoloss._select`): the same
    values, a tie at the k-th loss sharing its weight evenly.

    Args:
        loss: a Layer or function returning per-element losses, e.g.
            ``paddle.nn.CrossEntropyLoss(reduction="none")``; called with every
            argument the TopKLoss gets (hapi: ``*outputs, *labels``).
        ratio: fraction kept from the top, k/n, in (0, 1]; default 0.7. Settable
            (``TopKScheduler``, ``TopKOnPlateau``).
        per: ``"sample"``, ``"pixel"`` or ``"class"`` (n, k and ``min_kept`` then
            count classes; the class labels are read from the last argument).
        ignore_index: elements whose label (the last argument) equals it are never
            kept and do not count in n. The label needs one entry per loss element.
            None: the wrapped loss's own ``ignore_index`` (but Paddle's default -100), where
            the label holds one entry per loss element (a loss that reduces per sample
            itself is left alone).
        min_kept: the least number of losses averaged while something is valid.
        threshold: optional loss threshold, see above.
        drop: fraction of the hardest dropped, m/n, in [0, ratio). Settable.
        band: ``(a, b)``, the statistical rule above.
        num_classes: for ``per="class"``: the number of classes C (labels 0..C-1);
            None reads it from the first argument's axis 1 (logits ``[N, C, ...]``).

    Example::

        ce = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=255)
        loss = hapi_autoloss.TopKLoss(ce, ratio=0.1, per="pixel", ignore_index=255)
        robust = hapi_autoloss.TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=0.7, drop=0.1)
        balanced = hapi_autoloss.TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=1.0, per="class")
        model.prepare(optimizer, loss)           # logits [N,C,H,W], label [N,1,H,W]
        model.fit(data, epochs=10, callbacks=[hapi_autoloss.callbacks.TopKScheduler()])
    """

    loss: LossFn
    per: str
    ignore_index: int | None
    min_kept: int
    threshold: float | None
    band: tuple[float, float] | None
    num_classes: int | None
    _ratio: float
    _drop: float

    def __init__(
        self,
        loss: LossFn,
        ratio: float | None = None,
        per: str = "sample",
        ignore_index: int | None = None,
        min_kept: int = 1,
        threshold: float | None = None,
        drop: float = 0.0,
        band: tuple[float, float] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(
                f"loss must be a paddle.nn.Layer or a function, got {type(loss).__name__}. "
                "Fix: e.g. TopKLoss(paddle.nn.CrossEntropyLoss(reduction='none'))."
            )
        _hapi.require_dynamic_mode()  # in static mode the wrapped loss returns graph values, not tensors
        validate_per(per, PER_CHOICES, num_classes)
        min_kept, ignore_index, threshold = validate_counts(min_kept, ignore_index, threshold)
        self.band = None if band is None else validate_band(band)
        if self.band is not None and (ratio is not None or drop != 0 or threshold is not None):
            raise ValueError(
                f"band={band!r} chooses the kept losses itself, so ratio, drop and threshold do not "
                "apply. Fix: give either band=(a, b) alone, or ratio/drop/threshold without band."
            )
        drop = validate_drop(drop)
        check_threshold_drop(threshold, drop)
        check_num_classes_applies(per, num_classes)
        self.loss = loss
        self.per = per
        self.ignore_index, self.min_kept, self.threshold = ignore_index, min_kept, threshold
        self._loss_ignores = wrapped_ignore_index(loss)  # used while ignore_index is None
        self.num_classes = None if num_classes is None else int(num_classes)
        self._ratio, self._drop = 1.0, 0.0
        if self.band is None:
            self.set_range(DEFAULT_RATIO if ratio is None else ratio, drop)

    @property
    def ratio(self) -> float:
        """Fraction of the valid losses kept from the top (k/n), in (0, 1]."""
        return self._ratio

    @ratio.setter
    def ratio(self, value: float) -> None:
        self.set_range(value, self._drop)

    @property
    def anneal_refusal(self) -> str | None:
        """None, or why no callback may change ``ratio`` (TopKScheduler, TopKOnPlateau refuse the loss
        before any step with this text, "<problem>. Fix: ..."); a subclass's rule sets it."""
        return None

    @property
    def drop(self) -> float:
        """Fraction of the hardest valid losses dropped (m/n), in [0, ratio)."""
        return self._drop

    @drop.setter
    def drop(self, value: float) -> None:
        self.set_range(self._ratio, value)

    def set_range(self, ratio: float, drop: float | None = None) -> None:
        """Set ``ratio`` and ``drop`` together (``drop`` None: unchanged), checked as a pair.

        Example::

            loss.set_range(0.5, 0.05)   # average ranks 5%..50% of the batch
        """
        if self.band is not None:
            raise ValueError(
                f"This TopKLoss uses band={self.band}, which has no ratio or drop to set. Fix: "
                "build it with ratio=/drop= instead of band= to anneal or reduce k."
            )
        new_ratio = validate_ratio(ratio)
        new_drop = self._drop if drop is None else validate_drop(drop)
        check_threshold_drop(self.threshold, new_drop, f" (drop={new_drop} with threshold={self.threshold})")
        if new_drop >= new_ratio:
            raise ValueError(
                f"drop ({new_drop}) must be below ratio ({new_ratio}): ranks drop·n+1..ratio·n are "
                "averaged. Fix: a smaller drop or a larger ratio, e.g. ratio=0.7, drop=0.1."
            )
        self._ratio, self._drop = new_ratio, new_drop

    def checkpoint_state(self) -> dict[str, Any]:
        """What ``model.save`` keeps besides tensors: the current ratio and drop."""
        return {"ratio": self._ratio, "drop": self._drop}

    def check_checkpoint_state(self, state: dict[str, Any], source: str) -> None:
        ratio = validate_ratio(state.get("ratio", self._ratio), f"ratio saved in {source}")
        drop = validate_drop(state.get("drop", 0.0), f"drop saved in {source}")
        if self.band is None and drop >= ratio:
            raise ValueError(f"{source} holds drop {drop} >= ratio {ratio}. Fix: use the checkpoint it wrote.")
        where = f" ({source} holds drop {drop}, this loss threshold={self.threshold})"
        check_threshold_drop(self.threshold, drop, where)

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore ratio and drop, so ``model.evaluate`` after ``load_state`` keeps the right k and m."""
        if self.band is None:
            self.set_range(state.get("ratio", self._ratio), state.get("drop", 0.0))

    def extra_repr(self) -> str:
        rule = f"band={self.band}" if self.band is not None else f"ratio={self._ratio}, drop={self._drop}"
        own = self._loss_ignores if self.ignore_index is None and self._loss_ignores is not None else None
        return (
            f"{rule}, per={self.per}, ignore_index={self.ignore_index}"
            + ("" if own is None else f" (the loss's {own})") + ", "
            f"min_kept={self.min_kept}, threshold={self.threshold}"
            + (f", num_classes={self.num_classes}" if self.num_classes is not None else "")
        )

    # ------------------------------------------------------------ forward

    def forward(self, *inputs: paddle.Tensor) -> paddle.Tensor:
        raw = self.loss(*inputs)
        values = _topk_input.check_loss(self.loss, raw, inputs, self.per)
        if self.ignore_index is not None:
            ignored = _topk_input.ignored_mask(self.ignore_index, values, inputs)
        else:  # the wrapped loss's zeros for its ignored elements must not count in n
            ignored = _topk_input.fitting_mask(self._loss_ignores, values, inputs)
        if self.per == "sample":
            values, ignored = _topk_input.per_sample(values, ignored)
        elif self.per == "class":
            values, ignored = _topk_input.per_class(values, ignored, inputs, self.num_classes)
        else:
            values = values.reshape([-1])
            ignored = None if ignored is None else ignored.reshape([-1])
        if int(values.shape[0]) == 0:
            return values.sum()  # an empty batch: 0, and the graph stays connected
        if self.band is not None:
            return _ranked.band_mean(values, ignored, *self.band)
        if self._drop > 0:
            return _ranked.ranked_range_mean(values, ignored, self._ratio, self._drop, self.min_kept)
        return _ranked.top_k_mean(values, ignored, self._ratio, self.min_kept, self.threshold)
