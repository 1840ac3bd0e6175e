"""Seed 000's toy, trained through paddle.Model.fit: two noisy linear tasks.

    y1 = -2·x + 1 + N(0, 3.0²)        y2 = 1.5·x + 3 + N(0, 0.5²)

With Kendall et al.'s homoscedastic-uncertainty weighting the learned σ of each
task is the noise it cannot explain, so it should come back as 3.0 and 0.5.

    python examples/uncertainty_regression.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import paddle

from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback

TRUE_SIGMA = {"y1": 3.0, "y2": 0.5}


class TwoLines(paddle.io.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((n, 1)).astype("float32")
        self.y1 = (-2.0 * self.x + 1.0 + 3.0 * rng.standard_normal((n, 1))).astype("float32")
        self.y2 = (1.5 * self.x + 3.0 + 0.5 * rng.standard_normal((n, 1))).astype("float32")

    def __getitem__(self, i: int):
        return self.x[i], self.y1[i], self.y2[i]

    def __len__(self) -> int:
        return len(self.x)


class TwoHeads(paddle.nn.Layer):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.heads = paddle.nn.LayerList(
            [
                paddle.nn.Sequential(
                    paddle.nn.Linear(1, hidden), paddle.nn.ReLU(), paddle.nn.Linear(hidden, 1)
                )
                for _ in range(2)
            ]
        )

    def forward(self, x):
        return [head(x) for head in self.heads]


def build(method: str = "kendall", lr: float = 0.03):
    net = TwoHeads()
    model = paddle.Model(
        net,
        inputs=[paddle.static.InputSpec([None, 1], "float32", "x")],
        labels=[
            paddle.static.InputSpec([None, 1], "float32", "y1"),
            paddle.static.InputSpec([None, 1], "float32", "y2"),
        ],
    )
    loss = AutoWeight(
        {"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()},
        method=method,
        task_types=["regression", "regression"] if method == "kendall" else None,
    )
    model.prepare(paddle.optimizer.Adam(lr, parameters=model.parameters()), loss)
    return model, loss


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--samples", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1024)
    ap.add_argument("--verbose", type=int, default=1)
    args = ap.parse_args(argv)

    paddle.seed(args.seed)
    np.random.seed(args.seed)
    model, loss = build()
    start = time.perf_counter()
    model.fit(
        TwoLines(args.samples, args.seed),
        epochs=args.epochs,
        batch_size=args.batch_size,
        shuffle=True,
        verbose=args.verbose,
        callbacks=[AutoWeightCallback()],
    )
    seconds = time.perf_counter() - start
    sigmas = loss.sigmas()
    print(f"trained {args.epochs} epochs on {args.samples} samples in {seconds:.1f} s")
    print(f"{'task':<6}{'true σ':>8}{'learned σ':>11}{'error':>8}")
    for task, true in TRUE_SIGMA.items():
        err = abs(sigmas[task] - true) / true
        print(f"{task:<6}{true:>8.2f}{sigmas[task]:>11.3f}{err:>8.1%}")
    return sigmas


if __name__ == "__main__":
    main()
