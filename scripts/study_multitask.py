"""Study 1: multi-task learning on real images ("MultiDigits"), fixed vs learned loss weights.

Two of sklearn's 8×8 digits side by side make one 8×16 image. Three tasks share a small conv
trunk: classify the left digit, classify the right digit, and regress the sum of the two
digits (0-18, in raw units, so its MSE starts ~40× larger than a cross-entropy: the scale
mismatch that loss weighting is meant to fix).

Methods (one AutoWeight each, trained with model.fit + AutoWeightCallback):
  equal            1·CE_left + 1·CE_right + 1·MSE_sum
  fixed grid       1·CE_left + 1·CE_right + w·MSE_sum, w in {0.01, 0.03, 0.1, 0.3, 1};
                   the w with the lowest validation "norm. error" is picked per seed and its
                   test numbers reported (w = 1 is the equal run, reused)
  kendall, simple, liebel, imtl_l   learned s (or c), with _study.LEARNED_RULE, chosen on validation
                   by scripts/tune_learned_defaults.py (docs/results.md, issue 10 step 1)
  dwa, rlw, gls, famo, stch, uw_so   the methods' published defaults, passed explicitly
  --rows grad: equal, the grid, and the gradient-level methods (mgda, pcgrad, cagrad, imtl,
                   gradnorm, aligned_mtl, nash_mtl, db_mtl) in parameter mode (shared: found, the
                   trunk), then those with a representation mode again on the trunk's output ("rep")

norm. error = mean of (1 − acc_left)/0.9, (1 − acc_right)/0.9, RMSE/std(sum): each error
relative to a constant predictor (0 perfect, 1 chance). It is the validation criterion for the
grid and a one-number summary on test.

    python scripts/study_multitask.py              # 5 seeds, 75 runs, ~19 min on 2 shared cores
    python scripts/study_multitask.py --rows grad  # issue 11: the gradient-level methods
    python scripts/study_multitask.py --quick      # smoke test
    python scripts/study_multitask.py --rows grad --methods nash_mtl  # equal, the grid and one row
"""

from __future__ import annotations

import os
import time

import _study
import numpy as np
import paddle

from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback
from hapi_autoloss.weighting import METHODS

GRID = (0.01, 0.03, 0.1, 0.3, 1.0)  # weight of the regression task; fixed before any run
LEARNED_SCALE = tuple(_study.DEFAULT_INIT)  # kendall, simple, liebel, imtl_l
RULE = _study.LEARNED_RULE  # chosen on validation by scripts/tune_learned_defaults.py
# Explicit options, so the numbers do not move when a library default does.
OPTIONS: dict[str, dict] = {
    "dwa": {"temperature": 2.0},
    "gls": {},
    "famo": {"w_lr": 0.025, "gamma": 1e-3},
    "stch": {"mu": 1.0, "warmup_epochs": 4},
    "uw_so": {"temperature": 1.0},
}
# Gradient-level methods (issue 11): the published defaults (LibMTL's config.py, or the paper's code).
GRAD_OPTIONS: dict[str, dict] = {
    "mgda": {"normalize": "none"},
    "pcgrad": {},  # + seed = the run's seed
    "cagrad": {"c": 0.5, "rescale": 1},
    "imtl": {},
    "gradnorm": {"alpha": 1.5},
    "aligned_mtl": {"scale": "min"},
    "nash_mtl": {"max_norm": 1.0, "update_weights_every": 1},
    "db_mtl": {"beta": 0.9, "beta_sigma": 0.0},
}
LEARNED = (*LEARNED_SCALE, "dwa", "rlw", "gls", "famo", "stch", "uw_so")
GRAD = tuple(GRAD_OPTIONS)
GRAD_REP = tuple(f"{m} rep" for m in GRAD if m in METHODS and getattr(METHODS[m], "rep_grad", False))
ROWS = ("equal", "fixed (best of grid)", *LEARNED)
GRAD_ROWS = ("equal", "fixed (best of grid)", *GRAD, *GRAD_REP)
EPOCHS, QUICK_EPOCHS = 20, 2
LR, BATCH = 1e-3, 64
SIZES = {"full": (3000, 1000, 1000), "quick": (256, 128, 128)}  # train, val, test pairs
CHANCE_ERROR = 0.9  # 10 balanced classes


def multidigits(seed: int, sizes: tuple[int, int, int]) -> dict[str, tuple[np.ndarray, ...]]:
    """Pairs of digits; the digit images are split 60/20/20 first, so no image is in two splits."""
    from sklearn.model_selection import train_test_split

    x, y = _study.load_digits()
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    rng = np.random.default_rng(seed)
    out = {}
    for name, pool, n in zip(("train", "val", "test"), (train, val, test), sizes):
        a, b = rng.choice(pool, n), rng.choice(pool, n)
        image = np.concatenate([x[a], x[b]], axis=2)[:, None]  # [n, 1, 8, 16]
        total = (y[a] + y[b]).astype("float32")[:, None]  # [n, 1], as the regression output
        out[name] = (image.astype("float32"), y[a], y[b], total)
    return out


class MultiDigitNet(paddle.nn.Layer):
    """Shared trunk (2 conv + pool + 64-unit FC) and three linear heads."""

    def __init__(self) -> None:
        super().__init__()
        nn = paddle.nn
        self.trunk = nn.Sequential(
            nn.Conv2D(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2D(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2D(2), nn.Flatten(),
            nn.Linear(32 * 4 * 8, 64), nn.ReLU(),
        )  # fmt: skip
        self.left = nn.Linear(64, 10)
        self.right = nn.Linear(64, 10)
        self.total = nn.Linear(64, 1)

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        z = self.trunk(x)
        return [self.left(z), self.right(z), self.total(z)]


def make_loss(method: str, seed: int, w_reg: float | None = None, init: str = "default",
              net: MultiDigitNet | None = None) -> AutoWeight:
    """The loss of one run; ``init`` ("default" or "auto") applies to the learned-scale methods."""
    losses = {"left": paddle.nn.CrossEntropyLoss(), "right": paddle.nn.CrossEntropyLoss(), "sum": paddle.nn.MSELoss()}
    if method.endswith(" rep"):
        assert net is not None
        name = method.split()[0]
        return AutoWeight(losses, method=name, shared=net.trunk, rep_grad=True, **grad_options(name, seed))
    if method in GRAD_OPTIONS:
        return AutoWeight(losses, method=method, **grad_options(method, seed))
    if method == "fixed":
        return AutoWeight(losses, method="fixed", weights=[1.0, 1.0, float(w_reg)])
    if method in LEARNED_SCALE:
        kw: dict = {"init": _study.init_option(method, init)}
        if method == "kendall":
            kw["task_types"] = ["classification", "classification", "regression"]
        return AutoWeight(losses, method=method, **kw)
    if method == "rlw":
        return AutoWeight(losses, method="rlw", seed=seed)
    return AutoWeight(losses, method=method, **OPTIONS[method])


def grad_options(method: str, seed: int) -> dict:
    return {**GRAD_OPTIONS[method], **({"seed": seed} if method == "pcgrad" else {})}


def scores(net: paddle.nn.Layer, split: tuple[np.ndarray, ...], target_std: float) -> dict[str, float]:
    image, left, right, total = split
    out_l, out_r, out_t = _study.predict(net, image)
    acc_l = float((out_l.argmax(1) == left).mean())
    acc_r = float((out_r.argmax(1) == right).mean())
    rmse = float(np.sqrt(((out_t - total) ** 2).mean()))
    norm = ((1 - acc_l) / CHANCE_ERROR + (1 - acc_r) / CHANCE_ERROR + rmse / target_std) / 3
    return {"acc_left": acc_l, "acc_right": acc_r, "rmse": rmse, "norm_error": norm}


def job(
    method: str,
    seed: int,
    w_reg: float | None,
    epochs: int,
    quick: bool,
    init: str = "default",
    lr_scale: float = 1.0,
    test: bool = True,
) -> dict:
    """One training run; ``test=False`` scores the validation pairs only (for tuning)."""
    data = multidigits(seed, SIZES["quick" if quick else "full"])
    _study.seed_everything(seed)
    net = MultiDigitNet()
    model = paddle.Model(net)
    loss = make_loss(method, seed, w_reg, init, net)
    model.prepare(paddle.optimizer.Adam(LR, parameters=model.parameters()), loss)
    callback = AutoWeightCallback(lr_scale=lr_scale)
    _study.fit(model, _study.ArrayDataset(*data["train"]), epochs, BATCH, callbacks=[callback])
    target_std = float(data["train"][3].std())
    out = {
        "method": method,
        "seed": seed,
        "w_reg": w_reg,
        "init": init,
        "lr_scale": lr_scale,
        "val": scores(net, data["val"], target_std),
        "weights": loss.weights(),
    }
    return {**out, **scores(net, data["test"], target_std)} if test else out


def main(argv: list[str] | None = None) -> str:
    ap = _study.parser(__doc__ or "", EPOCHS)
    ap.add_argument("--rows", choices=("loss", "grad"), default="loss",
                    help="loss: the loss-level methods (issue 10); grad: the gradient-level ones (issue 11)")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="only these rows besides equal and the grid (rerun one method after a fix)")
    args = _study.resolve(ap.parse_args(argv), EPOCHS, QUICK_EPOCHS)
    rows = ROWS if args.rows == "loss" else GRAD_ROWS
    if args.methods:
        unknown = sorted(set(args.methods) - set(rows[2:]))
        if unknown:
            ap.error(f"--methods {unknown} are not rows of --rows {args.rows}: {list(rows[2:])}")
        rows = (*rows[:2], *(m for m in rows[2:] if m in args.methods))
    learned = rows[2:]
    _study.header(
        "Study 1: MultiDigits (left digit, right digit, sum of digits)",
        args,
        f"trunk 2×conv+FC64, 3 heads; Adam lr {LR}, batch {BATCH}, {args.epochs} epochs, last epoch evaluated; "
        f"pairs train/val/test {SIZES['quick' if args.quick else 'full']}; learned-scale rule: init "
        f"{RULE['init']}, lr_scale {RULE['lr_scale']}",
    )
    start = time.perf_counter()
    seeds = range(args.seeds)
    jobs = [("fixed", s, w, args.epochs, args.quick) for s in seeds for w in GRID]
    rule = (RULE["init"], RULE["lr_scale"])
    jobs += [(m, s, None, args.epochs, args.quick, *(rule if m in LEARNED_SCALE else ()))
             for s in seeds for m in learned]  # fmt: skip
    results = _study.run_jobs(job, jobs, args.workers)

    rows_by_method: dict[str, list[dict]] = {m: [] for m in rows}
    chosen = []
    for s in seeds:
        grid = [r for r in results if r["method"] == "fixed" and r["seed"] == s]
        rows_by_method["equal"].append(next(r for r in grid if r["w_reg"] == 1.0))
        best = min(grid, key=lambda r: r["val"]["norm_error"])
        rows_by_method["fixed (best of grid)"].append(best)
        chosen.append(best["w_reg"])
        for m in learned:
            rows_by_method[m].extend(r for r in results if r["method"] == m and r["seed"] == s)

    flat = [{**r, "method": m} for m, rs in rows_by_method.items() for r in rs]
    table_rows = []
    for m in rows:
        rs = rows_by_method[m]
        table_rows.append([
            m,
            _study.mean_std([r["acc_left"] for r in rs]),
            _study.mean_std([r["acc_right"] for r in rs]),
            _study.mean_std([r["rmse"] for r in rs]),
            _study.mean_std([r["norm_error"] for r in rs]),
            "—" if m == "equal" else _study.wins(flat, m, "equal", "norm_error", higher_is_better=False),
            "—" if m.startswith("fixed") else _study.wins(flat, m, "fixed (best of grid)", "norm_error", False),
            str(len(GRID)) if m.startswith("fixed") else "1",
            f"{np.mean([r['seconds'] for r in rs]):.1f}",
        ])  # fmt: skip
    table = _study.markdown_table(  # "beats": lower norm. error than that row on the same seed
        ["method", "acc left ↑", "acc right ↑", "RMSE sum ↓", "norm. error ↓", "beats equal", "beats grid", "runs",
         "s/run"],
        table_rows,
    )
    print(table)
    print(f"\nfixed grid: regression weight chosen on validation per seed: {chosen}")
    for m in learned:
        w = np.mean([list(r["weights"].values()) for r in rows_by_method[m]], axis=0)
        print(f"final weights {m:<8} left/right/sum: " + " / ".join(f"{v:.3g}" for v in w))
    wall = time.perf_counter() - start
    print(f"\nwall time: {wall:.0f} s ({len(jobs)} runs)")

    name = "study_multitask.png" if args.rows == "loss" else "study_multitask_grad.png"
    path = os.path.join(args.out, name if not args.methods else f"{name[:-4]}_{'_'.join(args.methods)}.png")
    _study.bar_panels(
        path,
        list(rows),
        [
            ("test accuracy, left digit", [[r["acc_left"] for r in rows_by_method[m]] for m in rows]),
            ("test accuracy, right digit", [[r["acc_right"] for r in rows_by_method[m]] for m in rows]),
            ("test RMSE, sum of digits", [[r["rmse"] for r in rows_by_method[m]] for m in rows]),
            ("test norm. error (lower is better)", [[r["norm_error"] for r in rows_by_method[m]] for m in rows]),
        ],
        f"MultiDigits, {args.seeds} seeds, {args.epochs} epochs (bars: mean ± std, dots: seeds)",
    )
    print(f"plot: {path}")
    return table


if __name__ == "__main__":
    main()
