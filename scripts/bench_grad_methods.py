"""What a gradient-level method costs per step: time and peak memory relative to ``equal``.

The model: a shared MLP trunk (``--width`` units, 3 layers) and k one-unit heads, MSE per
task, Adam, batch 64, ``model.train_batch`` with ``hapi_autoloss.attach``. Variants:
``equal`` (a loss-level sum, one backward), then every gradient-level method in
parameter mode (``shared`` found automatically: k backward passes through the trunk) and,
where the method allows it, in representation mode (``shared=net.trunk, rep_grad=True``:
k passes through the heads, one through the trunk).

Time: all variants live in one process and take turns, ``--block`` steps each per round in
a random order, for ``--rounds`` rounds after 2 untimed ones; "× equal" is the median over
rounds of (variant's time / equal's time) in that round, so drifts of a shared machine hit
every variant alike. Memory: the peak that two steps allocate above what lives between steps
(parameters, gradients' storage, optimizer state), from Paddle's allocator statistics (host
memory on a CPU, ``max_memory_allocated`` on a GPU): activations, graphs kept for the
per-task passes, the per-task gradients.

    python scripts/bench_grad_methods.py                 # k = 2 and 5, about 4 minutes on 2 CPU cores
    python scripts/bench_grad_methods.py --tasks 5 --rounds 40
    python scripts/bench_grad_methods.py --quick         # a smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time

import numpy as np
import paddle
from paddle.base import core

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import hapi_autoloss
from hapi_autoloss import AutoWeight
from hapi_autoloss.weighting import METHODS
from hapi_autoloss.weighting.gradient import GradWeighting

BATCH = 64


class Net(paddle.nn.Layer):
    def __init__(self, k: int, width: int) -> None:
        super().__init__()
        nn = paddle.nn
        self.trunk = nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                   nn.Linear(width, width), nn.ReLU())
        self.heads = nn.LayerList([nn.Linear(width, 1) for _ in range(k)])

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        z = self.trunk(x)
        return [head(z) for head in self.heads]


def variants() -> list[tuple[str, str, bool]]:
    """(label, method, rep_grad): equal first."""
    out = [("equal", "equal", False)]
    for name in sorted(METHODS):
        cls = METHODS[name]
        if issubclass(cls, GradWeighting):
            out.append((name, name, False))
            if cls.rep_grad:
                out.append((f"{name} rep", name, True))
    return out


def build(k: int, width: int, method: str, rep: bool) -> tuple[paddle.Model, list]:
    paddle.seed(0)
    net = Net(k, width)
    loss = AutoWeight([paddle.nn.MSELoss() for _ in range(k)], method=method,
                      **({"shared": net.trunk, "rep_grad": True} if rep else {}))
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.Adam(1e-4, parameters=net.parameters()), loss)
    hapi_autoloss.attach(model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 32)).astype("float32")
    ys = [(x[:, i : i + 1] * (i + 1) + rng.standard_normal((BATCH, 1))).astype("float32") for i in range(k)]
    return model, [x, ys]


def sync() -> None:
    if paddle.is_compiled_with_cuda() and "gpu" in paddle.get_device():
        paddle.device.synchronize()


def step(model: paddle.Model, batch: list, n: int) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(n):
        model.train_batch([batch[0]], batch[1])
    sync()
    return time.perf_counter() - start


def memory(model: paddle.Model, batch: list) -> tuple[float, float]:
    """(peak a step allocates beyond what lives between steps (parameters, their gradients,
    optimizer state), that peak plus what lives between steps), in MiB: Paddle's own allocator
    statistics, host or GPU. The process holds every variant's model, so "what lives" is read
    as this variant's share: its parameters × 4 (values, gradients, Adam's two moments)."""
    gpu = paddle.is_compiled_with_cuda() and "gpu" in paddle.get_device()
    step(model, batch, 1)  # every accumulator exists
    if gpu:
        base = paddle.device.cuda.memory_allocated()
        paddle.device.cuda.reset_max_memory_allocated()
    else:
        base = core.host_memory_stat_current_value("Allocated", 0)
        core.host_memory_stat_reset_peak_value("Allocated", 0)
    step(model, batch, 2)
    peak = paddle.device.cuda.max_memory_allocated() if gpu else core.host_memory_stat_peak_value("Allocated", 0)
    own = 4 * sum(math.prod(p.shape) * p.element_size() for p in model.network.parameters())
    return (peak - base) / 2**20, (peak - base + own) / 2**20


def table(k: int, args: argparse.Namespace) -> None:
    runs = variants()
    models = {label: build(k, args.width, method, rep) for label, method, rep in runs}
    times: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    for r in range(args.rounds + 2):
        order = list(models)
        random.Random(r).shuffle(order)
        for label in order:
            seconds = step(*models[label], args.block)
            if r >= 2:
                times[label].append(seconds / args.block)
    mem = {label: memory(*models[label]) for label in models}
    base = times["equal"]
    print(f"\nk = {k} tasks, trunk width {args.width}, batch {BATCH}, {args.rounds} rounds of {args.block} steps")
    print("| method | mode | ms/step | × equal | step's extra memory (MiB) | × equal | with model + Adam (MiB) "
          "| × equal |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for label, _, rep in runs:
        ratio = statistics.median(t / b for t, b in zip(times[label], base))
        extra, whole = mem[label]
        mode = "loss" if label == "equal" else ("representation" if rep else "parameters")
        print(f"| {label.split()[0]} | {mode} | {1e3 * statistics.median(times[label]):.2f} | {ratio:.2f} | "
              f"{extra:.1f} | {extra / mem['equal'][0]:.2f} | {whole:.1f} | {whole / mem['equal'][1]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny width, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.width, args.rounds, args.block, args.tasks = 16, 2, 2, [2]
    print(f"paddle {paddle.__version__}, device {paddle.get_device()}, {os.cpu_count()} CPUs")
    for k in args.tasks:
        table(k, args)


if __name__ == "__main__":
    main()
