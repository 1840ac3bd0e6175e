"""Study 3: mixed segmentation losses (CE + Dice) with fixed, learned and hard-example weighting.

Synthetic data, 64×64, 3 classes: background (~85% of pixels), circles (1) and axis-aligned
squares (2), radius / half-side 5-11 px, 1-4 shapes per image. A shape is brighter or darker
than the background by 0.6-1.2 (random sign) and the background is a sum of 3 random
gratings; Gaussian noise σ = 0.5 on top. Circles and squares share their intensity
distribution, so telling them apart takes shape, not brightness. Per seed: 300 training and 100
held-out test images, drawn afresh, and 100 validation images (for choosing a fixed ratio).

Network: a tiny encoder-decoder (3 conv down to 16×16, one conv there, 2 nearest-upsampling
stages with skips; ~33k parameters). Losses (all with model.fit):
  CE                   CrossEntropyLoss
  CE+Dice 0.8/0.2      AutoWeight(method="fixed", weights=[0.8, 0.2], routing="shared") (PaddleSeg's)
  CE+Dice best fixed   the best of weights [1 − w, w], w in {0.1, 0.2, 0.35, 0.5, 0.7}, chosen per
  (validated)          seed on validation mIoU; costs 5 runs (w = 0.2 is the 0.8/0.2 run)
  CE+Dice kendall      AutoWeight(method="kendall", task_types=classification ×2, routing="shared")
  CE+Dice liebel       AutoWeight(method="liebel", routing="shared")
                       (both with _study.LEARNED_RULE: init and σ's lr_scale, as explicit options)
  TopK-CE+Dice         0.8·TopKLoss(CE per pixel), ratio 100%→10% by TopKScheduler, + 0.2·Dice

Metrics on the test images, pixels pooled over all of them: IoU and Dice per class, and their
means over the 3 classes (mIoU, mean Dice).

    python scripts/study_segmentation.py            # 5 seeds, 45 runs, ~40 min on 2 shared cores
    python scripts/study_segmentation.py --quick    # smoke test
"""

from __future__ import annotations

import os
import time

import _study
import numpy as np
import paddle
import paddle.nn.functional as F

from hapi_autoloss import AutoWeight, DiceLoss, TopKLoss
from hapi_autoloss.callbacks import AutoWeightCallback, TopKScheduler

DICE_GRID = (0.1, 0.2, 0.35, 0.5, 0.7)  # w_dice, w_ce = 1 − w_dice; fixed before any run
GRID_RUNS = tuple(f"CE+Dice {1 - w:g}/{w:g}" for w in DICE_GRID)  # "CE+Dice 0.8/0.2" is PaddleSeg's
BEST = "CE+Dice best fixed (validated)"
LEARNED = ("CE+Dice kendall", "CE+Dice liebel")
RUNS = ("CE", *GRID_RUNS, *LEARNED, "TopK-CE+Dice")  # one training each, per seed
METHODS = ("CE", "CE+Dice 0.8/0.2", BEST, *LEARNED, "TopK-CE+Dice")  # the table's rows
CLASSES = ("background", "circle", "square")
SIZE = 64
EPOCHS, QUICK_EPOCHS = 20, 2
LR, BATCH = 2e-3, 16
N_TRAIN, N_TEST, QUICK_TRAIN, QUICK_TEST = 300, 100, 32, 16  # validation: as many as test


def shapes(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images [n, 1, 64, 64] float32 and labels [n, 64, 64] int64."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype("float32")
    images = np.empty((n, 1, SIZE, SIZE), "float32")
    labels = np.zeros((n, SIZE, SIZE), "int64")
    for i in range(n):
        img = np.zeros((SIZE, SIZE), "float32")
        for _ in range(3):  # texture: random gratings of 2-8 cycles per image
            fx, fy = rng.uniform(-8, 8, 2) / SIZE
            img += rng.uniform(0.1, 0.3) * np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
        for _ in range(rng.integers(1, 5)):
            cls = int(rng.integers(1, 3))
            r = rng.uniform(5, 11)
            cy, cx = rng.uniform(r, SIZE - r, 2)
            if cls == 1:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
            img[mask] += rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
            labels[i][mask] = cls
        images[i, 0] = img + 0.5 * rng.standard_normal((SIZE, SIZE))
    return images, labels


class TinySegNet(paddle.nn.Layer):
    """Encoder 64→32→16, decoder back to 64 with skips; logits [N, 3, 64, 64]."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        nn = paddle.nn
        self.enc1 = nn.Conv2D(1, 16, 3, padding=1)
        self.enc2 = nn.Conv2D(16, 32, 3, stride=2, padding=1)
        self.enc3 = nn.Conv2D(32, 32, 3, stride=2, padding=1)
        self.mid = nn.Conv2D(32, 32, 3, padding=1)
        self.dec2 = nn.Conv2D(64, 16, 3, padding=1)
        self.head = nn.Conv2D(32, classes, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(e1))
        m = F.relu(self.mid(F.relu(self.enc3(e2))))
        d2 = F.relu(self.dec2(paddle.concat([F.interpolate(m, scale_factor=2), e2], axis=1)))
        return self.head(paddle.concat([F.interpolate(d2, scale_factor=2), e1], axis=1))


def make_loss(method: str) -> tuple[paddle.nn.Layer, list]:
    """The loss and the callbacks it needs."""
    if method == "CE":
        return paddle.nn.CrossEntropyLoss(axis=1), []
    ce: paddle.nn.Layer = paddle.nn.CrossEntropyLoss(axis=1)
    callbacks: list = [AutoWeightCallback()]
    if method == "TopK-CE+Dice":
        ce = TopKLoss(paddle.nn.CrossEntropyLoss(axis=1, reduction="none"), ratio=1.0, per="pixel")
        callbacks.append(TopKScheduler(start=1.0, end=0.1, schedule="linear", by="epoch"))
    losses = {"ce": ce, "dice": DiceLoss()}
    if method == "TopK-CE+Dice":
        return AutoWeight(losses, method="fixed", weights=[0.8, 0.2], routing="shared"), callbacks
    if method in GRID_RUNS:
        w_dice = DICE_GRID[GRID_RUNS.index(method)]
        return AutoWeight(losses, method="fixed", weights=[1 - w_dice, w_dice], routing="shared"), callbacks
    name, rule = method.split()[-1], _study.LEARNED_RULE
    kw: dict = {"init": _study.init_option(name, rule["init"])}
    if name == "kendall":
        kw["task_types"] = ["classification", "classification"]
    callbacks[0] = AutoWeightCallback(lr_scale=rule["lr_scale"])
    return AutoWeight(losses, method=name, routing="shared", **kw), callbacks


def segmentation_scores(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """IoU and Dice per class and their means, pixels pooled over all images."""
    out: dict[str, float] = {}
    ious, dices = [], []
    for c, name in enumerate(CLASSES):
        p, t = pred == c, label == c
        tp, fp, fn = (p & t).sum(), (p & ~t).sum(), (~p & t).sum()
        ious.append(tp / max(tp + fp + fn, 1))
        dices.append(2 * tp / max(2 * tp + fp + fn, 1))
        out[f"iou_{name}"] = float(ious[-1])
    out["miou"] = float(np.mean(ious))
    out["dice"] = float(np.mean(dices))
    return out


def splits(seed: int, quick: bool) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test, x_val, y_val) of one seed: three disjoint image streams."""
    n_train, n_test = (QUICK_TRAIN, QUICK_TEST) if quick else (N_TRAIN, N_TEST)
    return (*shapes(seed, n_train), *shapes(10_000 + seed, n_test), *shapes(20_000 + seed, n_test))


def job(method: str, seed: int, epochs: int, quick: bool) -> dict:
    x_tr, y_tr, x_te, y_te, x_va, y_va = splits(seed, quick)
    _study.seed_everything(seed)
    net = TinySegNet()
    model = paddle.Model(net)
    loss, callbacks = make_loss(method)
    model.prepare(paddle.optimizer.Adam(LR, parameters=model.parameters()), loss)
    _study.fit(model, _study.ArrayDataset(x_tr, y_tr), epochs, BATCH, callbacks)
    pred = _study.predict(net, x_te, batch_size=50)[0].argmax(1)
    val = segmentation_scores(_study.predict(net, x_va, batch_size=50)[0].argmax(1), y_va)
    weights = loss.weights() if isinstance(loss, AutoWeight) else {}
    return {"method": method, "seed": seed, **segmentation_scores(pred, y_te), "val": val, "weights": weights,
            "example": pred[:2].astype("uint8")}  # fmt: skip


def example_plot(path: str, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_te, y_te = shapes(10_000, 2)
    fig, axes = plt.subplots(2, 2 + len(METHODS), figsize=(2.0 * (2 + len(METHODS)), 4.3))
    for row in range(2):
        axes[row, 0].imshow(x_te[row, 0], cmap="gray")
        axes[row, 1].imshow(y_te[row], cmap="viridis", vmin=0, vmax=2)
        for j, m in enumerate(METHODS):
            r = next(r for r in results if r["seed"] == 0 and r["method"] == m)
            axes[row, 2 + j].imshow(r["example"][row], cmap="viridis", vmin=0, vmax=2)
            if row == 0:
                axes[row, 2 + j].set_title(m, fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    axes[0, 1].set_title("truth", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("seed 0, two test images (yellow: square, teal: circle)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    args = _study.resolve(_study.parser(__doc__ or "", EPOCHS).parse_args(argv), EPOCHS, QUICK_EPOCHS)
    n_train, n_test = (QUICK_TRAIN, QUICK_TEST) if args.quick else (N_TRAIN, N_TEST)
    rule = _study.LEARNED_RULE
    _study.header(
        "Study 3: mixed segmentation loss (synthetic shapes, 64×64, 3 classes)",
        args,
        f"TinySegNet; Adam lr {LR}, batch {BATCH}, {args.epochs} epochs, last epoch evaluated; "
        f"{n_train} train / {n_test} validation / {n_test} test images per seed; fixed CE/Dice grid w_dice "
        f"{DICE_GRID} chosen on validation mIoU; kendall/liebel: init {rule['init']}, lr_scale {rule['lr_scale']}",
    )
    start = time.perf_counter()
    seeds = range(args.seeds)
    jobs = [(m, s, args.epochs, args.quick) for s in seeds for m in RUNS]
    results = _study.run_jobs(job, jobs, args.workers)

    rows_by: dict[str, list[dict]] = {m: [] for m in METHODS}
    chosen = []
    for s in seeds:
        grid = [r for r in results if r["method"] in GRID_RUNS and r["seed"] == s]
        best = max(grid, key=lambda r: (r["val"]["miou"], -GRID_RUNS.index(r["method"])))  # a tie: the first
        chosen.append(best["method"].split()[-1])
        rows_by[BEST].append(best)
        for m in METHODS:
            if m != BEST:
                rows_by[m].extend(r for r in results if r["method"] == m and r["seed"] == s)
    flat = [{**r, "method": m} for m, rs in rows_by.items() for r in rs]

    def col(m: str, key: str) -> list[float]:
        return _study.collect(flat, m, key)

    def beats(m: str, baseline: str) -> str:
        return "—" if m in ("CE", baseline) else _study.wins(flat, m, baseline, "miou", higher_is_better=True)

    rows = []
    for m in METHODS:
        rows.append([
            m,
            _study.mean_std(col(m, "miou")),
            _study.mean_std(col(m, "dice")),
            _study.mean_std(col(m, "iou_circle")),
            _study.mean_std(col(m, "iou_square")),
            "—" if m == "CE" else _study.wins(flat, m, "CE", "miou", higher_is_better=True),
            beats(m, "CE+Dice 0.8/0.2"),
            beats(m, BEST),
            str(len(DICE_GRID)) if m == BEST else "1",
            f"{np.mean(col(m, 'seconds')):.1f}",
        ])  # fmt: skip
    table = _study.markdown_table(
        ["loss", "mIoU ↑", "mean Dice ↑", "IoU circle ↑", "IoU square ↑", "mIoU beats CE", "beats 0.8/0.2",
         "beats best fixed", "runs", "s/run"],
        rows,
    )  # fmt: skip
    print(table)
    print(f"\nbest fixed ratio (CE/Dice) chosen on validation mIoU per seed: {chosen}")
    grid_rows = []
    for m in GRID_RUNS:
        rs = sorted((r for r in results if r["method"] == m), key=lambda r: r["seed"])
        grid_rows.append([m, _study.mean_std([r["val"]["miou"] for r in rs]), _study.mean_std([r["miou"] for r in rs]),
                          f"{sum(c == m.split()[-1] for c in chosen)}/{args.seeds}"])  # fmt: skip
    print(_study.markdown_table(["fixed ratio", "validation mIoU", "test mIoU", "chosen"], grid_rows))
    for m in LEARNED:
        w = np.mean([list(r["weights"].values()) for r in rows_by[m]], axis=0)
        print(f"final weights {m}: ce {w[0]:.3g}, dice {w[1]:.3g} (ratio ce/dice {w[0] / w[1]:.2f})")
    wall = time.perf_counter() - start
    print(f"\nwall time: {wall:.0f} s ({len(jobs)} runs)")

    path = os.path.join(args.out, "study_segmentation.png")
    metrics = (("test mIoU", "miou"), ("test mean Dice", "dice"), ("IoU circle", "iou_circle"))
    metrics += (("IoU square", "iou_square"),)
    panels = [(label, [col(m, key) for m in METHODS]) for label, key in metrics]
    _study.bar_panels(path, list(METHODS), panels, f"synthetic shapes, {args.seeds} seeds, {args.epochs} epochs")
    examples = os.path.join(args.out, "study_segmentation_examples.png")
    example_plot(examples, flat)
    print(f"plots: {path}, {examples}")
    return table


if __name__ == "__main__":
    main()
