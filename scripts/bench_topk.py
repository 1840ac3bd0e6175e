"""Benchmark TopKLoss (forward + backward) on CPU or GPU; prints a markdown table.

Per pixel: logits 4×19×512×512, 10% of the pixels labelled 255 (ignored), ratio 0.1.
    - plain CE mean:   paddle.nn.functional.cross_entropy(..., ignore_index=255)
    - TopKLoss:        TopKLoss(CrossEntropyLoss(reduction="none", ignore_index=255),
                                ratio=0.1, per="pixel", ignore_index=255)
    - TopKLoss, AoRR:  the same with drop=0.02 (ranks 2%..10% averaged)
    - no ignored pixel: TopKLoss and plain CE on labels without 255 (CE without ignore_index)
    - PaddleSeg OHEM:  PaddleSeg's OhemCrossEntropyLoss algorithm (true-class
                       probability by one-hot, argsort, threshold 0.7, min_kept = k),
                       rewritten below.
Per sample: B=256, C=10, ratio 0.7.
    - seed loop:       the seed article's per-sample Python loop, ported to Paddle 3.
    - TopKLoss:        TopKLoss(CrossEntropyLoss(reduction="none"), ratio=0.7).

Times are the median of interleaved repeats; peak memory is Paddle's allocator peak
during one forward + backward, inputs and their gradient included.

    python scripts/bench_topk.py            # about 20 s on 2 CPU cores
    python scripts/bench_topk.py --quick    # smaller inputs, a smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import paddle
import paddle.nn.functional as F
from paddle.base import core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the checkout's hapi_autoloss, not whichever one is installed
    sys.path.insert(0, ROOT)

from hapi_autoloss import TopKLoss  # noqa: E402

IGNORE = 255


# ---------------------------------------------------------------- baselines


class SeedTopKCrossEntropy(paddle.nn.Layer):
    """The seed article's loop, kept as written except for one Paddle 3 fix: NLLLoss
    now returns a 0-d tensor, which paddle.concat refuses, so it is reshaped to [1]."""

    def __init__(self, top_k: float = 0.7) -> None:
        super().__init__()
        self.loss = paddle.nn.NLLLoss()
        self.top_k = top_k
        self.softmax = paddle.nn.LogSoftmax()

    def forward(self, inputs, target):
        softmax_result = self.softmax(inputs)
        loss1 = paddle.zeros([1])
        for idx, row in enumerate(softmax_result):
            gt = target[idx]
            pred = paddle.unsqueeze(row, 0)
            cost = self.loss(pred, gt).reshape([1])  # the Paddle 3 fix
            loss1 = paddle.concat((loss1, cost), 0)
        loss1 = loss1[1:]
        index = paddle.topk(loss1, int(self.top_k * len(loss1)))
        valid_loss1 = loss1[index[1]]
        return paddle.mean(valid_loss1)


def paddleseg_ohem(logit, label, thresh: float, min_kept: int, ignore_index: int = IGNORE):
    """PaddleSeg's OHEM cross-entropy algorithm: keep the pixels whose true-class
    probability is below max(thresh, the min_kept-th smallest probability)."""
    n, c, h, w = logit.shape
    label = label.reshape([-1])
    valid = (label != ignore_index).astype("int64")
    num_valid = valid.sum()
    label = label * valid
    prob = F.softmax(logit, axis=1).transpose([1, 0, 2, 3]).reshape([c, -1])
    if min_kept < num_valid and num_valid > 0:  # host reads, as in PaddleSeg
        prob = prob + (1 - valid).astype(prob.dtype)  # ignored pixels: prob > 1, never kept
        onehot = F.one_hot(label, c).transpose([1, 0])
        prob = (prob * onehot).sum(axis=0)  # the true class's probability per pixel
        threshold = thresh
        if min_kept > 0:
            index = prob.argsort()
            threshold_index = int(index[min(len(index), min_kept) - 1])
            if prob[threshold_index] > thresh:
                threshold = prob[threshold_index]
            kept = (prob < threshold).astype("int64")
            label = label * kept
            valid = valid * kept
    label = label + (1 - valid) * ignore_index
    label = label.reshape([n, 1, h, w])
    valid_f = valid.reshape([n, 1, h, w]).astype("float32")
    loss = F.softmax_with_cross_entropy(logit, label, ignore_index=ignore_index, axis=1)
    return (loss * valid_f).mean() / (valid_f.mean() + 1e-5)


# ---------------------------------------------------------------- measuring


def fwd_bwd(fn: Callable[[], paddle.Tensor], x: paddle.Tensor) -> Callable[[], None]:
    def step() -> None:
        fn().backward()
        x.clear_gradient(set_to_zero=False)

    return step


def timed(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, tuple[float, float, float]]:
    """(median, min, median CPU) seconds per call, the variants interleaved so drift hits them
    alike. CPU time (this process's, all threads) moves less than wall time when other jobs
    share the cores."""
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: (statistics.median(ts), min(ts), statistics.median(cpu[name])) for name, ts in times.items()}


def peak_bytes(step: Callable[[], None]) -> int:
    """Paddle's allocator peak during one call, everything already allocated included."""
    on_gpu = paddle.device.get_device().startswith("gpu")
    if on_gpu:
        paddle.device.cuda.synchronize()
        core.device_memory_stat_reset_peak_value("Allocated", 0)
        step()
        paddle.device.cuda.synchronize()
        return int(core.device_memory_stat_peak_value("Allocated", 0))
    core.host_memory_stat_reset_peak_value("Allocated", 0)
    step()
    return int(core.host_memory_stat_peak_value("Allocated", 0))


def current_bytes() -> int:
    if paddle.device.get_device().startswith("gpu"):
        return int(core.device_memory_stat_current_value("Allocated", 0))
    return int(core.host_memory_stat_current_value("Allocated", 0))


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------- cases


Row = tuple[str, float, float, float, int]  # name, median s, min s, median CPU s, peak bytes


def per_pixel(size: int, repeats: int) -> list[Row]:
    n, c, ratio = 4, 19, 0.1
    paddle.seed(0)
    x = paddle.randn([n, c, size, size])
    x.stop_gradient = False
    label = paddle.randint(0, c, [n, 1, size, size])
    label = paddle.where(paddle.rand(label.shape) < 0.1, paddle.full_like(label, IGNORE), label)
    k = math.ceil(ratio * n * size * size)
    ce_none = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=IGNORE)
    topk = TopKLoss(ce_none, ratio=ratio, per="pixel", ignore_index=IGNORE)
    aorr = TopKLoss(ce_none, ratio=ratio, per="pixel", ignore_index=IGNORE, drop=0.02)
    clean = paddle.randint(0, c, [n, 1, size, size])  # no ignored pixel
    topk_plain = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none", axis=1), ratio=ratio, per="pixel")
    steps = {
        "plain CE mean": fwd_bwd(lambda: F.cross_entropy(x, label, axis=1, ignore_index=IGNORE), x),
        "TopKLoss": fwd_bwd(lambda: topk(x, label), x),
        "TopKLoss, AoRR drop=0.02": fwd_bwd(lambda: aorr(x, label), x),
        "PaddleSeg OHEM": fwd_bwd(lambda: paddleseg_ohem(x, label, thresh=0.7, min_kept=k), x),
        "TopKLoss, no ignored pixel": fwd_bwd(lambda: topk_plain(x, clean), x),
        "plain CE mean, no ignored pixel": fwd_bwd(lambda: F.cross_entropy(x, clean, axis=1), x),
    }
    times = timed(steps, repeats)
    rows = []
    for name, step in steps.items():
        x.clear_gradient(set_to_zero=False)
        rows.append((name, *times[name], peak_bytes(step)))
    return rows


def per_sample(repeats: int) -> list[Row]:
    b, c, ratio = 256, 10, 0.7
    paddle.seed(0)
    x = paddle.randn([b, c])
    x.stop_gradient = False
    y = paddle.randint(0, c, [b, 1])
    seed = SeedTopKCrossEntropy(ratio)
    topk = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=ratio)
    slow = timed({"seed loop": fwd_bwd(lambda: seed(x, y), x)}, repeats)
    fast = timed({"TopKLoss": fwd_bwd(lambda: topk(x, y), x)}, repeats * 50)
    return [("seed loop", *slow["seed loop"], 0), ("TopKLoss", *fast["TopKLoss"], 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description="TopKLoss benchmark")
    parser.add_argument("--quick", action="store_true", help="128×128 images and fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    paddle.set_device(args.device)
    size = 128 if args.quick else 512
    repeats = args.repeats or (3 if args.quick else 9)
    t0 = time.perf_counter()
    where = cpu_name() if args.device == "cpu" else paddle.device.cuda.get_device_name()
    cores = os.cpu_count()
    load = os.getloadavg()[0]
    print(f"paddle {paddle.__version__}, {args.device}: {where}, {cores} cores, load average {load:.2f} at start")

    pixel = per_pixel(size, repeats)
    sample = per_sample(repeats)
    base_t, base_min, base_cpu, base_m = pixel[0][1:]
    print()
    print("| case | variant | time, ms (median) | × plain CE | min, ms | × plain CE | CPU time, ms (median) "
          "| × plain CE | peak memory, MiB | × plain CE |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    case = f"per pixel, 4×19×{size}×{size}, 10% ignored, ratio 0.1"
    for name, t, t_min, t_cpu, mem in pixel:
        print(f"| {case} | {name} | {t * 1e3:.1f} | {t / base_t:.3f} | {t_min * 1e3:.1f} | {t_min / base_min:.3f} "
              f"| {t_cpu * 1e3:.1f} | {t_cpu / base_cpu:.3f} | {mem / 2**20:.0f} | {mem / base_m:.3f} |")
        case = ""
    seed_t = sample[0][1]
    print()
    print("| case | variant | time, ms (median) | speed-up over the seed loop |")
    print("|---|---|---:|---:|")
    case = "per sample, B=256, C=10, ratio 0.7"
    for name, t, *_ in sample:
        print(f"| {case} | {name} | {t * 1e3:.3f} | {seed_t / t:.0f}× |")
        case = ""
    topk_t, aorr_t, ohem_t = pixel[1][1], pixel[2][1], pixel[3][1]
    print()
    print(f"goals: TopKLoss / plain CE time {topk_t / base_t:.3f} (goal <= 1.05; CPU time "
          f"{pixel[1][3] / base_cpu:.3f}), AoRR {aorr_t / base_t:.3f} (CPU {pixel[2][3] / base_cpu:.3f}), "
          f"no ignored pixel {pixel[4][1] / base_t:.3f} (CPU {pixel[4][3] / base_cpu:.3f}; against a plain CE "
          f"on the same labels {pixel[4][1] / pixel[5][1]:.3f}, CPU {pixel[4][3] / pixel[5][3]:.3f}), "
          f"peak memory {pixel[1][4] / base_m:.3f} (goal <= 1.2); "
          f"PaddleSeg OHEM / TopKLoss time {ohem_t / topk_t:.2f} (goal >= 1.5); "
          f"seed loop / TopKLoss per sample {seed_t / sample[1][1]:.0f} (goal >= 150)")
    print(f"benchmark took {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
