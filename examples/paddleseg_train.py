"""Seed 000's PaddleSeg experiment, made right: learned CE + Dice weights in PaddleSeg's own trainer.

HarDNet (PaddleSeg's) trained by ``paddleseg.core.train`` with AdamW and PolynomialDecay, as seed
000 did on OpticDiscSeg, but with ``AutoWeight(CE + Dice, method="liebel")`` from hapi_autoloss in
place of ``MixedLoss([CE, Dice], [0.8, 0.2])``, on a small synthetic data set (bright discs on
noise: no download). What changes against seed 000's script:

- the loss: ``hapi_autoloss.paddleseg.AutoWeight`` with ``SafeCrossEntropyLoss`` and ``SafeDiceLoss``
  (PaddleSeg 2.8.0's ``CrossEntropyLoss`` raises a TypeError on paddle 3, its ``DiceLoss`` overwrites
  the label in place);
- no ``val_dataset`` in ``train`` and no ``paddleseg.core.evaluate``: PaddleSeg 2.8.0's metric
  (``calculate_area``) concatenates 0-d tensors and fails on paddle 3; ``miou`` below computes the
  same pooled mIoU;
- the hand ``parameters.append(*loss.parameters())`` becomes ONE line, ``attach``, after the
  optimizer: σ then gets no weight decay, its gradient is cleared every iteration, averaged over
  the ranks under ``paddle.distributed.launch``, and saved/resumed with PaddleSeg's ``iter_N``
  checkpoints.

Needs ``pip install "hapi-autoloss[paddleseg]"`` (PaddleSeg 2.8.0, numpy < 2). About 30 s on 2 CPU cores:

    python examples/paddleseg_train.py                         # 40 iterations
    python examples/paddleseg_train.py --resume output/paddleseg_train/iter_20
    python -m paddle.distributed.launch --nproc_per_node 2 examples/paddleseg_train.py
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import paddle
import paddleseg
from paddleseg.core import train

import hapi_autoloss.paddleseg as hp


class Discs(paddle.io.Dataset):
    """PaddleSeg's item format: ``{'img': [3, 64, 64] float32, 'label': [64, 64] int64, 'trans_info': []}``.
    Class 1: a bright disc of radius 6-14 px on noise (σ = 0.6); pixels on its rim (1 px) are 255, ignored."""

    num_classes, ignore_index = 2, 255

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:64, 0:64]
        self.x = (0.6 * rng.standard_normal((n, 3, 64, 64))).astype("float32")
        self.y = np.zeros((n, 64, 64), "int64")
        for i in range(n):
            r = rng.uniform(6, 14)
            cy, cx = rng.uniform(r, 64 - r, 2)
            d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            self.x[i][:, d <= r] += 1.0
            self.y[i][d <= r] = 1
            self.y[i][np.abs(d - r) < 0.5] = 255

    def __getitem__(self, i: int) -> dict:
        return {"img": self.x[i], "label": self.y[i], "trans_info": []}

    def __len__(self) -> int:
        return len(self.x)


def miou(model: paddle.nn.Layer, data: Discs) -> float:
    """PaddleSeg's mIoU: intersection and union per class, pixels pooled over all images (255 left out)."""
    model.eval()
    with paddle.no_grad():
        pred = model(paddle.to_tensor(data.x))[0].argmax(1).numpy()
    model.train()
    valid = data.y != data.ignore_index
    ious = [((pred == c) & (data.y == c) & valid).sum() / max((((pred == c) | (data.y == c)) & valid).sum(), 1)
            for c in range(data.num_classes)]
    return float(np.mean(ious))


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--save-dir", default="output/paddleseg_train")
    ap.add_argument("--resume", default=None, help="an iter_N folder of --save-dir")
    args = ap.parse_args(argv)

    random.seed(1024)
    np.random.seed(1024)
    paddle.seed(1024)
    train_dataset, val_dataset = Discs(64, seed=0), Discs(16, seed=1)
    model = paddleseg.models.HarDNet(num_classes=2)

    # Seed 000: MixedLoss([CrossEntropyLoss(), DiceLoss()], [0.8, 0.2]) or its own learned loss.
    losses = {
        "types": [hp.AutoWeight([{"type": "SafeCrossEntropyLoss"}, {"type": "SafeDiceLoss"}], method="liebel")],
        "coef": [1],
    }
    decayed_lr = paddle.optimizer.lr.PolynomialDecay(learning_rate=0.001, decay_steps=args.iters, end_lr=0.0)
    optimizer = paddle.optimizer.AdamW(learning_rate=decayed_lr, parameters=model.parameters())
    # The one line: σ joins the optimizer with no weight decay; train clears, averages and checkpoints it.
    hp.attach(model, losses, optimizer)

    train(model=model, train_dataset=train_dataset, optimizer=optimizer, losses=losses,
          iters=args.iters, batch_size=args.batch_size, save_interval=max(args.iters // 2, 1),
          log_iters=max(args.iters // 4, 1), save_dir=args.save_dir, resume_model=args.resume)
    aw = losses["types"][0]
    score = miou(model, val_dataset)
    if paddle.distributed.get_rank() == 0:
        print(f"validation mIoU {score:.4f}; learned c (liebel's σ) {aw.sigmas()}; weights {aw.weights()}")
    return {"miou": score, **aw.weights()}


if __name__ == "__main__":
    main()
