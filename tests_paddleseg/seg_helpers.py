"""Small real segmentation data and models for the PaddleSeg tests (no download)."""

from __future__ import annotations

import os

import numpy as np
import paddle
import paddle.nn.functional as F

import hapi_autoloss.paddleseg as hp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16


def shapes(seed: int, n: int, ignore: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images [n, 3, 16, 16] float32 and labels [n, 16, 16] int64: a bright square (1) and a
    dark disc (2) on noise; a 2-pixel border labelled 255 (ignored) when ``ignore``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    x = 0.3 * rng.standard_normal((n, 3, SIZE, SIZE)).astype("float32")
    y = np.zeros((n, SIZE, SIZE), "int64")
    for i in range(n):
        cy, cx = rng.integers(4, 12, 2)
        sq = (abs(yy - cy) <= 2) & (abs(xx - cx) <= 2)
        dy, dx = rng.integers(3, 13, 2)
        disc = (yy - dy) ** 2 + (xx - dx) ** 2 <= 4
        x[i][:, sq] += 1.0
        x[i][:, disc] -= 1.0
        y[i][sq], y[i][disc] = 1, 2
        if ignore:
            y[i][:2, :] = 255
    return x, y


class SegData(paddle.io.Dataset):
    """PaddleSeg's item format: ``{'img': [3, H, W], 'label': [H, W]}``. ``same``: every item is item 0,
    so the batches do not depend on the sampler's order (PaddleSeg's resume restarts its shuffle)."""

    num_classes, ignore_index = 3, 255

    def __init__(self, seed: int = 0, n: int = 16, same: bool = False) -> None:
        self.x, self.y = shapes(seed, n)
        self.same = same

    def __getitem__(self, i: int) -> dict:
        i = 0 if self.same else i
        return {"img": self.x[i], "label": self.y[i]}

    def __len__(self) -> int:
        return len(self.x)


class TinyNet(paddle.nn.Layer):
    """A PaddleSeg-style model: forward returns ``[logits]``."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.c1 = paddle.nn.Conv2D(3, 8, 3, padding=1)
        self.c2 = paddle.nn.Conv2D(8, num_classes, 3, padding=1)

    def forward(self, x):
        return [self.c2(F.relu(self.c1(x)))]


def build(mode: str = "attach", seed: int = 0, weight_decay: float = 0.1, iters: int = 8, lr: float = 0.05,
          method: str = "liebel", **options):
    """(model, losses, optimizer) as a user script builds them; ``mode``: "attach" (our one line),
    "naive" (seed 000: σ appended to the parameters by hand), "none" (σ not in the optimizer)."""
    paddle.seed(seed)
    model = TinyNet()
    aw = hp.AutoWeight([{"type": "SafeCrossEntropyLoss"}, {"type": "SafeDiceLoss"}], method=method, **options)
    losses = {"types": [aw], "coef": [1]}
    params = model.parameters()
    if mode == "naive":
        params.append(*aw.parameters())
    sched = paddle.optimizer.lr.PolynomialDecay(lr, decay_steps=iters, end_lr=0.0)
    opt = paddle.optimizer.AdamW(sched, parameters=params, weight_decay=weight_decay)
    if mode == "attach":
        hp.attach(model, losses, opt)
    return model, losses, opt


def train(model, losses, opt, data, save_dir, iters: int = 8, batch_size: int = 4, **kw) -> None:
    from paddleseg.core import train as seg_train

    seg_train(model, data, optimizer=opt, losses=losses, save_dir=str(save_dir), iters=iters,
              batch_size=batch_size, log_iters=2, save_interval=kw.pop("save_interval", iters), **kw)


def hand_loop(model, aw, data, optimizers, iters: int, batch_size: int, sched=None):
    """What ``train`` should do with a learned loss, as a plain loop in the same batch order
    (train's loader shuffles with the sampler's RandomState(epoch)): step every optimizer and
    the lr schedule, clear every gradient. Returns ``(model, aw)``."""
    sampler = paddle.io.DistributedBatchSampler(data, batch_size=batch_size, shuffle=True, drop_last=True)
    step = 0
    while step < iters:
        for idx in sampler:
            x = paddle.to_tensor(np.stack([data[i]["img"] for i in idx]))
            y = paddle.to_tensor(np.stack([data[i]["label"] for i in idx]))
            aw(model(x)[0], y).backward()
            for opt in optimizers:
                opt.step()
                opt.clear_grad()
            if sched is not None:
                sched.step()
            step += 1
            if step == iters:
                break
    return model, aw


def run(mode: str, data, save_dir, iters: int = 8, weight_decay: float = 0.1, method: str = "liebel",
        options: dict | None = None, **kw):
    """build + train, with parameter and optimizer-state names as in a fresh process (PaddleSeg's
    resume matches the optimizer's state by name). Returns (model, AutoWeight)."""
    with paddle.utils.unique_name.guard():
        model, losses, opt = build(mode, weight_decay=weight_decay, iters=kw.pop("schedule", iters), method=method,
                                   **(options or {}))
        train(model, losses, opt, data, save_dir, iters=iters, **kw)
    return model, losses["types"][0]


def launch_two_ranks(script: str, *args: str, log_dir, cwd, timeout: float = 600):
    """A real 2-process ``paddle.distributed.launch`` (CPU, gloo) of ``script *args``, importing this
    checkout (as tests/helpers.py's). Returns the launcher's process and every worker log joined."""
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests_paddleseg"))
    for key in ("PADDLE_TRAINER_ID", "PADDLE_TRAINERS_NUM", "PADDLE_TRAINER_ENDPOINTS"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                           "--log_dir", str(log_dir), script, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    names = sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []
    return proc, "".join(Path(log_dir, name).read_text() for name in names)
