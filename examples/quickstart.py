"""The quick start: a two-task model on scikit-learn's digits (bundled, no download),
with learned loss weights, annealed hard-example mining, and every way to watch it.

Tasks, one shared network, two heads:

- ``digit``: which digit (0-9) it is; cross-entropy inside a ``TopKLoss`` whose kept
  fraction ``TopKScheduler`` anneals from 100% to 30% of the hardest images;
- ``ink``: how much ink the image holds (its mean intensity, standardised), read
  through N(0, 0.5²) noise: the learned σ of this task should come out near 0.5.

``AutoWeight`` (Kendall et al.) learns how much each task counts. The run writes
TensorBoard (and VisualDL, if installed) logs to ``runs/quickstart``, shows a tqdm
bar, and draws the curves into ``runs/quickstart/curves.png``. About 3 s of training
(10 s in all) on 2 CPU cores. A new run replaces the previous one's logs in that folder.

    python examples/quickstart.py
    tensorboard --logdir runs/quickstart
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import paddle

from hapi_autoloss import AutoWeight, TopKLoss
from hapi_autoloss.callbacks import AutoWeightCallback, TensorBoardExport, TopKScheduler, TqdmProgressBar

INK_NOISE = 0.5


class Digits(paddle.io.Dataset):
    """(image [64], digit [1] int64, noisy ink [1]) triples."""

    def __init__(self, x: np.ndarray, digit: np.ndarray, ink: np.ndarray) -> None:
        self.x = x.astype("float32")
        self.digit = digit.astype("int64").reshape(-1, 1)
        self.ink = ink.astype("float32").reshape(-1, 1)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x[i], self.digit[i], self.ink[i]

    def __len__(self) -> int:
        return len(self.x)


def make_data(seed: int) -> tuple[Digits, Digits]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            f"The quick start reads scikit-learn's bundled digits ({err}). Fix: "
            'pip install "hapi-autoloss[examples]".'
        ) from err
    digits = load_digits()
    x = digits.data / 16.0
    ink = x.mean(axis=1)
    ink = (ink - ink.mean()) / ink.std()
    rng = np.random.default_rng(seed)
    noisy_ink = ink + INK_NOISE * rng.standard_normal(len(ink))
    order = rng.permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    return (Digits(x[train], digits.target[train], noisy_ink[train]),
            Digits(x[test], digits.target[test], noisy_ink[test]))


class TwoHeads(paddle.nn.Layer):
    """A shared trunk, a 10-way digit head and a 1-value ink head."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.trunk = paddle.nn.Sequential(paddle.nn.Linear(64, hidden), paddle.nn.ReLU())
        self.digit = paddle.nn.Linear(hidden, 10)
        self.ink = paddle.nn.Linear(hidden, 1)

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        z = self.trunk(x)
        return [self.digit(z), self.ink(z)]


class DigitAccuracy(paddle.metric.Accuracy):
    """Accuracy of the digit head; hapi passes every output, then every label."""

    def compute(self, logits: paddle.Tensor, ink: paddle.Tensor, digit: paddle.Tensor,  # type: ignore[override]
                ink_label: paddle.Tensor) -> paddle.Tensor:
        return super().compute(logits, digit)


def build(lr: float) -> tuple[paddle.Model, AutoWeight]:
    model = paddle.Model(
        TwoHeads(),
        inputs=[paddle.static.InputSpec([None, 64], "float32", "image")],
        labels=[paddle.static.InputSpec([None, 1], "int64", "digit"),
                paddle.static.InputSpec([None, 1], "float32", "ink")],
    )
    loss = AutoWeight(
        {"digit": TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=1.0),
         "ink": paddle.nn.MSELoss()},
        method="kendall",
        task_types=["classification", "regression"],
    )
    model.prepare(paddle.optimizer.Adam(lr, parameters=model.parameters()), loss, metrics=DigitAccuracy())
    return model, loss


def fresh_log_dir(log_dir: str) -> None:
    """Remove a previous quick start's log files, so the folder holds one run."""
    if not os.path.isdir(log_dir):
        return
    for name in os.listdir(log_dir):
        if "tfevents" in name or "vdlrecords" in name or name == "curves.png":
            os.remove(os.path.join(log_dir, name))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, log and plot; returns the log folder, the PNG, σ, the weights and the accuracy."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--log-dir", default=os.path.join("runs", "quickstart"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1, help="0 silent, 1 progress bars, 2 plain lines")
    parser.add_argument("--no-plot", action="store_true", help="skip curves.png (no matplotlib needed)")
    args = parser.parse_args(argv)

    paddle.seed(args.seed)
    train, test = make_data(args.seed)
    model, loss = build(args.lr)
    fresh_log_dir(args.log_dir)
    callbacks: list[Any] = [
        AutoWeightCallback(),
        TopKScheduler(start=1.0, end=0.3),
        TensorBoardExport(args.log_dir),
        TqdmProgressBar(verbose=args.verbose),
    ]
    try:
        from hapi_autoloss.callbacks import VisualDLExport

        callbacks.append(VisualDLExport(args.log_dir))
        visualdl = True
    except ImportError:  # optional: pip install "hapi-autoloss[visualdl]"
        visualdl = False

    start = time.perf_counter()
    model.fit(train, test, epochs=args.epochs, batch_size=args.batch_size, shuffle=True,
              verbose=args.verbose, callbacks=callbacks)
    seconds = time.perf_counter() - start
    accuracy = float(model.evaluate(test, batch_size=256, verbose=0)["acc"])

    png = None
    if not args.no_plot:
        try:
            from hapi_autoloss.plot import plot_curves

            png = plot_curves(args.log_dir, os.path.join(args.log_dir, "curves.png"), title="quickstart")
        except ImportError as err:  # matplotlib or tensorboard missing: say so, keep the logs
            print(f"No plot: {err}")

    sigmas, weights = loss.sigmas(), loss.weights()
    print(f"\nTrained {args.epochs} epochs on {len(train)} digits in {seconds:.1f} s; "
          f"test accuracy {accuracy:.3f}")
    print(f"{'task':<7}{'σ':>8}{'weight':>9}")
    for task in loss.task_names:
        print(f"{task:<7}{sigmas[task]:>8.3f}{weights[task]:>9.3f}")
    print(f"(the ink targets carry N(0, {INK_NOISE}²) noise: σ_ink should approach {INK_NOISE})")
    print(f"\nLogs: {args.log_dir}")
    print(f"  tensorboard --logdir {args.log_dir}")
    if visualdl:
        print(f"  visualdl --logdir {args.log_dir}")
    if png:
        print(f"Curves: {png}   (again: hapi-autoloss plot {args.log_dir} -o curves.png)")
    return {"log_dir": args.log_dir, "png": png, "sigma": sigmas, "weight": weights,
            "accuracy": accuracy, "seconds": seconds}


if __name__ == "__main__":
    main()
