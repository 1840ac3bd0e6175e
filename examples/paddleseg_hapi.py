"""A PaddleSeg model trained through ``paddle.Model.fit`` (hapi) with learned CE + Dice weights and OHEM.

PaddleSeg's HarDNet (its forward returns a list of logits, as every PaddleSeg model's does: hapi
passes that list as the outputs) on a small synthetic data set (bright discs on noise; the
1-pixel rims labelled 255 and ignored). The loss is hapi_autoloss's own ``AutoWeight`` (liebel)
of two losses on the same output (``routing="shared"``):

- ``ce``: a per-pixel ``TopKLoss`` of the cross-entropy (OHEM), whose kept fraction
  ``TopKScheduler`` anneals from 100% to 30% of the valid pixels;
- ``dice``: ``DiceLoss`` (hapi_autoloss's, which never writes into the label).

Every callback: ``AutoWeightCallback`` (σ trained right), ``TopKScheduler``, ``TensorBoardExport``,
``VisualDLExport``, ``TqdmProgressBar`` and ``BackupAndRestore`` (run it again after a kill: it
resumes). About 40 s on 2 CPU cores. Needs PaddleSeg (``pip install "hapi-autoloss[paddleseg]"``);
it does not need ``hapi_autoloss.paddleseg``, which is for PaddleSeg's own trainer.

    python examples/paddleseg_hapi.py
    tensorboard --logdir runs/paddleseg_hapi        # or: visualdl --logdir runs/paddleseg_hapi/vdl
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
import paddle
import paddleseg

from hapi_autoloss import AutoWeight, DiceLoss, TopKLoss
from hapi_autoloss.callbacks import (
    AutoWeightCallback,
    BackupAndRestore,
    TensorBoardExport,
    TopKScheduler,
    TqdmProgressBar,
    VisualDLExport,
)


class Discs(paddle.io.Dataset):
    """(image [3, 64, 64] float32, label [1, 64, 64] int64): a bright disc (class 1) on noise."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:64, 0:64]
        self.x = (0.6 * rng.standard_normal((n, 3, 64, 64))).astype("float32")
        self.y = np.zeros((n, 1, 64, 64), "int64")
        for i in range(n):
            r = rng.uniform(6, 14)
            cy, cx = rng.uniform(r, 64 - r, 2)
            d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            self.x[i][:, d <= r] += 1.0
            self.y[i, 0][d <= r] = 1
            self.y[i, 0][np.abs(d - r) < 0.5] = 255

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.x[i], self.y[i]

    def __len__(self) -> int:
        return len(self.x)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n", type=int, default=48, help="training images")
    ap.add_argument("--out", default="runs/paddleseg_hapi")
    ap.add_argument("--fresh", action="store_true", help="delete --out first (else a finished run is kept)")
    args = ap.parse_args(argv)
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)

    paddle.seed(0)
    np.random.seed(0)
    network = paddleseg.models.HarDNet(num_classes=2)  # forward: [logits of shape N, 2, 64, 64]
    ce = TopKLoss(paddle.nn.CrossEntropyLoss(axis=1, reduction="none", ignore_index=255),
                  ratio=1.0, per="pixel", ignore_index=255)
    loss = AutoWeight({"ce": ce, "dice": DiceLoss(ignore_index=255)}, method="liebel", routing="shared")
    model = paddle.Model(network)
    model.prepare(paddle.optimizer.AdamW(1e-3, parameters=network.parameters(), weight_decay=0.01), loss)
    callbacks = [
        AutoWeightCallback(),
        TopKScheduler(start=1.0, end=0.3, schedule="linear", by="epoch"),
        TensorBoardExport(os.path.join(args.out, "tb")),
        VisualDLExport(os.path.join(args.out, "vdl")),
        TqdmProgressBar(show_weights=True),
        BackupAndRestore(os.path.join(args.out, "backup")),
    ]
    model.fit(Discs(args.n, seed=0), epochs=args.epochs, batch_size=8, shuffle=True, verbose=0, callbacks=callbacks)
    val = Discs(16, seed=1)
    pred = model.predict_batch([val.x])[0].argmax(1)
    valid = val.y[:, 0] != 255
    truth = val.y[:, 0]
    ious = [((pred == c) & (truth == c) & valid).sum() / max((((pred == c) | (truth == c)) & valid).sum(), 1)
            for c in range(2)]
    print(f"validation mIoU {np.mean(ious):.4f}; weights {loss.weights()}; kept fraction {ce.ratio:.2f}")
    return {"miou": float(np.mean(ious)), "ratio": ce.ratio, **loss.weights()}


if __name__ == "__main__":
    main()
