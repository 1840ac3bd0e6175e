"""One random stream on every rank: what rlw's draws and pcgrad's task orders need."""

from __future__ import annotations

import numpy as np
import paddle

from .._hapi import world


def rank0_stream(rng: np.random.Generator) -> np.random.Generator:
    """A generator seeded by a draw of rank 0's ``rng``, the same on every rank (a broadcast:
    every rank must call it); ``rng`` itself with one rank. Drawing never touches Paddle's stream."""
    rank, nranks = world()
    if nranks <= 1:
        return rng
    seed = paddle.to_tensor([int(rng.integers(0, 2**62)) if rank == 0 else 0], dtype="int64")
    paddle.distributed.broadcast(seed, src=0)
    return np.random.default_rng(int(seed.numpy()[0]))
