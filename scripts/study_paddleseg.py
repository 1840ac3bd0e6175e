"""Issue 13: CE + Dice weights and OHEM inside PaddleSeg's own trainer (``paddleseg.core.train``).

Study 3's synthetic shapes (64×64, 3 classes; 300 train / 100 validation / 100 test images per
seed) and TinySegNet (its forward returning ``[logits]``, as PaddleSeg models do), trained by
PaddleSeg 2.8.0's ``train`` with AdamW (weight decay 0.01) and PolynomialDecay(2e-3 → 0), batch 16.
Rows (protocol: docs/results.md, "Issue 13: protocol"):

  CE+Dice w              PaddleSeg's MixedLoss([SafeCrossEntropyLoss, SafeDiceLoss], [1 − w, w]),
                         w in {0.1, 0.2, 0.35, 0.5, 0.7}; w = 0.2 is PaddleSeg's usual 0.8/0.2
  CE+Dice best fixed     the w with the best validation mIoU, per seed (5 runs)
  CE+Dice liebel         AutoWeight(losses=[CE, Dice], method="liebel", init=1.0) + attach()
  OHEM PaddleSeg         OhemCrossEntropyLoss(thresh=0.7, min_kept=10000), one cast added for paddle 3
  OHEM ours              TopKLoss(ratio=0.01, min_kept=10000, thresh=0.7)

Needs the PaddleSeg environment (``bash scripts/test_paddleseg.sh`` builds .venv-seg):

    .venv-seg/bin/python scripts/study_paddleseg.py             # 5 seeds, 40 runs
    .venv-seg/bin/python scripts/study_paddleseg.py --quick     # smoke test
"""

from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time

import _study
import numpy as np
import paddle
import paddle.nn.functional as F
from paddleseg.core import train
from paddleseg.models import MixedLoss
from study_segmentation import TinySegNet, segmentation_scores, splits

import hapi_autoloss.paddleseg as hp

DICE_GRID = (0.1, 0.2, 0.35, 0.5, 0.7)
GRID_RUNS = tuple(f"CE+Dice {1 - w:g}/{w:g}" for w in DICE_GRID)
BEST, LIEBEL, OHEM_SEG, OHEM_OURS = "CE+Dice best fixed (validated)", "CE+Dice liebel", "OHEM PaddleSeg", "OHEM ours"
RUNS = (*GRID_RUNS, LIEBEL, OHEM_SEG, OHEM_OURS)
METHODS = ("CE+Dice 0.8/0.2", BEST, LIEBEL, OHEM_SEG, OHEM_OURS)
ITERS, QUICK_ITERS = 300, 6
LR, BATCH, WEIGHT_DECAY = 2e-3, 16, 0.01
THRESH, MIN_KEPT = 0.7, 10000


class PaddleSegOhem(paddle.nn.Layer):
    """PaddleSeg 2.8.0's ``OhemCrossEntropyLoss.forward`` (Apache-2.0), unchanged but for the one cast
    paddle 3 needs (``prob + (1 - valid_mask)`` mixes float32 and int64) and a [1]-shaped result."""

    def __init__(self, thresh: float = 0.7, min_kept: int = 10000, ignore_index: int = 255) -> None:
        super().__init__()
        self.thresh, self.min_kept, self.ignore_index, self.EPS = thresh, min_kept, ignore_index, 1e-5

    def forward(self, logit: paddle.Tensor, label: paddle.Tensor) -> paddle.Tensor:
        if len(label.shape) != len(logit.shape):
            label = paddle.unsqueeze(label, 1)
        n, c, h, w = logit.shape
        label = label.reshape((-1,)).astype("int64")
        valid_mask = (label != self.ignore_index).astype("int64")
        num_valid = valid_mask.sum()
        label = label * valid_mask
        prob = F.softmax(logit, axis=1)
        prob = prob.transpose((1, 0, 2, 3)).reshape((c, -1))
        if self.min_kept < num_valid and num_valid > 0:
            prob = prob + (1 - valid_mask).astype("float32")  # the one cast
            label_onehot = F.one_hot(label, c)
            label_onehot = label_onehot.transpose((1, 0))
            prob = prob * label_onehot
            prob = paddle.sum(prob, axis=0)
            threshold = self.thresh
            if self.min_kept > 0:
                index = prob.argsort()
                threshold_index = index[min(len(index), self.min_kept) - 1]
                threshold_index = int(threshold_index)
                if prob[threshold_index] > self.thresh:
                    threshold = prob[threshold_index]
                kept_mask = (prob < threshold).astype("int64")
                label = label * kept_mask
                valid_mask = valid_mask * kept_mask
        label = label + (1 - valid_mask) * self.ignore_index
        label = label.reshape((n, 1, h, w))
        valid_mask = valid_mask.reshape((n, 1, h, w)).astype("float32")
        loss = F.softmax_with_cross_entropy(logit, label, ignore_index=self.ignore_index, axis=1)
        loss = loss * valid_mask
        avg_loss = paddle.mean(loss) / (paddle.mean(valid_mask) + self.EPS)
        return avg_loss.reshape([1])


class SegNet(TinySegNet):
    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:  # type: ignore[override]
        return [super().forward(x)]


class Shapes(paddle.io.Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __getitem__(self, i: int) -> dict:
        return {"img": self.x[i], "label": self.y[i]}

    def __len__(self) -> int:
        return len(self.x)


def make_loss(method: str) -> paddle.nn.Layer:
    if method in GRID_RUNS:
        w = DICE_GRID[GRID_RUNS.index(method)]
        return MixedLoss([hp.SafeCrossEntropyLoss(), hp.SafeDiceLoss()], [1 - w, w])
    if method == LIEBEL:
        return hp.AutoWeight([{"type": "SafeCrossEntropyLoss"}, {"type": "SafeDiceLoss"}], method="liebel",
                             init=_study.init_option("liebel", _study.LEARNED_RULE["init"]))
    if method == OHEM_SEG:
        return PaddleSegOhem(THRESH, MIN_KEPT)
    return hp.TopKLoss(ratio=0.01, min_kept=MIN_KEPT, thresh=THRESH)


def job(method: str, seed: int, iters: int, quick: bool) -> dict:
    x_tr, y_tr, x_te, y_te, x_va, y_va = splits(seed, quick)
    _study.seed_everything(seed)
    net = SegNet()
    loss = make_loss(method)
    losses = {"types": [loss], "coef": [1]}
    sched = paddle.optimizer.lr.PolynomialDecay(LR, decay_steps=iters, end_lr=0.0)
    opt = paddle.optimizer.AdamW(sched, parameters=net.parameters(), weight_decay=WEIGHT_DECAY)
    if method == LIEBEL:
        hp.attach(net, losses, opt)
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        train(net, Shapes(x_tr, y_tr), optimizer=opt, losses=losses, save_dir=out, iters=iters,
              batch_size=BATCH, log_iters=iters, save_interval=iters)
    pred = _study.predict(net, x_te, batch_size=50)[0].argmax(1)
    val = segmentation_scores(_study.predict(net, x_va, batch_size=50)[0].argmax(1), y_va)
    weights = loss.weights() if method == LIEBEL else {}
    return {"method": method, "seed": seed, **segmentation_scores(pred, y_te), "val": val, "weights": weights}


def ohem_check(repeats: int = 20) -> list[list[str]]:
    """Pixels kept (those whose logits get a gradient) and forward+backward time of each OHEM."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (BATCH, 64, 64))
    logits = (4.0 * np.eye(3)[y].transpose(0, 3, 1, 2) + rng.standard_normal((BATCH, 3, 64, 64))).astype("float32")
    labels = paddle.to_tensor(y)
    rows = []
    for name, fn in ((OHEM_SEG, PaddleSegOhem(THRESH, MIN_KEPT)), (OHEM_OURS, make_loss(OHEM_OURS))):
        x = paddle.to_tensor(logits, stop_gradient=False)
        fn(x, labels).backward()
        kept = int((np.abs(x.grad.numpy()).sum(1) > 0).sum())
        below = int((F.softmax(x, axis=1).numpy()[np.eye(3)[y].transpose(0, 3, 1, 2) > 0] < THRESH).sum())
        times = []
        for _ in range(repeats):
            x = paddle.to_tensor(logits, stop_gradient=False)
            start = time.perf_counter()
            fn(x, labels).backward()
            _ = x.grad.numpy()
            times.append(time.perf_counter() - start)
        rows.append([name, str(BATCH * 64 * 64), str(below), str(MIN_KEPT), str(kept),
                     f"{1000 * statistics.median(times):.1f}"])
    return rows


def main(argv: list[str] | None = None) -> str:
    args = _study.resolve(_study.parser(__doc__ or "", ITERS).parse_args(argv), ITERS, QUICK_ITERS)
    iters = args.epochs  # --epochs sets the iterations here: PaddleSeg's train counts iterations
    _study.header("Issue 13: CE+Dice weights and OHEM in PaddleSeg's trainer (synthetic shapes, 64×64)", args,
                  f"TinySegNet via paddleseg.core.train; AdamW wd {WEIGHT_DECAY}, PolynomialDecay {LR}→0, batch "
                  f"{BATCH}, {iters} iterations (--epochs); grid w_dice {DICE_GRID} chosen on validation mIoU")
    start = time.perf_counter()
    check = _study.markdown_table(["OHEM", "pixels", "true-class p < 0.7", "min_kept", "pixels kept",
                                   "fwd+bwd ms (median)"], ohem_check(3 if args.quick else 20))
    print(check)
    jobs = [(m, s, iters, args.quick) for s in range(args.seeds) for m in RUNS]
    results = _study.run_jobs(job, jobs, args.workers)
    flat = [r for r in results if r["method"] not in GRID_RUNS or r["method"] == "CE+Dice 0.8/0.2"]
    chosen = []
    for s in range(args.seeds):
        grid = [r for r in results if r["method"] in GRID_RUNS and r["seed"] == s]
        best = max(grid, key=lambda r: (r["val"]["miou"], -GRID_RUNS.index(r["method"])))
        chosen.append(best["method"].split()[-1])
        flat.append({**best, "method": BEST})

    def col(m: str, key: str) -> list[float]:
        return _study.collect(flat, m, key)

    rows = []
    for m in METHODS:
        ohem = m.startswith("OHEM")
        rows.append([m, _study.mean_std(col(m, "miou")), _study.mean_std(col(m, "dice")),
                     _study.mean_std(col(m, "iou_circle")), _study.mean_std(col(m, "iou_square")),
                     "—" if ohem or m == "CE+Dice 0.8/0.2" else _study.wins(flat, m, "CE+Dice 0.8/0.2", "miou", True),
                     "—" if ohem or m == BEST else _study.wins(flat, m, BEST, "miou", True),
                     _study.wins(flat, m, OHEM_SEG, "miou", True) if m == OHEM_OURS else "—",
                     str(len(DICE_GRID)) if m == BEST else "1", f"{np.mean(col(m, 'seconds')):.1f}"])
    table = _study.markdown_table(["loss", "mIoU ↑", "mean Dice ↑", "IoU circle ↑", "IoU square ↑",
                                   "beats 0.8/0.2", "beats best fixed", "beats PaddleSeg OHEM", "runs", "s/run"], rows)
    print(table)
    print(f"\nbest fixed ratio (CE/Dice) per seed, chosen on validation mIoU: {chosen}")
    w = np.mean([list(r["weights"].values()) for r in flat if r["method"] == LIEBEL], axis=0)
    print(f"final weights liebel: ce {w[0]:.3g}, dice {w[1]:.3g} (ratio ce/dice {w[0] / w[1]:.2f})")
    print(f"\nwall time: {time.perf_counter() - start:.0f} s ({len(jobs)} runs)")
    return check + "\n\n" + table


if __name__ == "__main__":
    main()
