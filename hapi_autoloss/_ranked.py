"""The ranking kernels behind :class:`~hapi_autoloss.TopKLoss`, on 1-D float32 losses.

Every function here is vectorised and never reads a tensor value on the host: the
sizes of the ``paddle.topk`` calls come from the shapes, and counts that depend on
how many elements are ignored stay 0-d tensors.

Kept set, out of the ``n`` valid losses sorted in descending order (ranks 1..n):

- top-k / ranked range (AoRR): ranks ``m+1..k``, ``k = k_of(ratio, n, min_kept)``,
  ``m = m_of(drop, n, k, min_kept)`` (both in :mod:`hapi_autoloss._kept_counts`); ``m = 0``
  is the average top-k (ATk).
- band (JMLR 2022 rule): every loss in ``[μ − b·σ, μ + a·σ]``, μ and σ (ddof 0) of
  the valid losses, both without gradient.

The result is the mean over the kept set; each kept loss gets the gradient
``1/|kept|``, every other loss exactly 0. From ``_select.SELECT_MIN_SIZE`` losses on
the CPU, top-k and the ranked range go through the radix select of
:mod:`hapi_autoloss._select` instead of ``paddle.topk`` (same values; a tie at the k-th
value shares its weight evenly there).
"""

from __future__ import annotations

import math

import paddle

from . import _select
from ._kept_counts import count_valid, k_of, k_tensor, m_of, m_tensor
from ._select import use_select


def padded_topk(ranked: paddle.Tensor, count: paddle.Tensor, count_max: int) -> tuple[paddle.Tensor, paddle.Tensor]:
    """One unsorted static ``topk(count_max)`` of ``ranked`` with ``count_max − count`` +inf pads
    appended (``count`` a 0-d tensor): it holds the ``count`` largest entries and the pads, whose
    indices are >= len(ranked)."""
    pad = paddle.masked_fill(
        paddle.full([count_max], -math.inf, dtype=ranked.dtype),
        paddle.arange(count_max, dtype="int64") < count_max - count,
        math.inf,
    )
    return paddle.topk(paddle.concat([ranked, pad]), count_max, sorted=False)


def largest_mask(ranked: paddle.Tensor, count: paddle.Tensor | int, count_max: int) -> paddle.Tensor:
    """Bool mask of the ``count`` largest entries of the 1-D ``ranked`` (entries that
    must never be picked are −inf; ``count`` may be a 0-d tensor <= ``count_max``).

    ``count_max − count`` entries of +inf appended to the ranking fill the rest of one
    unsorted static ``topk(count_max)``, which then holds exactly the wanted entries.
    """
    n = int(ranked.shape[0])
    if count_max <= 0:
        return paddle.zeros([n], dtype="bool")
    if isinstance(count, int):
        index = paddle.topk(ranked, count, sorted=False)[1] if count > 0 else None
    else:
        index = padded_topk(ranked, count, count_max)[1]
    if index is None:
        return paddle.zeros([n], dtype="bool")
    # Pads land at index >= n and fall off the slice.
    hits = paddle.scatter(paddle.zeros([n + count_max], dtype="float32"), index, paddle.ones_like(index, "float32"))
    return hits[:n] > 0


def top_k(
    values: paddle.Tensor,
    ignored: paddle.Tensor | None,
    ratio: float,
    min_kept: int,
    n_valid: paddle.Tensor | None = None,
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor | None, paddle.Tensor | int]:
    """The top-k candidates: ``(kept, ranked, keep, k)`` with ``kept`` the values (with
    gradient) of a static top-k_max, ``ranked`` the same without gradient, ``keep``
    which of them are real (None: all), ``k`` an int or a 0-d int64 tensor."""
    n = int(values.shape[0])
    k_max = k_of(ratio, n, min_kept)
    if ignored is None:
        # A static k: topk's own backward (a scatter of k values) is the cheapest way back.
        kept = paddle.topk(values, k_max, sorted=False)[0]
        return kept, kept.detach(), None, k_max
    k = k_tensor(count_valid(ignored) if n_valid is None else n_valid, ratio, min_kept, k_max)
    ranked = paddle.masked_fill(values.detach(), ignored, -math.inf)
    top, index = padded_topk(ranked, k, k_max)
    # A −inf among the k picked (an ignored entry, a −inf pad or a valid −inf) means the k-th
    # largest valid loss is −inf (k <= the valid count): it counts, as −inf, never as an ignored loss.
    low = paddle.isneginf(top)
    keep = paddle.logical_or(index < n, low)
    # Gather with gradient from the unmasked values: the backward is one scatter.
    kept = paddle.take_along_axis(values, paddle.minimum(index, paddle.full([], n - 1, dtype="int64")), axis=0)
    kept = paddle.where(low, top.astype(kept.dtype), kept)
    return kept, top, keep, k


def _k_m(n_valid: paddle.Tensor, ratio: float, drop: float, min_kept: int, k_max: int) -> list[paddle.Tensor]:
    k = k_tensor(n_valid, ratio, min_kept, k_max)
    return [k, m_tensor(n_valid, drop, k, min_kept)]


def ranked_range_mean(
    values: paddle.Tensor, ignored: paddle.Tensor | None, ratio: float, drop: float, min_kept: int
) -> paddle.Tensor:
    """Mean of ranks m+1..k of the valid entries of the 1-D ``values`` (AoRR); 0-d."""
    n = int(values.shape[0])
    if use_select(values):  # large on the CPU: a radix select, k and m from the valid count
        k_max = k_of(ratio, n, min_kept)
        return _select.ranked_sum_mean(values, ignored, lambda n_valid: _k_m(n_valid, ratio, drop, min_kept, k_max))
    n_valid = None if ignored is None else count_valid(ignored)
    if ratio >= 1.0:  # k = n_valid: the candidates are all valid entries
        kept, ranked, keep = values, values.detach(), None
        k: paddle.Tensor | int = n
        if ignored is not None and n_valid is not None:
            ranked = paddle.masked_fill(ranked, ignored, -math.inf)
            keep, k = paddle.logical_not(ignored), n_valid.astype("int64")
    else:
        kept, ranked, keep, k = top_k(values, ignored, ratio, min_kept, n_valid)
        if keep is not None:
            ranked = paddle.where(keep, ranked, paddle.full([], -math.inf, dtype="float32"))
    k_max = k_of(ratio, n, min_kept)
    m_max = m_of(drop, n, k_max, min_kept)
    if isinstance(k, int):
        m: paddle.Tensor | int = m_of(drop, n, k, min_kept)
    else:
        assert n_valid is not None
        m = m_tensor(n_valid, drop, k, min_kept)
    dropped = largest_mask(ranked, m, m_max)
    use = paddle.logical_not(dropped) if keep is None else paddle.logical_and(keep, paddle.logical_not(dropped))
    total = paddle.where(use, kept, paddle.zeros_like(kept)).sum()
    count = k - m
    if isinstance(count, int):
        return nan_if_any(total / float(max(count, 1)), values, ignored)
    return nan_if_any(total / paddle.clip(count.astype("float32"), min=1.0), values, ignored)


def nan_if_any(
    result: paddle.Tensor, values: paddle.Tensor, ignored: paddle.Tensor | None, infinite: bool = False
) -> paddle.Tensor:
    """NaN when a valid loss is NaN (with ``infinite``: or ±inf), else ``result``: a rule that
    drops some losses (ranked range, band, threshold) must not hide one, so that hapi_autoloss's
    non-finite check sees it (as the top-k's does)."""
    bad = paddle.isnan(values.detach()) if not infinite else paddle.isfinite(values.detach()).logical_not()
    if ignored is not None:
        bad = bad > ignored  # a & ~b on bools
    return paddle.where(bad.any(), paddle.full([], math.nan, dtype=result.dtype), result)


def band_mean(values: paddle.Tensor, ignored: paddle.Tensor | None, above: float, below: float) -> paddle.Tensor:
    """Mean of the valid entries in ``[μ − below·σ, μ + above·σ]`` (μ, σ of the valid
    entries, population std, no gradient through them); 0 when none is inside; NaN when a valid entry is NaN or ±inf."""
    v = values.detach().astype("float64")  # the statistics in float64: thresholds without cancellation
    valid = None if ignored is None else paddle.logical_not(ignored)
    if valid is None:
        mu = v.mean()
        sigma = ((v - mu) ** 2).mean().sqrt()
    else:
        assert ignored is not None
        count = paddle.clip(count_valid(ignored), min=1.0)
        mu = paddle.where(valid, v, paddle.zeros_like(v)).sum() / count
        sigma = (paddle.where(valid, (v - mu) ** 2, paddle.zeros_like(v)).sum() / count).sqrt()
    conditions = [] if valid is None else [valid]
    if math.isfinite(above):
        conditions.append(v <= mu + above * sigma)
    if math.isfinite(below):
        conditions.append(v >= mu - below * sigma)
    inside = paddle.ones_like(v, dtype="bool")
    for condition in conditions:
        inside = paddle.logical_and(inside, condition)
    total = paddle.where(inside, values, paddle.zeros_like(values)).sum()
    # An infinite loss leaves μ or σ undefined, so no band exists: NaN, not a mean over nothing.
    return nan_if_any(total / paddle.clip(inside.astype("float32").sum(), min=1.0), values, ignored, infinite=True)


def top_k_mean(
    values: paddle.Tensor, ignored: paddle.Tensor | None, ratio: float, min_kept: int, threshold: float | None
) -> paddle.Tensor:
    """Mean of the k largest valid entries of the 1-D ``values`` (ATk), with
    ``threshold``: over ``{loss > threshold} ∪ top-k``; 0-d float32."""
    if ratio >= 1.0 and threshold is None:  # k = n_valid whatever min_kept: the (masked) mean
        if ignored is None:
            return values.mean()
        total = paddle.masked_fill(values, ignored, 0.0).sum()
        return total / paddle.clip(count_valid(ignored).astype("float32"), min=1.0)
    if threshold is None and use_select(values):
        k_max = k_of(ratio, int(values.shape[0]), min_kept)
        return _select.ranked_sum_mean(values, ignored, lambda n_valid: [k_tensor(n_valid, ratio, min_kept, k_max)])
    kept, top, keep, k = top_k(values, ignored, ratio, min_kept)
    if threshold is not None:
        return _with_threshold(values, ignored, kept, top, keep, threshold)
    if keep is None:
        return kept.mean()  # k = k_max exactly: no ranking among the selected needed
    total = paddle.where(keep, kept, paddle.zeros_like(kept)).sum()
    assert not isinstance(k, int)
    return total / paddle.clip(k.astype("float32"), min=1.0)


def _with_threshold(
    values: paddle.Tensor,
    ignored: paddle.Tensor | None,
    kept: paddle.Tensor,
    top: paddle.Tensor,
    keep: paddle.Tensor | None,
    threshold: float,
) -> paddle.Tensor:
    """Mean over {loss > threshold} ∪ top-k, each element counted once."""
    above = values.detach() > threshold
    if ignored is not None:
        above = paddle.logical_and(above, paddle.logical_not(ignored))
    # Top-k entries above the threshold are already in `above`; add the others.
    extra = top <= threshold
    if keep is not None:
        extra = paddle.logical_and(extra, keep)
    total = paddle.where(above, values, paddle.zeros_like(values)).sum() + paddle.where(
        extra, kept, paddle.zeros_like(kept)
    ).sum()
    count = above.astype("float32").sum() + extra.astype("float32").sum()
    return nan_if_any(total / paddle.clip(count, min=1.0), values, ignored)  # NaN > t and NaN <= t are False
