"""The histogram side of the radix select in ``_select``: bucket sums, the search of cumulated counts, range sums."""

from __future__ import annotations

from typing import Final

import numpy as np
import paddle

HALF = 1 << 16
F64: Final = "float64"
ROWS, COLS = 512, 128  # a 65536-bin histogram is searched as 512 rows of 128: small ops only
# bincount adds its weights one by one in float32, so a bucket's sum drifts with how many losses
# it holds: ~1e-8 relative for spread losses, up to ~2e-3 when most of a slice shares one bucket
# (losses equal to 3 digits). Slices of this many, added in float64, bound that; the gradient is
# exact either way. Float64 weights would cost ~5 ms per 2**20 losses (measured), ~2% of a CE.
SUM_SLICE = 2**18
_CONST: dict[str, paddle.Tensor] = {}


def const(name: str) -> paddle.Tensor:
    """Cached index constants on the CPU: the rows in descending value order (rows 255..0
    hold the non-negative floats, 256..511 the negative ones), columns forward/backward, and
    plain row and column indices."""
    if name not in _CONST:
        arrays = {
            "rows": np.concatenate([np.arange(ROWS // 2 - 1, -1, -1), np.arange(ROWS // 2, ROWS)]),
            "cols": np.stack([np.arange(COLS - 1, -1, -1), np.arange(COLS)]),
            "row_index": np.arange(ROWS),
            "col_index": np.arange(COLS),
        }
        _CONST.update({k: paddle.to_tensor(a.astype(np.int64), place=paddle.CPUPlace()) for k, a in arrays.items()})
    return _CONST[name]


def reach(cells: paddle.Tensor, c: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """For each row i of ``cells`` [r, L] (counts in descending value order) and ``c[i]``: the
    first position whose cumulated count reaches c[i], the count before it and the count at it."""
    cum = paddle.cumsum(cells, axis=1)
    pos = (cum < c.unsqueeze(1)).astype("int64").sum(axis=1, keepdim=True)  # [r, 1]
    at = paddle.take_along_axis(cells, pos, axis=1)
    return pos.reshape([-1]), (paddle.take_along_axis(cum, pos, axis=1) - at).reshape([-1]), at.reshape([-1])


def bucket_sums(high: paddle.Tensor, v: paddle.Tensor) -> paddle.Tensor:
    """The sum of the losses of each of the 65536 buckets, float64 [65536] (ignored: left out)."""
    n = int(v.shape[0])
    total = None
    for start in range(0, n, SUM_SLICE):
        part = paddle.bincount(high[start : start + SUM_SLICE], weights=v[start : start + SUM_SLICE],
                               minlength=HALF + 1)[:HALF].astype(F64)  # fmt: skip
        total = part if total is None else total + part
    assert total is not None
    return total


def hist256(key: paddle.Tensor, r: int) -> paddle.Tensor:
    """Counts [r, 256] of the keys of row i, shifted by 257·i (256: left out), as float64."""
    return paddle.bincount(key.reshape([-1]), minlength=r * 257).reshape([r, 257])[:, :256].astype(F64)


def times(count: paddle.Tensor, tau: paddle.Tensor) -> paddle.Tensor:
    """count·τ in float64, 0 when the count is 0 (also for an infinite or NaN τ)."""
    return paddle.where(count > 0, count * tau.astype(F64), paddle.zeros([], F64))


def between(row, col, row_sums, cells, r):
    """Sum of the buckets strictly between τ_m's and τ_k's (above τ_k's when r = 1), from
    the bucket sums: rows ``row_sums`` [512] and the two rows ``cells`` [r, 128] that hold
    the τs, all in descending order. Masked sums, not differences of prefix sums, so that
    infinite losses ranked above m do not turn the result into inf − inf."""
    rows, cols = const("row_index"), const("col_index")
    zero = paddle.zeros([], F64)
    row_m, col_m = (row[1], col[1]) if r > 1 else (paddle.full([], -1, "int64"), paddle.full([], -1, "int64"))
    total = paddle.where(paddle.logical_and(rows > row_m, rows < row[0]), row_sums, zero).sum()
    in_k = paddle.logical_and(cols < col[0], paddle.logical_or(row[0] != row_m, cols > col_m))
    total = total + paddle.where(in_k, cells[0], zero).sum()
    if r > 1:
        total = total + paddle.where(paddle.logical_and(cols > col_m, row[0] != row_m), cells[1], zero).sum()
    return total
