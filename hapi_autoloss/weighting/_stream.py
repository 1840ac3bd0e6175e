"""One random stream on every rank: what rlw's draws and pcgrad's task orders need."""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle

from .._args import check_count
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


class SharedStream:
    """Mixin for a method that draws from its own NumPy stream (``seed``), the same on every
    rank (rlw's weights, pcgrad's task orders): with ``seed=None`` rank 0's seed is taken by
    every rank once, at train begin or at the first draw of a plain loop. The stream's state
    is saved with the method's checkpoint state."""

    seed: int | None

    def start_stream(self, seed: int | None) -> None:
        if seed is not None:
            seed = check_count(seed, "seed", 0, "seed=0, or seed=None (rank 0 draws one)")
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._shared = seed is not None  # an explicit seed is the same on every rank

    def begin_training(self) -> None:
        super().begin_training()  # type: ignore[misc]
        self.share_seed()

    def share_seed(self) -> None:
        """Every rank takes rank 0's seed (a collective, once; every rank calls it)."""
        if not self._shared:
            self._shared = True
            self._rng = rank0_stream(self._rng)

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "rng": self._rng.bit_generator.state}  # type: ignore[misc]

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().set_checkpoint_state(state)  # type: ignore[misc]
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]
            self._shared = True  # the saved stream is already the one every rank shares
