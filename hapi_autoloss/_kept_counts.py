"""How many losses the ranking rules of ``_ranked`` keep (k) and drop (m): host-side and as 0-d tensors."""

from __future__ import annotations

import math

import paddle

# ratio·n within this of an integer counts as that integer, so float noise such as
# 0.07·100 = 7.000000000000001 keeps 7 elements, not 8.
ROUNDING_TOLERANCE = 1e-6
# float32 adds 0/1 exactly up to 2**24 valid entries; above, the count is summed in float64.
EXACT_FLOAT32_COUNT = 2**24


def k_of(ratio: float, n: int, min_kept: int = 1) -> int:
    """How many of ``n`` valid losses the top bound keeps (host-side, for reference).

    ``k = min(max(ceil(ratio·n − 1e-6), min_kept), n)``; 0 when ``n == 0``.

    Example::

        k_of(0.1, 1000)   # 100
        k_of(0.1, 5)      # 1  (0.5 rounds up)
        k_of(0.001, 10)   # 1  (never 0 while something is valid)
    """
    if n <= 0:
        return 0
    return min(max(math.ceil(ratio * n - ROUNDING_TOLERANCE), min_kept), n)


def m_of(drop: float, n: int, k: int, min_kept: int = 1) -> int:
    """How many of the hardest losses the ranked range drops (host-side, for reference).

    ``m = max(min(floor(drop·n + 1e-6), k − min(min_kept, k)), 0)``: rounded down (drop
    fewer rather than more), and never so many that fewer than ``min_kept`` (or all k,
    if k is smaller) remain averaged.

    Example::

        m_of(0.1, 64, k_of(0.7, 64))   # 6: ranks 7..45 of 64 are averaged
        m_of(0.5, 10, 3)               # 2: at least one loss stays
    """
    if k <= 0:
        return 0
    return max(min(math.floor(drop * n + ROUNDING_TOLERANCE), k - min(min_kept, k)), 0)


def count_valid(ignored: paddle.Tensor) -> paddle.Tensor:
    """The number of False entries of the 1-D bool ``ignored``, as a 0-d float64 tensor."""
    n = int(ignored.shape[0])
    if n < EXACT_FLOAT32_COUNT:
        return (n - ignored.astype("float32").sum()).astype("float64")
    return n - ignored.astype("float64").sum()


def k_tensor(n_valid: paddle.Tensor, ratio: float, min_kept: int, k_max: int) -> paddle.Tensor:
    """:func:`k_of` on a 0-d float64 count, as an int64 0-d tensor capped at ``k_max``."""
    k = paddle.ceil(n_valid * ratio - ROUNDING_TOLERANCE).astype("int64")
    k = paddle.maximum(k, paddle.full([], min_kept, dtype="int64"))
    return paddle.minimum(paddle.minimum(k, n_valid.astype("int64")), paddle.full([], k_max, dtype="int64"))


def m_tensor(n_valid: paddle.Tensor, drop: float, k: paddle.Tensor, min_kept: int) -> paddle.Tensor:
    """:func:`m_of` on tensors: ``n_valid`` 0-d float64, ``k`` 0-d int64."""
    m = paddle.floor(n_valid * drop + ROUNDING_TOLERANCE).astype("int64")
    floor_kept = paddle.minimum(k, paddle.full([], min_kept, dtype="int64"))
    return paddle.maximum(paddle.minimum(m, k - floor_kept), paddle.zeros([], dtype="int64"))
