"""Exact ranked sums without sorting, for large 1-D float32 losses on the CPU.

``paddle.topk`` of k out of n ≈ 10⁶ costs ≈ 7% of a segmentation cross-entropy on the
CPU. Here the c-th largest valid loss τ_c is found exactly from two histograms of the
float32 bit patterns (a radix select): one ``bincount`` of the high 16 bits of all n
losses, then two 256-bin ones of the low 16 bits of the few losses in the bucket that
holds τ_c.
The mean of ranks m+1..k is then

    (S_k − S_m) / (k − m),   S_c = Σ_{v > τ_c} v + (c − #{v > τ_c})·τ_c,

exact (with ties at τ_c it is the value any tie-break gives; summed as the losses between
the two τs, never as a difference, so infinite losses among the top m do not give
inf − inf), and its gradient is the
weight ``(W_k − W_m) / (k − m)`` on each valid loss, ``W_c = 1`` above τ_c and
``(c − #{v > τ_c}) / #{v = τ_c}`` on the losses equal to τ_c (1 without ties): a valid
subgradient that splits a tie evenly. The counts and the sum above each bucket come
from the histograms (a count bincount and a value-weighted one), k and m are 0-d
tensors computed from the valid count, and nothing is read on the host.

The high 16 bits read without sign extension order the floats this way: bins
0..32767 are the non-negative floats, ascending; bins 32768..65535 the negative
ones, descending. Ignored losses go to an extra bin 65536.

Example::

    counts = lambda n_valid: [k_tensor(n_valid, 0.1, 1, k_max)]  # ATk, ratio 0.1
    loss = ranked_sum_mean(losses, ignored, counts)
"""

from __future__ import annotations

from typing import Callable

import paddle

from ._select_bins import COLS, F64, HALF, ROWS, between, bucket_sums, const, hist256, reach, times
from ._sot import eager_from_here

SIGN = 1 << 15
DUMP = HALF  # the bin of the ignored losses

CountsOf = Callable[[paddle.Tensor], list]

# From this many losses on, a CPU ranking uses this radix select instead of paddle.topk
# (measured on 2 EPYC cores: equal at 2**17 losses, the select faster in every variant
# from 2**18 on; its fixed cost is ≈ 1.8 ms of small ops).
SELECT_MIN_SIZE = 2**18
# The high 16 bits of a NaN: +NaN above +inf's bucket (0x7F80), −NaN below −inf's (0xFF80).
NAN_BINS = ((0x7F81, 0x8000), (0xFF81, 0x10000))


def use_select(values: paddle.Tensor) -> bool:
    """Whether to rank the 1-D ``values`` here: large, on the CPU, in eager mode (the GPU
    keeps paddle.topk, which needs no host sync there, unlike bincount and nonzero). The
    default device must be the CPU too: the select's own constants are made there."""
    if int(values.shape[0]) < SELECT_MIN_SIZE or not paddle.in_dynamic_mode() or paddle.get_device() != "cpu":
        return False  # a to_static trace on the GPU stays one graph here
    eager_from_here(recursive=True)  # a trace can neither read .place here nor view bits as ints
    return values.place.is_cpu_place()


def ranked_sum_mean(values: paddle.Tensor, ignored: paddle.Tensor | None, counts_of: CountsOf) -> paddle.Tensor:
    """(S_k − S_m) / max(k − m, 1) of the 1-D float32 ``values``, ``[k, m] = counts_of(n_valid)``
    (or ``[k]``: m = 0) with ``n_valid`` a 0-d float64 tensor and 0-d int64 counts,
    m <= k <= n_valid; see the module docstring. 0-d float32, differentiable in ``values``."""
    eager_from_here(recursive=True)
    return _Selected.apply(values, _Args(ignored, counts_of))


class _Args:
    """Carries what PyLayer must not treat as an input with a gradient."""

    def __init__(self, ignored: paddle.Tensor | None, counts_of: CountsOf) -> None:
        self.ignored, self.counts_of = ignored, counts_of


class _Selected(paddle.autograd.PyLayer):
    """Forward: the ranked mean. Backward: the weights times the incoming gradient, built
    only then, so that nothing of size n is allocated for them in the forward."""

    @staticmethod
    def forward(ctx, values, args):  # type: ignore[override]
        value, ctx.rule = _select(values.detach(), args.ignored, args.counts_of)
        ctx.save_for_backward(values)
        return value

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (values,) = ctx.saved_tensor()
        return ctx.rule.weights(values.detach(), grad)


class _Weights:
    """The backward's weights: 1 on ``taus[1] >= v > taus[0]`` (the upper bound only with
    two counts), 0 on ignored losses, the exact ``W_k − W_m`` on the members of τ's
    buckets (which hold every loss equal to a τ), all times ``scale`` = 1 / max(k − m, 1)."""

    def __init__(self, ignored, taus, member_index, member_weight, scale) -> None:
        self.ignored, self.taus, self.scale = ignored, taus, scale
        self.member_index, self.member_weight = member_index, member_weight

    def weights(self, v: paddle.Tensor, grad: paddle.Tensor) -> paddle.Tensor:
        keep = v > self.taus[0]
        # a > b on bools is a & ~b, and far cheaper than logical_not on the CPU.
        if len(self.taus) > 1:
            keep = keep > (v > self.taus[1])
        if self.ignored is not None:
            keep = keep > self.ignored
        w = keep.astype(v.dtype)
        w.put_along_axis_(self.member_index, self.member_weight, 0)
        return w.scale_(grad * self.scale)


def _select(v: paddle.Tensor, ignored: paddle.Tensor | None, counts_of: CountsOf):
    """(value, _Weights) for the detached 1-D float32 ``v``."""
    n = int(v.shape[0])
    bits = v.view(paddle.int32)
    high = paddle.bitwise_right_shift(bits, paddle.full([], 16, dtype="int32"), is_arithmetic=False)
    if ignored is not None:
        high.masked_fill_(ignored, DUMP)
    count = paddle.bincount(high, minlength=HALF + 1)
    # A valid NaN makes the result NaN (as paddle.topk ranks NaN first), whatever its sign bit.
    has_nan = (count[NAN_BINS[0][0] : NAN_BINS[0][1]].sum() + count[NAN_BINS[1][0] : NAN_BINS[1][1]].sum()) > 0
    counts = counts_of(n - count[DUMP].astype(F64))
    r = len(counts)
    c = paddle.stack([x.reshape([]) for x in counts]).astype(F64)  # [r]
    # The bucket of τ_c: first the row, then the column of the histograms as [512, 128].
    count = count[:HALF].reshape([ROWS, COLS])
    sums = bucket_sums(high, v).reshape([ROWS, COLS])
    rows = const("rows")
    row_sums = paddle.stack([paddle.gather(count.sum(axis=1).astype(F64), rows),
                             paddle.gather(sums.sum(axis=1, dtype=F64), rows)])  # [2, 512] descending
    row, above_rows, _ = reach(row_sums[:1].expand([r, ROWS]), c)
    raw_row = paddle.gather(rows, row)
    cols = paddle.gather(const("cols"), (row >= ROWS // 2).astype("int64"))  # [r, 128] descending
    cells = paddle.stack([paddle.take_along_axis(paddle.gather(t, raw_row), cols, axis=1).astype(F64)
                          for t in (count, sums)])  # [2, r, 128]
    col, above_cols, _ = reach(cells[0], c - above_rows)
    above_count = above_rows + above_cols  # [r] losses above the bucket
    bucket = (raw_row * COLS + paddle.take_along_axis(cols, col.unsqueeze(1), axis=1).reshape([-1])).astype("int32")
    # The losses of those buckets (few, whatever n): their index, bits and value.
    inside = high == bucket[0]
    for i in range(1, len(counts)):
        inside = paddle.logical_or(inside, high == bucket[i])
    index = paddle.nonzero(inside).reshape([-1])
    m_bits = paddle.gather(bits, index)
    m_val = m_bits.view(paddle.float32)
    member = paddle.gather(high, index).unsqueeze(0) == bucket.unsqueeze(1)  # [r, s]
    # Low 16 bits as a descending key (0 = largest): flipped for non-negative floats.
    flip = paddle.where(bucket < SIGN, paddle.full([], HALF - 1, "int32"), paddle.zeros([], "int32"))
    key = paddle.bitwise_xor(paddle.bitwise_and(m_bits, paddle.full([], HALF - 1, "int32")).unsqueeze(0),
                             flip.unsqueeze(1))
    # Its rank inside the bucket, from two 256-bin histograms per row (high, then low byte).
    rest = c - above_count
    offset = paddle.arange(r, dtype="int32").unsqueeze(1) * 257
    high2 = paddle.where(member, paddle.bitwise_right_shift(key, paddle.full([], 8, "int32")),
                         paddle.full([], 256, "int32"))
    row2, above_rows2, _ = reach(hist256(high2 + offset, r), rest)
    low2 = paddle.where(high2 == row2.astype("int32").unsqueeze(1),
                        paddle.bitwise_and(key, paddle.full([], 255, "int32")), paddle.full([], 256, "int32"))
    col2, above_cols2, eq = reach(hist256(low2 + offset, r), rest - above_rows2)
    gt = above_count + above_rows2 + above_cols2
    pos2 = row2 * 256 + col2
    tau_bits = bucket.astype("int64") * HALF + paddle.bitwise_xor(pos2.astype("int32"), flip).astype("int64")
    tau_bits = (tau_bits - (tau_bits >= 2**31).astype("int64") * 2**32).astype("int32")  # as signed int32
    tau = tau_bits.view(paddle.float32)  # [r]
    # Compared as floats, −0.0 equals +0.0 but ranks below it: strictly above τ = −0.0 is
    # >= −0.0, i.e. > the negative float next to it.
    above_tau = (tau_bits + (tau_bits == -(2**31)).astype("int32")).view(paddle.float32)
    tied_bits = m_bits.unsqueeze(0) == tau_bits.unsqueeze(1)  # [r, s]
    higher = (m_val.unsqueeze(0) > above_tau.unsqueeze(1)) > tied_bits
    frac = (c - gt) / paddle.clip(eq, min=1.0)
    total = between(row, col, row_sums[1], cells[1], r)
    # The members strictly between τ_k and τ_m, then the losses equal to τ_k or τ_m.
    inside = higher[0] if r == 1 else paddle.logical_and(higher[0], (higher[1] | tied_bits[1]).logical_not())
    total = total + paddle.where(inside, m_val.astype(F64), paddle.zeros([], F64)).sum()
    tied, untied = c - gt, eq - (c - gt)  # how many equal to τ_c are ranked <= c, and > c
    if r == 1:
        total = total + times(tied[0], tau[0])
    else:
        same = tau_bits[0] == tau_bits[1]
        apart = times(tied[0], tau[0]) + times(untied[1], tau[1])
        total = total + paddle.where(same, times(tied[0] - tied[1], tau[0]), apart)
    w = higher.astype(F64) + tied_bits.astype(F64) * frac.unsqueeze(1)
    scale = 1.0 / paddle.clip(c[0] - c[1] if r > 1 else c[0], min=1.0)
    value = paddle.where(has_nan, paddle.full([], float("nan"), F64), total * scale).astype("float32")
    weights = (w[0] if r == 1 else w[0] - w[1]).astype("float32")  # W_k − W_m
    taus = [above_tau[i] for i in range(r)]
    return value, _Weights(ignored, taus, index, weights, scale.astype("float32"))
