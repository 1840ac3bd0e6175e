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


_HALF = 2**64


def _int64(v: int) -> int:
    """A 64-bit unsigned value as the int64 a buffer holds (two's complement)."""
    return v - _HALF if v >= 2**63 else v


def _encode(rng: np.random.Generator, shared: bool) -> np.ndarray:
    s = rng.bit_generator.state  # PCG64: a 128-bit state and increment, a cached half draw
    words = [s["state"]["state"] >> 64, s["state"]["state"] % _HALF, s["state"]["inc"] >> 64,
             s["state"]["inc"] % _HALF, s["has_uint32"], s["uinteger"], int(shared)]
    return np.asarray([_int64(int(w)) for w in words], dtype=np.int64)


def _decode(words: np.ndarray) -> tuple[dict[str, Any], bool]:
    w = [int(v) % _HALF for v in words]
    state = {"bit_generator": "PCG64", "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
             "has_uint32": w[4], "uinteger": w[5]}
    return state, bool(w[6])


class SharedStream:
    """Mixin for a method that draws from its own NumPy stream (``seed``), the same on every
    rank (rlw's weights, pcgrad's task orders): with ``seed=None`` rank 0's seed is taken by
    every rank once, at train begin or at the first draw of a plain loop. The stream's state
    is the buffer ``stream`` (int64, 7: PCG64's words and whether every rank shares it), so
    ``state_dict`` saves it wherever the method's other buffers go: hapi's checkpoints, a
    plain loop's ``paddle.save(loss.state_dict())``, PaddleSeg's ``model.pdparams``."""

    seed: int | None
    keeps_step_state = True

    def start_stream(self, seed: int | None) -> None:
        if seed is not None:
            seed = check_count(seed, "seed", 0, "seed=0, or seed=None (rank 0 draws one)")
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._shared = seed is not None  # an explicit seed is the same on every rank
        # on the host: written after each draw and read on loading, with no device sync
        words = paddle.to_tensor(_encode(self._rng, self._shared), place=paddle.CPUPlace())
        self.register_buffer("stream", words)  # type: ignore[attr-defined]

    def drew(self) -> None:
        """Write the stream's state to its buffer: call after each draw."""
        self.stream.set_value(_encode(self._rng, self._shared))  # type: ignore[attr-defined]

    def begin_training(self) -> None:
        super().begin_training()  # type: ignore[misc]
        self.share_seed()

    def share_seed(self) -> None:
        """Every rank takes rank 0's seed (a collective, once; every rank calls it)."""
        if not self._shared:
            self._shared = True
            self._rng = rank0_stream(self._rng)
            self.drew()

    def state_loaded(self) -> None:
        super().state_loaded()  # type: ignore[misc]
        words = self.stream.numpy()  # type: ignore[attr-defined]
        state, shared = _decode(words)
        self._rng.bit_generator.state = state
        self._shared = shared

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().set_checkpoint_state(state)  # type: ignore[misc]
        if "rng" in state:  # a checkpoint from before the buffer
            self._rng.bit_generator.state = state["rng"]
            self._shared = True  # the saved stream is already the one every rank shares
            self.drew()
