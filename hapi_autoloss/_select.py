"""Exact rank selection without sorting, for large 1-D float32 losses on the CPU.

``paddle.topk`` of k out of n ≈ 10⁶ costs ≈ 7% of a segmentation cross-entropy on the
CPU. Here the k-th largest valid loss τ_k is found exactly from two histograms of the
float32 bit patterns instead (a radix select): one ``bincount`` of the high 16 bits of
all n losses, then one of the low 16 bits of the few losses in the bucket holding
τ_k. The mean of ranks m+1..k is then

    (S_k − S_m) / (k − m),   S_c = Σ_{v > τ_c} v + (c − #{v > τ_c})·τ_c,

exact (with ties at τ_c the value is the same as any tie-break's), and its gradient is
the weight ``W_k − W_m`` on each valid loss, ``W_c = 1`` above τ_c and
``(c − #{v > τ_c}) / #{v = τ_c}`` on the losses equal to τ_c (1 without ties): a valid
subgradient that splits a tie evenly. Counts and sums come from the histograms, the
counts k and m may be 0-d tensors, and nothing is read on the host. Float32 bins are
ordered as floats by reading the high 16 bits without sign extension: bins
0..32767 are the non-negative floats, ascending; bins 32768..65535 the negative ones,
descending; ignored losses go to an extra bin 65536.
"""

from __future__ import annotations

import paddle

HALF = 1 << 16
SIGN = 1 << 15
DUMP = HALF  # the bin of the ignored losses


class _Selected(paddle.autograd.PyLayer):
    """Forward: the mean of the ranked range. Backward: the weights times the incoming
    gradient, built only then, so the forward allocates nothing of size n but one int32 buffer."""

    @staticmethod
    def forward(ctx, values, args):  # type: ignore[override]
        value, rule = _select(values, *args)
        ctx.rule = rule
        ctx.save_for_backward(values)
        return value

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (values,) = ctx.saved_tensor()
        return ctx.rule.weights(values.detach(), grad)


def _desc_order() -> paddle.Tensor:
    """Bin of each position when the 65536 high-16-bit bins are read in descending value order."""
    return paddle.concat(
        [paddle.arange(SIGN - 1, -1, -1, dtype="int64"), paddle.arange(SIGN, HALF, dtype="int64")]
    )


class _Rule:
    """Who gets which weight, for the backward: ``lo`` below (τ_k, c = k) and ``hi`` (τ_m)."""

    def __init__(self, ignored, taus, fracs, member_index, member_weight, scale) -> None:
        self.ignored = ignored
        self.taus = taus
        self.fracs = fracs
        self.member_index = member_index
        self.member_weight = member_weight
        self.scale = scale

    def weights(self, values: paddle.Tensor, grad: paddle.Tensor) -> paddle.Tensor:
        keep = values >= self.taus[0]
        if len(self.taus) > 1:
            keep = paddle.logical_and(keep, paddle.logical_not(values >= self.taus[1]))
        if self.ignored is not None:
            keep = paddle.logical_and(keep, paddle.logical_not(self.ignored))
        w = keep.astype(values.dtype)
        # The losses in τ's buckets get their exact weight (ties at τ split evenly).
        w.put_along_axis_(self.member_index, self.member_weight, 0)
        return w.scale_(grad * self.scale)


class _Args:
    """Holds the tensors that must not reach PyLayer's argument scan (they get no gradient)."""

    def __init__(self, *items) -> None:
        self.items = items

    def __iter__(self):
        return iter(self.items)


def ranked_sum_mean(values: paddle.Tensor, ignored: paddle.Tensor | None, counts_of) -> paddle.Tensor:
    """(S_k − S_m) / max(k − m, 1) with ``[k, m] = counts_of(n_valid)`` (or ``[k]``: m = 0),
    ``n_valid`` a 0-d float64 tensor, k, m int64 0-d, m <= k <= n_valid; see the module
    docstring. 0-d float32, differentiable in ``values``."""
    return _Selected.apply(values, _Args(ignored, counts_of))


def _select(values, ignored, counts_of):
    v = values.detach()
    bits = v.view(paddle.int32)
    high = paddle.bitwise_right_shift(bits, paddle.full([], 16, dtype="int32"), is_arithmetic=False)
    if ignored is not None:
        high.masked_fill_(ignored, DUMP)
    order = _desc_order()
    hist = paddle.bincount(high, minlength=HALF + 1)
    counts = counts_of(int(values.shape[0]) - hist[DUMP].astype("float64"))
    divisor = paddle.clip(counts[0] - counts[1] if len(counts) > 1 else counts[0], min=1)
    count = paddle.gather(hist, order)
    total = paddle.gather(paddle.bincount(high, weights=v, minlength=HALF + 1).astype("float64"), order)
    c = paddle.stack([x.reshape([]) for x in counts]).astype("int64")  # [r]
    cum = paddle.cumsum(count)
    pos = (cum.unsqueeze(0) < c.unsqueeze(1)).astype("int64").sum(axis=1)  # [r] bucket of the c-th largest
    count_at = paddle.gather(count, pos)
    above = paddle.gather(cum, pos) - count_at
    sum_above = paddle.gather(paddle.cumsum(total), pos) - paddle.gather(total, pos)
    bucket = paddle.gather(order, pos).astype("int32")  # [r] high 16 bits of τ
    # The members of the buckets: their indices, bits and values (few, whatever n).
    inside = high == bucket[0]
    if len(counts) > 1:
        inside = paddle.logical_or(inside, high == bucket[1])
    index = paddle.nonzero(inside).reshape([-1])
    m_bits = paddle.gather(bits, index)
    m_high = paddle.gather(high, index)
    m_val = paddle.gather(v, index)
    taus, fracs, sums = [], [], []
    for i in range(len(counts)):
        member = m_high == bucket[i]
        # Low 16 bits, flipped for negative floats so that larger means larger; others to DUMP.
        negative = (bucket[i] >= SIGN).astype("int32")
        low = paddle.bitwise_xor(paddle.bitwise_and(m_bits, paddle.full([], HALF - 1, "int32")), negative * (HALF - 1))
        low = paddle.where(member, low, paddle.full([], DUMP, "int32"))
        count2 = paddle.flip(paddle.bincount(low, minlength=HALF + 1)[:HALF], 0)
        cum2 = paddle.cumsum(count2)
        rest = c[i] - above[i]
        pos2 = (cum2 < rest).astype("int64").sum()
        eq = paddle.gather(count2, pos2)
        gt = above[i] + paddle.gather(cum2, pos2) - eq
        low_tau = (HALF - 1 - pos2).astype("int32")
        tau_bits = bucket[i] * HALF + paddle.bitwise_xor(low_tau, negative * (HALF - 1))
        tau = tau_bits.view(paddle.float32)
        m_gt = paddle.logical_and(member, m_val > tau)
        sum_gt = sum_above[i] + paddle.where(m_gt, m_val, paddle.zeros_like(m_val)).astype("float64").sum()
        tied = (c[i] - gt).astype("float64")
        sums.append(sum_gt + paddle.where(tied > 0, tied * tau.astype("float64"), paddle.zeros_like(tied)))
        taus.append(tau)
        fracs.append(tied / paddle.clip(eq.astype("float64"), min=1))
    # Exact weights W_k − W_m of the bucket members.
    weight = paddle.zeros_like(m_val)
    for i, sign in zip(range(len(counts)), (1.0, -1.0)):
        w = (m_val > taus[i]).astype("float32") + (m_bits == taus[i].view(paddle.int32)).astype("float32") * fracs[
            i
        ].astype("float32")
        weight = weight + sign * w
    value = sums[0] if len(sums) == 1 else sums[0] - sums[1]
    scale = 1.0 / divisor.astype("float32")
    value = (value.astype("float32") * scale).reshape([])
    return value, _Rule(ignored, taus, fracs, index, weight, scale)
