"""The code blocks of docs/topk.md run as written on a small classifier."""

import os

import numpy as np
import paddle
from helpers import ROOT

import hapi_autoloss

TOPK = open(os.path.join(ROOT, "docs", "topk.md"), encoding="utf-8").read()


def blocks(text: str) -> list[str]:
    return [part.split("```", 1)[0] for part in text.split("```python\n")[1:]]


class Points(paddle.io.Dataset):
    """Three separable classes in 4-D, a fifth of the labels flipped."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.y = rng.integers(0, 3, n)
        self.x = (rng.normal(size=(n, 4)) + 2.0 * np.eye(3, 4)[self.y]).astype("float32")
        flip = rng.random(n) < 0.2
        self.y = np.where(flip, (self.y + 1) % 3, self.y).astype("int64")[:, None]

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __len__(self):
        return len(self.y)


def classifier() -> paddle.Model:
    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Linear(4, 16), paddle.nn.ReLU(), paddle.nn.Linear(16, 3))
    return paddle.Model(net, inputs=[paddle.static.InputSpec([None, 4], "float32", "x")],
                        labels=[paddle.static.InputSpec([None, 1], "int64", "y")])


def test_the_topk_guide_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build, anneal, plateau = blocks(TOPK)
    scope: dict = {}
    exec(compile(build, "topk.md", "exec"), scope)
    assert scope["seg_loss"].losses[0] is scope["ohem"] and scope["robust"].drop == 0.1

    seen: list[float] = []

    class Recording(scope["TopKScheduler"]):  # type: ignore[misc, valid-type]
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            seen.append(round(scope["loss"].ratio, 6))

    scope.update(TopKScheduler=Recording, model=classifier(), val_data=Points(48, seed=1),
                 train_data=paddle.io.DataLoader(Points(64, seed=0), batch_size=16, shuffle=False))
    exec(compile(anneal, "topk.md", "exec"), scope)
    # epochs 0..9, then the resumed run's 5..9: it went on from checkpoints/4
    first, resumed = seen[:10], seen[10:]
    assert first == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1] and resumed == [0.5, 0.4, 0.3, 0.2, 0.1]
    assert hapi_autoloss.checkpoint_info("checkpoints/final")["epoch"] == 10

    scope["model"] = classifier()
    exec(compile(plateau, "topk.md", "exec"), scope)
    assert scope["loss"].ratio in (0.5, 0.25, 0.125, 0.1)  # accuracy stalled on the noisy labels; k shrank
