"""What watching training costs: ``fit`` with AutoWeight and every callback vs a plain ``fit``.

Variants, all the same network, data, seed and number of steps, in one process:

- ``plain``:     a Layer returning ``mse1 + mse2``; hapi's default progress line
                 (``ProgBarLogger``, ``verbose=2``, ``log_freq=10``).
- ``autoweight``: ``AutoWeight`` (kendall) + ``AutoWeightCallback``; hapi's line.
- ``watched``:   ``autoweight`` + ``TensorBoardExport`` + ``VisualDLExport`` (if
                 installed), both writing every step, + ``TqdmProgressBar``.

Every repeat runs each variant once, in a rotating order (interleaved, so drifts of
the machine hit all variants alike). The table gives medians over repeats; the ratios
below it are medians of the per-repeat ratios (each repeat's variants ran back to
back), with their min-max range. Console output of the bars goes to /dev/null so
terminal speed does not count.

    python scripts/bench_fit_overhead.py            # about 2 minutes on 2 CPU cores
    python scripts/bench_fit_overhead.py --quick    # a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import paddle

from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback, TensorBoardExport, TqdmProgressBar, VisualDLExport

try:
    VisualDLExport("unused")  # raises ImportError if visualdl is missing; writes nothing
    HAVE_VISUALDL = True
except ImportError:
    HAVE_VISUALDL = False


class Data(paddle.io.Dataset):
    """Inputs of ``shape``; y1, y2 two noisy linear targets of them."""

    def __init__(self, n: int, shape: tuple[int, ...]) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((n, *shape)).astype("float32")
        flat = self.x.reshape(n, -1)
        dim = flat.shape[1]
        self.y1 = (flat @ rng.standard_normal((dim, 1)) / np.sqrt(dim) + 2.0 * rng.standard_normal((n, 1)))
        self.y2 = (flat @ rng.standard_normal((dim, 1)) / np.sqrt(dim) + 0.3 * rng.standard_normal((n, 1)))
        self.y1, self.y2 = self.y1.astype("float32"), self.y2.astype("float32")

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x[i], self.y1[i], self.y2[i]

    def __len__(self) -> int:
        return len(self.x)


class MLP(paddle.nn.Layer):
    """64 -> 512 -> 512, two linear heads: a step is mostly framework overhead."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = paddle.nn.Sequential(
            paddle.nn.Linear(64, 512), paddle.nn.ReLU(), paddle.nn.Linear(512, 512), paddle.nn.ReLU()
        )
        self.h1 = paddle.nn.Linear(512, 1)
        self.h2 = paddle.nn.Linear(512, 1)

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        z = self.trunk(x)
        return [self.h1(z), self.h2(z)]


class CNN(MLP):
    """A small conv net on 3x32x32 images (two conv layers, one hidden linear), two heads."""

    def __init__(self) -> None:
        paddle.nn.Layer.__init__(self)
        self.trunk = paddle.nn.Sequential(
            paddle.nn.Conv2D(3, 16, 3, padding=1), paddle.nn.ReLU(), paddle.nn.MaxPool2D(2),
            paddle.nn.Conv2D(16, 32, 3, padding=1), paddle.nn.ReLU(), paddle.nn.MaxPool2D(2),
            paddle.nn.Flatten(), paddle.nn.Linear(32 * 8 * 8, 128), paddle.nn.ReLU(),
        )
        self.h1 = paddle.nn.Linear(128, 1)
        self.h2 = paddle.nn.Linear(128, 1)


# name: (network, input shape, samples, batch size, epochs)
WORKLOADS: dict[str, tuple[type[MLP], tuple[int, ...], int, int, int]] = {
    "mlp": (MLP, (64,), 8192, 64, 3),
    "cnn": (CNN, (3, 32, 32), 1280, 32, 2),
}


class SumLoss(paddle.nn.Layer):
    """What people write without AutoWeight: mse1 + mse2."""

    def forward(self, o1: paddle.Tensor, o2: paddle.Tensor, y1: paddle.Tensor, y2: paddle.Tensor) -> paddle.Tensor:
        return paddle.nn.functional.mse_loss(o1, y1) + paddle.nn.functional.mse_loss(o2, y2)


def build(loss: paddle.nn.Layer, workload: str) -> paddle.Model:
    net_cls, shape = WORKLOADS[workload][:2]
    paddle.seed(0)
    net = net_cls()
    inputs = [paddle.static.InputSpec([None, *shape], "float32", "x")]
    labels = [paddle.static.InputSpec([None, 1], "float32", n) for n in ("y1", "y2")]
    model = paddle.Model(net, inputs=inputs, labels=labels)
    model.prepare(paddle.optimizer.Adam(1e-3, parameters=model.parameters()), loss)
    return model


def run(variant: str, workload: str, data: Data, epochs: int, log_root: str) -> float:
    """Seconds one ``fit`` of ``variant`` takes (model building not counted)."""
    callbacks: list[Any] = []
    verbose = 2
    if variant == "plain":
        loss: paddle.nn.Layer = SumLoss()
    else:
        loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()},
                          method="kendall", task_types=["regression", "regression"])
        callbacks.append(AutoWeightCallback())
    model = build(loss, workload)
    batch_size = WORKLOADS[workload][3]
    with open(os.devnull, "w") as devnull:
        if variant == "watched":
            log_dir = tempfile.mkdtemp(dir=log_root)
            callbacks += [TensorBoardExport(log_dir), TqdmProgressBar(file=devnull)]
            if HAVE_VISUALDL:
                callbacks.append(VisualDLExport(log_dir))
            verbose = 1
        with contextlib.redirect_stdout(devnull):  # hapi's line prints to stdout
            start = time.perf_counter()
            model.fit(data, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=verbose,
                      callbacks=callbacks)
            if paddle.is_compiled_with_cuda():
                paddle.device.cuda.synchronize()
            return time.perf_counter() - start


def bench(workload: str, repeats: int, quick: bool) -> None:
    _, shape, samples, batch_size, epochs = WORKLOADS[workload]
    if quick:
        samples, epochs = batch_size * 8, 1
    data = Data(samples, shape)
    steps = epochs * -(-samples // batch_size)
    variants = ["plain", "autoweight", "watched"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    log_root = tempfile.mkdtemp(prefix="bench_fit_overhead-")
    try:
        for v in variants:  # warm-up: first-call costs (kernels, imports) not counted
            run(v, workload, data, 1, log_root)
        for r in range(repeats):
            for v in variants[r % 3:] + variants[: r % 3]:
                times[v].append(run(v, workload, data, epochs, log_root))
    finally:
        shutil.rmtree(log_root, ignore_errors=True)

    med = {v: statistics.median(t) for v, t in times.items()}
    print(f"## {workload}: {WORKLOADS[workload][0].__doc__}")
    print(f"batch {batch_size}, {steps} steps per fit, {repeats} interleaved repeats")
    print()
    print("| variant | fit, s | ms/step | × plain |")
    print("|---|---:|---:|---:|")
    for v in variants:
        print(f"| {v} | {med[v]:.3f} | {med[v] / steps * 1e3:.3f} | {med[v] / med['plain']:.3f} |")
    print()

    def paired(a: str, b: str) -> str:
        ratios = [x / y for x, y in zip(times[a], times[b])]
        return f"{statistics.median(ratios):.3f}x (range {min(ratios):.3f}-{max(ratios):.3f})"

    def per_step(a: str, b: str) -> str:
        return f"{(med[a] - med[b]) / steps * 1e6:+.0f} µs/step"

    print(f"watched / plain      = {paired('watched', 'plain')}  {per_step('watched', 'plain')}  (goal <= 1.03x)")
    print(f"autoweight / plain   = {paired('autoweight', 'plain')}  {per_step('autoweight', 'plain')}"
          "  (AutoWeight + AutoWeightCallback)")
    print(f"watched / autoweight = {paired('watched', 'autoweight')}  {per_step('watched', 'autoweight')}"
          "  (the exporters + tqdm, every step written)")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: few repeats, few steps")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    print(f"paddle {paddle.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"device {paddle.device.get_device()}, VisualDL {'on' if HAVE_VISUALDL else 'not installed'}")
    print()
    for workload in WORKLOADS if args.workload == "all" else [args.workload]:
        bench(workload, repeats, args.quick)


if __name__ == "__main__":
    main()
