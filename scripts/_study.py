"""Shared helpers for the studies in scripts/: arguments, seeds, data, fitting, tables, plots.

Every study trains through ``paddle.Model.fit`` and runs one job per (method, seed). Jobs are
independent and seed themselves, so running them in 1 or 2 worker processes gives the same
numbers; ``--workers 2`` (the default) uses both cores of the reference machine.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

warnings.filterwarnings("ignore", message=".*ccache.*")  # paddle warns on import when ccache is missing
warnings.filterwarnings("ignore", message="To copy construct from a tensor")  # hapi to_tensor()s its own batches

import numpy as np  # noqa: E402
import paddle  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the checkout's hapi_autoloss, not whichever one is installed
    sys.path.insert(0, ROOT)
DOCS = os.path.join(ROOT, "docs")


# Defaults of the learned-scale methods, as explicit options so a study's numbers do not move when
# the library's defaults do. LEARNED_RULE is the rule chosen on validation by
# scripts/tune_learned_defaults.py (docs/results.md, issue 10 step 1): init "default" or "auto",
# and σ's lr_scale in AutoWeightCallback.
DEFAULT_INIT = {"kendall": 0.0, "simple": 0.0, "liebel": 1.0, "imtl_l": 0.0}
LEARNED_RULE: dict[str, Any] = {"init": "default", "lr_scale": 1.0}


def init_option(method: str, init: str) -> float | str:
    """The ``init=`` to pass: the method's default as a number, or "auto"."""
    return DEFAULT_INIT[method] if init == "default" else init


# ---------------------------------------------------------------- arguments


def parser(description: str, epochs: int) -> argparse.ArgumentParser:
    """The arguments every study takes: --seeds, --epochs, --quick, --workers, --out."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (default 5; --quick: 2)")
    ap.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {epochs}; --quick: tiny)")
    ap.add_argument("--quick", action="store_true", help="tiny data and epochs, for a smoke test (< 1 min)")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default 2; --quick: 1)")
    ap.add_argument("--out", default=DOCS, help="folder for the PNG plot (default docs/)")
    return ap


def resolve(args: argparse.Namespace, epochs: int, quick_epochs: int) -> argparse.Namespace:
    """Fill the defaults that depend on --quick."""
    if args.seeds is None:
        args.seeds = 2 if args.quick else 5
    if args.epochs is None:
        args.epochs = quick_epochs if args.quick else epochs
    if args.workers is None:
        args.workers = 1 if args.quick else 2
    if args.seeds < 1 or args.epochs < 1 or args.workers < 1:
        raise SystemExit("--seeds, --epochs and --workers must be >= 1")
    return args


# ---------------------------------------------------------------- seeds and jobs


def seed_everything(seed: int) -> None:
    """paddle's initialisers, numpy's global RNG (paddle's DataLoader shuffles with it), random."""
    paddle.seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def run_jobs(fn: Callable[..., dict[str, Any]], jobs: Sequence[tuple], workers: int) -> list[dict[str, Any]]:
    """``[fn(*job) for job in jobs]``, in order, over ``workers`` processes (spawned, 1 thread each)."""
    results: list[dict[str, Any]] = []
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            results.append(_timed(fn, *job))
            log_job(job, results[-1])
        return results
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers: 2 processes × 1 thread on 2 cores
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_timed, fn, *job) for job in jobs]
        for job, fut in zip(jobs, futures):
            results.append(fut.result())
            log_job(job, results[-1])
    return results


def _timed(fn: Callable[..., dict[str, Any]], *job: Any) -> dict[str, Any]:
    warnings.filterwarnings("ignore", message=".*ccache.*")
    paddle.set_device("cpu")
    start = time.perf_counter()
    out = fn(*job)
    out["seconds"] = time.perf_counter() - start
    return out


def log_job(job: tuple, result: dict[str, Any]) -> None:
    shown = {k: round(v, 4) for k, v in result.items() if isinstance(v, float) and k != "seconds"}
    print(f"  {job}: {shown} ({result['seconds']:.1f} s)", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data and models


class ArrayDataset(paddle.io.Dataset):
    """Item i is ``tuple(a[i] for a in arrays)``: inputs first, then labels, as hapi expects."""

    def __init__(self, *arrays: np.ndarray) -> None:
        super().__init__()
        if len({len(a) for a in arrays}) != 1:
            raise ValueError("all arrays need the same length")
        self.arrays = arrays

    def __getitem__(self, i: int) -> tuple:
        return tuple(a[i] for a in self.arrays)

    def __len__(self) -> int:
        return len(self.arrays[0])


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's bundled 8×8 digits (1797 images, no download): images in [0, 1], labels 0-9."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    return (d.images / 16.0).astype("float32"), d.target.astype("int64")


def fit(model: paddle.Model, data: paddle.io.Dataset, epochs: int, batch_size: int, callbacks: Iterable = ()) -> None:
    """``model.fit`` with the settings every study shares: shuffled, silent, no checkpoints."""
    model.fit(data, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0, callbacks=list(callbacks))


def predict(network: paddle.nn.Layer, x: np.ndarray, batch_size: int = 512) -> list[np.ndarray]:
    """The network's outputs (a list, one array per output) on ``x``, in eval mode."""
    network.eval()
    chunks: list[list[np.ndarray]] = []
    with paddle.no_grad():
        for i in range(0, len(x), batch_size):
            out = network(paddle.to_tensor(x[i : i + batch_size]))
            outs = out if isinstance(out, (list, tuple)) else [out]
            chunks.append([o.numpy() for o in outs])
    network.train()
    return [np.concatenate(parts) for parts in zip(*chunks)]


# ---------------------------------------------------------------- tables


def mean_std(values: Sequence[float], digits: int = 3, scale: float = 1.0) -> str:
    """``"0.912 ± 0.010"``: mean ± sample standard deviation (ddof=1) over seeds; one seed: the value."""
    v = np.asarray(values, dtype=np.float64) * scale
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(map(str, r)) for r in rows]
    align = ["---"] + ["--:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def collect(results: list[dict[str, Any]], method: str, key: str) -> list[float]:
    """The ``key`` values of one method's jobs, in seed order."""
    return [r[key] for r in sorted(results, key=lambda r: r["seed"]) if r["method"] == method]


def wins(results: list[dict[str, Any]], method: str, baseline: str, key: str, higher_is_better: bool) -> str:
    """``"3/5"``: on how many seeds ``method`` beats ``baseline`` on ``key`` (paired by seed)."""
    a, b = collect(results, method, key), collect(results, baseline, key)
    better = sum((x > y) if higher_is_better else (x < y) for x, y in zip(a, b))
    return f"{better}/{len(a)}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"paddlepaddle {paddle.__version__} (CPU), numpy {np.__version__}"
    )


def header(name: str, args: argparse.Namespace, protocol: str) -> None:
    print(f"# {name}\n")
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.2f}")
    print(f"seeds: 0..{args.seeds - 1}; epochs: {args.epochs}; workers: {args.workers}; quick: {args.quick}")
    print(f"hapi_autoloss from: {os.path.dirname(sys.modules['hapi_autoloss'].__file__ or '')}")
    print(f"protocol: {protocol}\n", flush=True)


def finite(x: float) -> float:
    """A metric as a plain float, NaN kept (tables then show nan rather than crash)."""
    x = float(x)
    return x if math.isfinite(x) else float("nan")


# ---------------------------------------------------------------- plots


def bar_panels(
    path: str,
    methods: Sequence[str],
    panels: Sequence[tuple[str, Sequence[Sequence[float]]]],
    title: str,
) -> None:
    """One bar panel per metric: mean over seeds with ±1 std error bars and the seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1.5, 3.6), squeeze=False)
    x = np.arange(len(methods))
    for ax, (label, per_method) in zip(axes[0], panels):
        means = [np.mean(v) for v in per_method]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in per_method]
        ax.bar(x, means, yerr=stds, color="#8fb3d9", edgecolor="#30507a", capsize=3)
        for i, v in enumerate(per_method):
            ax.plot(np.full(len(v), x[i]) + np.linspace(-0.15, 0.15, len(v)), v, "k.", ms=3)
        lo = min(min(v) for v in per_method)
        hi = max(max(v) for v in per_method)
        pad = 0.15 * (hi - lo) if hi > lo else 0.05 * abs(hi) + 1e-3
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(x)
        ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
