"""Small real models and data shared by the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import paddle

from hapi_autoloss import AutoWeight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Set by paddle.distributed.launch: a child process that inherits them takes itself for a rank.
LAUNCH_KEYS = ("PADDLE_TRAINER_ID", "PADDLE_TRAINERS_NUM", "PADDLE_TRAINER_ENDPOINTS")

X_SPEC = [paddle.static.InputSpec([None, 3], "float32", "x")]
Y_SPECS = [
    paddle.static.InputSpec([None, 1], "float32", "y1"),
    paddle.static.InputSpec([None, 1], "float32", "y2"),
]


OPTIMIZERS = {"adam": paddle.optimizer.Adam, "adamw": paddle.optimizer.AdamW, "sgd": paddle.optimizer.SGD,
              "lamb": paddle.optimizer.Lamb}


class TwoTaskData(paddle.io.Dataset):
    """x in R^3; y1 = x·a + 2·noise, y2 = x·b + 0.3·noise (fixed seed)."""

    def __init__(self, n: int = 96, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((n, 3)).astype("float32")
        self.y1 = (self.x @ np.array([[1.0], [-2.0], [0.5]]) + 2.0 * rng.standard_normal((n, 1))).astype("float32")
        self.y2 = (self.x @ np.array([[0.3], [0.1], [1.0]]) + 0.3 * rng.standard_normal((n, 1))).astype("float32")

    def __getitem__(self, i: int):
        return self.x[i], self.y1[i], self.y2[i]

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            sl = slice(i, i + batch_size)
            yield [paddle.to_tensor(a[sl]) for a in (self.x, self.y1, self.y2)]


class TwoTaskNet(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = paddle.nn.Linear(3, 8)
        self.h1 = paddle.nn.Linear(8, 1)
        self.h2 = paddle.nn.Linear(8, 1)

    def forward(self, x):
        z = paddle.tanh(self.trunk(x))
        return [self.h1(z), self.h2(z)]


class TrunkNet(paddle.nn.Layer):
    """A tanh trunk of ``width`` on ``inputs`` features, two linear heads (gradient-level tests)."""

    def __init__(self, inputs: int = 4, width: int = 8) -> None:
        super().__init__()
        self.trunk = paddle.nn.Sequential(paddle.nn.Linear(inputs, width), paddle.nn.Tanh())
        self.h1, self.h2 = paddle.nn.Linear(width, 1), paddle.nn.Linear(width, 1)

    def forward(self, x):
        z = self.trunk(x)
        return self.h1(z), self.h2(z)


class DropNet(TwoTaskNet):
    """TwoTaskNet with dropout on the trunk: a network whose training uses Paddle's random stream."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = paddle.nn.Dropout(0.3)

    def forward(self, x):
        z = self.drop(paddle.tanh(self.trunk(x)))
        return [self.h1(z), self.h2(z)]


class NaiveUncertaintyLoss(paddle.nn.Layer):
    """What users write by hand (seed 000): a loss Layer with a learned log σ²."""

    def __init__(self) -> None:
        super().__init__()
        self.s = self.create_parameter([2], default_initializer=paddle.nn.initializer.Constant(0.0))

    def forward(self, o1, o2, y1, y2):
        mse = paddle.stack([((o1 - y1) ** 2).mean(), ((o2 - y2) ** 2).mean()])
        return (0.5 * paddle.exp(-self.s) * mse + 0.5 * self.s).sum()


def kendall_loss() -> AutoWeight:
    return AutoWeight(
        {"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()},
        method="kendall",
        task_types=["regression", "regression"],
    )


def build_model(loss: paddle.nn.Layer, seed: int = 0, opt: str = "adam", lr: float = 0.05,
                extra_params: Sequence = (), **opt_kwargs) -> paddle.Model:
    paddle.seed(seed)
    net = TwoTaskNet()
    model = paddle.Model(net, inputs=X_SPEC, labels=Y_SPECS)
    params: list = list(model.parameters()) + list(extra_params)
    cls = OPTIMIZERS[opt]
    model.prepare(cls(learning_rate=lr, parameters=params, **opt_kwargs), loss)
    return model


def train_reference(net: paddle.nn.Layer, loss: AutoWeight, steps_data: TwoTaskData, epochs: int, batch_size: int,
                    lr: float = 0.05, opt: str = "adam", accumulate: int = 1, decay_sigma: bool = False,
                    **opt_kwargs) -> None:
    """Trains ``net`` and ``loss`` in place with a hand-written Paddle loop, σ in its own no-decay group,
    a fresh optimizer, batches in order (what ``fit(shuffle=False)`` must match)."""
    cls = OPTIMIZERS[opt]
    groups = [{"params": net.parameters()}, {"params": loss.parameters()}]
    if not decay_sigma:
        groups[1]["weight_decay"] = 0.0
        if opt == "lamb":
            groups[1]["lamb_weight_decay"] = 0.0
    optimizer = cls(learning_rate=lr, parameters=groups, **opt_kwargs)
    n_batches = -(-len(steps_data) // batch_size)
    for _ in range(epochs):
        for step, (x, y1, y2) in enumerate(steps_data.batches(batch_size)):
            o1, o2 = net(x)
            loss(o1, o2, y1, y2).backward()
            if (step + 1) % accumulate == 0 or step + 1 == n_batches:
                optimizer.step()
                optimizer.clear_grad()


def reference_sigma(steps_data: TwoTaskData, epochs: int, batch_size: int, seed: int = 0,
                    lr: float = 0.05, opt: str = "adam", accumulate: int = 1, decay_sigma: bool = False,
                    **opt_kwargs):
    """The right answer: a hand-written Paddle loop with σ in its own no-decay group."""
    paddle.seed(seed)
    net = TwoTaskNet()
    loss = kendall_loss()
    train_reference(net, loss, steps_data, epochs, batch_size, lr=lr, opt=opt, accumulate=accumulate,
                    decay_sigma=decay_sigma, **opt_kwargs)
    return loss.s.numpy().copy(), net


def identity(out, _label):
    """A 'loss' equal to its input: d total / d input is the weight the task gets."""
    return out


def feed_losses(aw: AutoWeight, values: Sequence[float], grad: bool = True) -> tuple[paddle.Tensor, np.ndarray | None]:
    """Feeds one 0-d float32 loss value per task through ``aw`` (built with ``identity`` losses).

    Returns the total and d total / d L_i as numpy (None when ``grad`` is False).
    Example: ``total, dl = feed_losses(AutoWeight([identity] * 2, method="equal"), [0.5, 2.0])``.
    """
    leaves = [paddle.to_tensor(np.float32(v), stop_gradient=not grad) for v in values]
    labels = [paddle.zeros([]) for _ in values]
    total = aw(*leaves, *labels)
    if not grad:
        return total, None
    total.backward()
    return total, np.array([float(t.grad) for t in leaves])


def run_python(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python *args`` in a fresh process that imports this checkout (PYTHONPATH=ROOT), as no rank of any job."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    for key in LAUNCH_KEYS:
        env.pop(key, None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def launch_two_ranks(script: str, *args: str, log_dir: str | os.PathLike, cwd: str | os.PathLike,
                     timeout: float = 600) -> tuple[subprocess.CompletedProcess, str]:
    """A real 2-process ``paddle.distributed.launch`` (CPU, gloo) of ``script *args``.

    Returns the launcher's process and every worker log under ``log_dir`` joined (for failure messages).
    """
    proc = run_python("-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir),
                      script, *args, cwd=cwd, timeout=timeout)
    names = sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []
    return proc, "".join(Path(log_dir, name).read_text() for name in names)


def tb_read(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every tag in ``log_dir`` as TensorBoard's own reader gives it: (step, value); text tags get value 0."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    out = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    out.update({tag: [(e.step, 0.0) for e in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]})
    return out


def vdl_read(log_dir) -> dict[str, list[tuple[int, float]]]:
    """What VisualDL shows for the folder: its newest record file (LogReader.logs()); text tags get value 0."""
    from visualdl import LogReader

    runs = LogReader(logdir=str(log_dir)).logs(update=True)
    reader = LogReader(file_path=os.path.join(str(log_dir), runs[str(log_dir)]))
    tags = reader.get_tags()
    out = {tag: [(v.id, v.value) for v in reader.get_data("scalar", tag)] for tag in tags.get("scalar", [])}
    out.update({tag: [(v.id, 0.0) for v in reader.get_data("text", tag)] for tag in tags.get("text", [])})
    return out


def final_lines(text: str) -> list[str]:
    """What a terminal shows at the end of a tqdm output: the last redraw of each line."""
    return [line.split("\r")[-1] for line in text.split("\n") if line.strip()]


class KillAt(paddle.callbacks.Callback):
    """SIGKILLs this process after train batch ``step`` of epoch ``epoch`` (0-based): a crash
    that leaves no chance to clean up."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__()
        self.at, self.epoch = (epoch, step), -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, step, logs=None):
        if (self.epoch, step) == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


class RaiseOnce(paddle.callbacks.Callback):
    """Raises a RuntimeError once, after train batch ``step`` of epoch ``epoch`` (0-based): a
    crash the same process survives."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__()
        self.at, self.armed, self.epoch = (epoch, step), True, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, step, logs=None):
        if self.armed and (self.epoch, step) == self.at:
            self.armed = False
            raise RuntimeError("boom")


def forbid_host_reads(monkeypatch) -> None:
    """Make every Tensor → host conversion raise until ``monkeypatch.undo()``."""

    def forbidden(*args, **kwargs):
        raise AssertionError("host read of a tensor inside TopKLoss.forward")

    for name in ("numpy", "item", "tolist", "__int__", "__float__", "__bool__", "__index__"):
        monkeypatch.setattr(paddle.Tensor, name, forbidden, raising=False)

