"""What watching training costs: ``fit`` with AutoWeight, per method, and with every callback, vs a plain ``fit``.

Variants, all the same network, data, seed and batches, in one process:

- ``plain``:     a Layer returning ``mse1 + mse2``; hapi's default progress line
                 (``ProgBarLogger``, ``verbose=2``, ``log_freq=10``).
- one per registered method (``hapi_autoloss.weighting.METHODS``): ``AutoWeight`` of
  two ``MSELoss`` with that method (default options; kendall: regression tasks; fixed:
  weights 0.5, 0.5) + ``AutoWeightCallback``; hapi's line.
- ``watched``:   kendall + ``TensorBoardExport`` + ``VisualDLExport`` (if installed),
                 both writing every step, + ``TqdmProgressBar``.

How it is timed: each variant runs one long ``fit`` (epochs of 128 batches for the MLP)
in its own thread, and the threads take turns: one runs ``--block`` (4) steps while
the others wait at the entry of ``model.train_batch``, in a random order each round,
for ``--rounds`` rounds after 3 untimed ones. A block is timed from entering a step to
entering the one ``--block`` steps later, so it holds whole steps: data, every
callback, AutoWeightCallback's work after the batch, an epoch's end when one falls in
it. Turns every few steps let the drifts of a shared machine hit every variant alike
(one whole fit per turn left differences of ±100 µs/step between runs). "over plain"
and "over equal" are medians of the differences within a round. ``--clock cpu`` times
with this process's CPU time, which other jobs on the machine disturb less. The timing
is not a callback: a callback AutoWeightCallback does not know makes it put σ into
``logs`` at every step. Console output goes to /dev/null.

Host reads per step: a separate, untimed fit of one full epoch per variant counts the
calls that copy a tensor to the host (``Tensor.numpy``, ``item``, ``tolist``,
``float()``, ``int()``, ``bool()``, ``np.asarray``) made directly by hapi_autoloss's
code, divided by the steps (hapi's own reads of the loss are not counted).

    python scripts/bench_fit_overhead.py --workload mlp   # about 1.5 minutes on 2 CPU cores
    python scripts/bench_fit_overhead.py                  # both workloads, about 8 minutes
    python scripts/bench_fit_overhead.py --workload mlp --methods kendall --rounds 300 --clock cpu
    python scripts/bench_fit_overhead.py --quick          # a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
import paddle

from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback, TensorBoardExport, TqdmProgressBar, VisualDLExport
from hapi_autoloss.weighting import METHODS

try:
    VisualDLExport("unused")  # raises ImportError if visualdl is missing; writes nothing
    HAVE_VISUALDL = True
except ImportError:
    HAVE_VISUALDL = False

# What a block is timed with (--clock): wall time, or this process's CPU time, which a
# machine shared with other jobs disturbs less (a preempted step does not count).
CLOCK = time.perf_counter

# Options a method needs with two regression tasks named y1, y2.
OPTIONS: dict[str, dict[str, Any]] = {
    "kendall": {"task_types": ["regression", "regression"]},
    "fixed": {"weights": [0.5, 0.5]},
}


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


# name: (network, input shape, batch size, batches per epoch)
WORKLOADS: dict[str, tuple[type[MLP], tuple[int, ...], int, int]] = {
    "mlp": (MLP, (64,), 64, 128),
    "cnn": (CNN, (3, 32, 32), 32, 40),
}


class SumLoss(paddle.nn.Layer):
    """What people write without AutoWeight: mse1 + mse2."""

    def forward(self, o1: paddle.Tensor, o2: paddle.Tensor, y1: paddle.Tensor, y2: paddle.Tensor) -> paddle.Tensor:
        return paddle.nn.functional.mse_loss(o1, y1) + paddle.nn.functional.mse_loss(o2, y2)


def method_of(variant: str) -> str | None:
    if variant == "plain":
        return None
    return "kendall" if variant == "watched" else variant


def build(variant: str, workload: str) -> paddle.Model:
    net_cls, shape = WORKLOADS[workload][:2]
    method = method_of(variant)
    if method is None:
        loss: paddle.nn.Layer = SumLoss()
    else:
        loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method=method,
                          **OPTIONS.get(method, {}))
    paddle.seed(0)
    net = net_cls()
    inputs = [paddle.static.InputSpec([None, *shape], "float32", "x")]
    labels = [paddle.static.InputSpec([None, 1], "float32", n) for n in ("y1", "y2")]
    model = paddle.Model(net, inputs=inputs, labels=labels)
    model.prepare(paddle.optimizer.Adam(1e-3, parameters=model.parameters()), loss)
    return model


def fit(model: paddle.Model, variant: str, data: Data, batch_size: int, log_root: str, epochs: int = 1,
        num_iters: int | None = None) -> None:
    """One ``fit`` of ``variant``; the caller sends stdout (hapi's line) to /dev/null."""
    callbacks: list[Any] = [] if variant == "plain" else [AutoWeightCallback()]
    verbose = 2
    if variant == "watched":
        log_dir = tempfile.mkdtemp(dir=log_root)
        callbacks += [TensorBoardExport(log_dir), TqdmProgressBar(file=sys.stdout)]
        if HAVE_VISUALDL:
            callbacks.append(VisualDLExport(log_dir))
        verbose = 1
    model.fit(data, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=verbose, callbacks=callbacks,
              num_iters=num_iters)


class Lockstep:
    """Runs one ``fit`` per variant, each in its own thread, ``block`` steps at a time in turn.

    Only one thread runs at any moment: the others wait at the entry of ``model.train_batch``.
    A block is timed from entering step j to entering step j + block, so it holds whole
    steps (data, callbacks, AutoWeightCallback's work after the batch, epoch ends when they
    fall in it). Interleaving every few steps lets the drifts of a shared machine hit every
    variant alike. It is not a callback: one AutoWeightCallback does not know would make
    it fill ``logs`` at every step.
    """

    def __init__(self, model: paddle.Model, block: int, total: int) -> None:
        self.block, self.total, self.steps = block, total, 0
        self.go, self.paused = threading.Event(), threading.Event()
        self.times: list[float] = []
        self.error: BaseException | None = None
        self._start = 0.0
        inner = model.train_batch

        def train_batch(*args: Any, **kwargs: Any) -> Any:
            if self.steps % self.block == 0 and self.steps < self.total:
                if self.steps:
                    self.times.append((CLOCK() - self._start) / self.block)
                self._yield()
            self.steps += 1
            return inner(*args, **kwargs)

        model.train_batch = train_batch  # type: ignore[method-assign]

    def _yield(self) -> None:
        self.paused.set()
        self.go.wait()
        self.go.clear()
        self._start = CLOCK()

    def turn(self) -> None:
        """Let this variant run one block; return when it waits again (or is done)."""
        self.paused.clear()
        self.go.set()
        self.paused.wait()


def time_steps(models: dict[str, paddle.Model], data: Data, batch_size: int, rounds: int, block: int,
               warmup: int, log_root: str) -> dict[str, list[float]]:
    """Seconds per step of each variant, one figure per block after ``warmup`` blocks."""
    total = (warmup + rounds) * block
    epochs = -(-(total + 1) // (len(data) // batch_size))
    clocks = {v: Lockstep(m, block, total) for v, m in models.items()}

    def run(v: str) -> None:
        clock = clocks[v]
        try:
            clock._yield()  # start at the first turn
            fit(models[v], v, data, batch_size, log_root, epochs=epochs, num_iters=total + 1)
        except BaseException as err:  # re-raised by the main thread
            clock.error = err
        finally:
            clock.steps = clock.total  # no more pauses
            clock.paused.set()

    threads = [threading.Thread(target=run, args=(v,), daemon=True) for v in models]
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # every thread's stdout
        for t in threads:
            t.start()
        for clock in clocks.values():
            clock.paused.wait()
        order = list(models)
        rng = np.random.default_rng(0)
        for _ in range(warmup + rounds + 1):  # the last turn runs each fit to its end
            for v in rng.permutation(order):
                clocks[v].turn()
        for t in threads:
            t.join()
    for clock in clocks.values():
        if clock.error is not None:
            raise clock.error
    return {v: clock.times[warmup:] for v, clock in clocks.items()}


_READS = ("numpy", "item", "tolist", "__float__", "__int__", "__bool__", "__array__")


@contextlib.contextmanager
def count_reads(counter: list[int]) -> Any:
    """Count host reads whose direct caller is hapi_autoloss's code."""
    originals = {name: getattr(paddle.Tensor, name) for name in _READS if hasattr(paddle.Tensor, name)}

    def spy(original: Any) -> Any:
        def read(self: Any, *args: Any, **kwargs: Any) -> Any:
            if sys._getframe(1).f_globals.get("__name__", "").startswith("hapi_autoloss"):
                counter[0] += 1
            return original(self, *args, **kwargs)
        return read

    for name, original in originals.items():
        setattr(paddle.Tensor, name, spy(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(paddle.Tensor, name, original)


def reads_per_step(variant: str, workload: str, data: Data, batch_size: int, log_root: str) -> float:
    """Reads from the first step's start to the end of fit (its epoch's end included), per step."""
    model = build(variant, workload)
    counter, first, steps = [0], [0], [0]
    inner = model.train_batch

    def train_batch(*args: Any, **kwargs: Any) -> Any:
        if steps[0] == 0:  # entering the first step: on_train_begin's reads are not a step's
            first[0] = counter[0]
        steps[0] += 1
        return inner(*args, **kwargs)

    model.train_batch = train_batch  # type: ignore[method-assign]
    with count_reads(counter), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        fit(model, variant, data, batch_size, log_root)
    return (counter[0] - first[0]) / max(1, steps[0])


def bench(workload: str, variants: list[str], rounds: int, block: int, quick: bool) -> None:
    net_cls, shape, batch_size, epoch_steps = WORKLOADS[workload]
    if quick:
        epoch_steps = 12
    data = Data(batch_size * epoch_steps, shape)
    log_root = tempfile.mkdtemp(prefix="bench_fit_overhead-")
    try:
        models = {v: build(v, workload) for v in variants}
        times = time_steps(models, data, batch_size, rounds, block, warmup=3, log_root=log_root)
        reads = {v: reads_per_step(v, workload, data, batch_size, log_root) for v in variants}
    finally:
        shutil.rmtree(log_root, ignore_errors=True)

    def over(a: str, b: str) -> float:  # median of the differences within a round, µs
        return statistics.median(x - y for x, y in zip(times[a], times[b])) * 1e6

    print(f"## {workload}: {net_cls.__doc__}")
    print(f"batch {batch_size}, {epoch_steps} steps per epoch; {rounds} rounds of {block} steps per variant, "
          "in a random order per round; medians")
    print()
    print("| variant | ms/step | µs/step over plain | µs/step over equal | host reads per step |")
    print("|---|---:|---:|---:|---:|")
    for v in variants:
        over_equal = f"{over(v, 'equal'):+.0f}" if "equal" in times and v != "plain" else ""
        print(f"| {v} | {statistics.median(times[v]) * 1e3:.3f} | {over(v, 'plain'):+.0f} | {over_equal} "
              f"| {reads[v]:.2f} |")
    print()

    def paired(a: str, b: str) -> str:
        ratios = [x / y for x, y in zip(times[a], times[b])]
        q = statistics.quantiles(ratios, n=4)
        return f"{statistics.median(ratios):.3f}x (quartiles {q[0]:.3f}-{q[2]:.3f})"

    for a, b, what in (("watched", "plain", "(goal <= 1.03x)"),
                       ("kendall", "plain", "(AutoWeight kendall + AutoWeightCallback)"),
                       ("watched", "kendall", "(the exporters + tqdm, every step written)")):
        if a in times and b in times:
            print(f"{a} / {b} = {paired(a, b)}  {over(a, b):+.0f} µs/step  {what}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: few rounds, few steps")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--block", type=int, default=4, help="steps a variant runs per turn")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time, steadier on a machine shared with other jobs")
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="methods to time (default: every registered one)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    methods = sorted(METHODS) if args.methods is None else args.methods
    if "equal" not in methods:
        methods = ["equal", *methods]
    variants = ["plain", *methods, "watched"]
    rounds = 3 if args.quick else args.rounds
    print(f"paddle {paddle.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"device {paddle.device.get_device()}, VisualDL {'on' if HAVE_VISUALDL else 'not installed'}, "
          f"clock {args.clock}")
    print()
    for workload in WORKLOADS if args.workload == "all" else [args.workload]:
        bench(workload, variants, rounds, args.block, args.quick)


if __name__ == "__main__":
    main()
