"""Study 2: hard-example mining with TopKLoss, on noisy and imbalanced digits and Lyu 2017's 2-D toy.

Part A, sklearn's digits (64 pixels, 10 classes), a 64-64-10 MLP; the 60/40 train/test split
is stratified per seed and the test labels are always clean. Training sets:
  clean; 20% and 40% symmetric label noise (each training label, with that probability,
  replaced by a uniformly drawn *other* class); 10:1 imbalance (classes 5-9 keep 10% of their
  training images, no noise).
Losses (cross-entropy per sample, aggregated over each batch of 64):
  mean           plain CrossEntropyLoss
  max (k=1)      TopKLoss(ratio=1/64, min_kept=1): the single worst sample of each batch
  top-k 70%      TopKLoss(ratio=0.7)
  top-k 100→10%  TopKLoss + TopKScheduler(start=1.0, end=0.1, linear, by epoch)
Issue 12 (ranked range, docs/results.md "Issue 12: protocol"):
  AoRR 10-70%    TopKLoss(ratio=0.7, drop=0.1): ranks 10%..70% of each batch averaged
  trimmed 80%    TopKLoss(ratio=1.0, drop=0.2): the easiest 80%
  AoRR 100→20%, drop 0→10%   TopKLoss + TopKScheduler(1.0, 0.2, drop_start=0, drop_end=0.1)
  band μ+1σ/μ−2σ TopKLoss(band=(1.0, 2.0)), the JMLR 2022 rule with the official defaults
  plateau        TopKLoss(ratio=1.0) + TopKOnPlateau(monitor="acc", factor=0.5, patience=3,
                 min_ratio=0.1), evaluated each epoch on 15% of the training set held out
                 (stratified, labels as corrupted); trains on the other 85%. The candidate.
Issue 12, second round (docs/results.md "Issue 12, second round: protocol"):
  per-class mean  TopKLoss(ratio=1.0, per="class"): the class-balanced mean. Candidate 2.
  per-class top-k 100→50%   the same + TopKScheduler(1.0, 0.5, linear, by epoch)

Part B, Lyu et al., "Learning with Average Top-k Loss" (NeurIPS 2017), Fig. 1 style: 2-D data,
n = 200 (190 regular points + 10 outliers), a linear classifier, logistic loss, full batch, so
the top-k is over the whole training set as in the paper:
  multi-modal  class 1 in two modes, class 0 in one, balanced
  imbalanced   class 1 (minority) 19 points, class 0 171 points
Outliers are class-0 points far inside class 1's side. Test error on 20000 fresh points from the
same mixture without outliers. Aggregates: average (k = n), ATk with k in {50, 20, 10, 5, 2},
max (k = 1); AoRR with m = 10 (the number of outliers) and k in {200, 50, 20}; the band rule;
the class-balanced average (per="class", ratio 1).

    python scripts/study_hard_examples.py           # 5 seeds, ~1 min on 2 cores
    python scripts/study_hard_examples.py --quick   # smoke test
"""

from __future__ import annotations

import os
import time

import _study
import numpy as np
import paddle

from hapi_autoloss import TopKLoss
from hapi_autoloss.callbacks import TopKOnPlateau, TopKScheduler

BAND = "band μ+1σ/μ−2σ"
PLATEAU = "plateau (candidate)"
CLASS = "per-class mean (candidate 2)"
CLASS_ANNEALED = "per-class top-k 100→50%"
METHODS = ("mean", "max (k=1)", "top-k 70%", "top-k 100→10%",
           "AoRR 10-70%", "trimmed 80%", "AoRR 100→20%, drop 0→10%", BAND, PLATEAU, CLASS, CLASS_ANNEALED)  # fmt: skip
RANGES = {"max (k=1)": (1.0 / 64, 0.0), "top-k 70%": (0.7, 0.0), "top-k 100→10%": (1.0, 0.0),
          "AoRR 10-70%": (0.7, 0.1), "trimmed 80%": (1.0, 0.2), "AoRR 100→20%, drop 0→10%": (1.0, 0.0),
          PLATEAU: (1.0, 0.0), CLASS: (1.0, 0.0), CLASS_ANNEALED: (1.0, 0.0)}  # fmt: skip
VAL_SHARE = 0.15
CONDITIONS = ("clean", "noise 20%", "noise 40%", "imbalance 10:1")
MINORITY = (5, 6, 7, 8, 9)
EPOCHS, QUICK_EPOCHS = 40, 3
LR, BATCH, HIDDEN = 1e-3, 64, 64

LYU_N, LYU_OUTLIERS = 200, 10
LYU_K = (200, 50, 20, 10, 5, 2, 1)  # average, ATk..., max
LYU_M = 10  # AoRR drops as many as there are outliers
LYU_AORR_K = (200, 50, 20)
LYU_SPECS = [("atk", k) for k in LYU_K] + [("aorr", k) for k in LYU_AORR_K] + [("band", LYU_N), ("class", LYU_N)]
LYU_EPOCHS, LYU_QUICK_EPOCHS, LYU_LR, LYU_L2 = 300, 20, 0.05, 1e-3
LYU_TEST = 20000


def lyu_name(k: int, rule: str = "atk") -> str:
    if rule == "aorr":
        return f"AoRR m={LYU_M}, " + ("k=n" if k == LYU_N else f"k={k}")
    if rule == "band":
        return BAND
    if rule == "class":
        return "class-balanced average"
    return "average (k=n)" if k == LYU_N else "max (k=1)" if k == 1 else f"ATk k={k}"


# ---------------------------------------------------------------- part A: digits


def digits_condition(seed: int, condition: str, quick: bool) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test); only the training labels are corrupted."""
    from sklearn.model_selection import train_test_split

    x, y = _study.load_digits()
    x = x.reshape(len(x), -1)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    rng = np.random.default_rng(1000 + seed)
    if condition.startswith("noise"):
        rate = int(condition.split()[1].rstrip("%")) / 100
        flip = rng.random(len(y_tr)) < rate
        # a uniformly drawn *other* class: add 1..9 modulo 10
        y_tr = np.where(flip, (y_tr + rng.integers(1, 10, len(y_tr))) % 10, y_tr)
    elif condition.startswith("imbalance"):
        keep = np.ones(len(y_tr), bool)
        for c in MINORITY:
            idx = np.flatnonzero(y_tr == c)
            keep[rng.permutation(idx)[max(1, len(idx) // 10) :]] = False
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    if quick:
        x_tr, y_tr, x_te, y_te = x_tr[:300], y_tr[:300], x_te[:200], y_te[:200]
    return x_tr, y_tr.astype("int64"), x_te, y_te.astype("int64")


def digits_job(method: str, condition: str, seed: int, epochs: int, quick: bool) -> dict:
    x_tr, y_tr, x_te, y_te = digits_condition(seed, condition, quick)
    _study.seed_everything(seed)
    net = paddle.nn.Sequential(paddle.nn.Linear(64, HIDDEN), paddle.nn.ReLU(), paddle.nn.Linear(HIDDEN, 10))
    model = paddle.Model(net)
    callbacks: list = []
    ce = paddle.nn.CrossEntropyLoss(reduction="none")
    if method == "mean":
        loss: paddle.nn.Layer = paddle.nn.CrossEntropyLoss()
    elif method == BAND:
        loss = TopKLoss(ce, band=(1.0, 2.0), per="sample")
    else:
        ratio, drop = RANGES[method]
        per = "class" if method in (CLASS, CLASS_ANNEALED) else "sample"
        loss = TopKLoss(ce, ratio=ratio, drop=drop, per=per, min_kept=1)
        if method == "top-k 100→10%":
            callbacks.append(TopKScheduler(start=1.0, end=0.1, schedule="linear", by="epoch"))
        if method == CLASS_ANNEALED:
            callbacks.append(TopKScheduler(start=1.0, end=0.5, schedule="linear", by="epoch"))
        if method == "AoRR 100→20%, drop 0→10%":
            callbacks.append(TopKScheduler(1.0, 0.2, schedule="linear", by="epoch", drop_start=0.0, drop_end=0.1))
    optimizer = paddle.optimizer.Adam(LR, parameters=model.parameters())
    extra = {}
    if method == PLATEAU:
        from sklearn.model_selection import train_test_split

        counts = np.bincount(y_tr, minlength=10)
        strata = y_tr if counts[counts > 0].min() >= 2 else None  # --quick subsets may have singletons
        x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=VAL_SHARE, stratify=strata, random_state=seed)
        plateau = TopKOnPlateau(monitor="acc", mode="max", factor=0.5, patience=3, min_ratio=0.1, cooldown=0,
                                min_delta=1e-4, verbose=0)  # fmt: skip
        model.prepare(optimizer, loss, metrics=[paddle.metric.Accuracy()])
        model.fit(_study.ArrayDataset(x_tr, y_tr), _study.ArrayDataset(x_va, y_va), epochs=epochs, batch_size=BATCH,
                  shuffle=True, verbose=0, callbacks=[plateau])  # fmt: skip
        extra = {"final_ratio": float(loss.ratio), "reductions": plateau.reductions}
    else:
        model.prepare(optimizer, loss)
        _study.fit(model, _study.ArrayDataset(x_tr, y_tr), epochs, BATCH, callbacks)
    pred = _study.predict(net, x_te)[0].argmax(1)
    recall = np.array([(pred[y_te == c] == c).mean() for c in range(10)])
    return {
        "method": method,
        "condition": condition,
        "seed": seed,
        "acc": float((pred == y_te).mean()),
        "balanced_acc": float(recall.mean()),
        "minority_recall": float(recall[list(MINORITY)].mean()),
        **extra,
    }


# ---------------------------------------------------------------- part B: Lyu 2017's 2-D data


def lyu_data(kind: str, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` regular points of the mixture (labels 0/1), no outliers."""
    rng = np.random.default_rng(seed)
    if kind == "multi-modal":
        n1 = n // 2
        modes = rng.random(n1) < 0.5
        pos = np.where(modes[:, None], [-3.0, 1.5], [3.0, 1.5]) + 0.9 * rng.standard_normal((n1, 2))
        neg = np.array([0.0, -1.5]) + 1.2 * rng.standard_normal((n - n1, 2))
    else:  # imbalanced, 1:9
        n1 = n // 10
        pos = np.array([0.0, 1.5]) + 0.8 * rng.standard_normal((n1, 2))
        neg = np.array([0.0, -1.5]) + np.array([2.0, 1.0]) * rng.standard_normal((n - n1, 2))
    x = np.concatenate([pos, neg]).astype("float32")
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype("float32")
    return x, y


def lyu_train(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """190 regular points + 10 outliers (class 0, deep in class 1's half); the outlier mask."""
    x, y = lyu_data(kind, seed, LYU_N - LYU_OUTLIERS)
    rng = np.random.default_rng(500 + seed)
    out = (np.array([0.0, 7.0]) + 0.5 * rng.standard_normal((LYU_OUTLIERS, 2))).astype("float32")
    mask = np.r_[np.zeros(len(x), bool), np.ones(LYU_OUTLIERS, bool)]
    return np.concatenate([x, out]), np.r_[y, np.zeros(LYU_OUTLIERS, "float32")], mask


def lyu_job(kind: str, spec: tuple[str, int], seed: int, epochs: int, quick: bool) -> dict:
    x, y, _ = lyu_train(kind, seed)
    x_te, y_te = lyu_data(kind, 10_000 + seed, 2000 if quick else LYU_TEST)
    _study.seed_everything(seed)
    net = paddle.nn.Linear(2, 1)
    model = paddle.Model(net)
    rule, k = spec
    bce = paddle.nn.BCEWithLogitsLoss(reduction="none")
    if rule == "band":
        loss = TopKLoss(bce, band=(1.0, 2.0), per="sample")
    elif rule == "class":
        loss = TopKLoss(bce, ratio=1.0, per="class", num_classes=2)
    else:
        loss = TopKLoss(bce, ratio=k / LYU_N, drop=LYU_M / LYU_N if rule == "aorr" else 0.0, per="sample", min_kept=1)
    opt = paddle.optimizer.Adam(LYU_LR, parameters=model.parameters(), weight_decay=LYU_L2)
    model.prepare(opt, loss)
    _study.fit(model, _study.ArrayDataset(x, y[:, None]), epochs, LYU_N)  # full batch: top-k over all n
    score = _study.predict(net, x_te)[0][:, 0]
    wrong = (score > 0) != (y_te > 0.5)
    return {
        "method": lyu_name(k, rule),
        "kind": kind,
        "seed": seed,
        "error": float(wrong.mean()),
        "balanced_error": float((wrong[y_te > 0.5].mean() + wrong[y_te < 0.5].mean()) / 2),
        "w": net.weight.numpy()[:, 0].tolist(),
        "b": float(net.bias.numpy()[0]),
    }


def lyu_diagnostics(kind: str, seed: int) -> dict:
    """Why ATk can fail here: the fewest training errors any linear classifier makes, and the
    exact ATk optimum per k (the objective is convex in (w, b); Nelder-Mead from 4 starts)."""
    from scipy.optimize import minimize

    x, y, _ = lyu_train(kind, seed)
    x = x.astype(np.float64)
    fewest = len(y)
    for angle in np.linspace(0, 2 * np.pi, 360, endpoint=False):
        z = x @ np.array([np.cos(angle), np.sin(angle)])
        order = np.argsort(z)
        # predicting class 1 above each threshold: errors = class-1 points below + class-0 points above
        ones_below = np.r_[0, np.cumsum(y[order])]
        zeros_above = np.r_[(1 - y).sum(), (1 - y).sum() - np.cumsum(1 - y[order])]
        fewest = min(fewest, int((ones_below + zeros_above).min()))

    def objective(p: np.ndarray, k: int) -> float:
        z = x @ p[:2] + p[2]
        loss = np.logaddexp(0.0, z) - y * z  # logistic loss for labels 0/1
        return float(np.sort(loss)[-k:].mean() + 0.5 * LYU_L2 * (p**2).sum())  # + Adam's L2 (also on b)

    norms = {}
    for k in LYU_K:
        starts = [np.zeros(3), np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, -1.0])]
        opts = {"xatol": 1e-8, "fatol": 1e-10, "maxiter": 20000}
        best = min((minimize(objective, p0, args=(k,), method="Nelder-Mead", options=opts) for p0 in starts),
                   key=lambda o: o.fun)  # fmt: skip
        norms[k] = float(np.linalg.norm(best.x[:2]))
    return {"fewest_errors": fewest, "optimum_w_norm": norms}


def lyu_plot(path: str, results: list[dict], seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("multi-modal", "imbalanced")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    colors = {LYU_N: "tab:blue", 10: "tab:green", 1: "tab:red"}
    for ax, kind in zip(axes[:2], kinds):
        x, y, outlier = lyu_train(kind, 0)
        ax.scatter(*x[(y > 0.5)].T, s=10, c="tab:orange", label="class 1")
        ax.scatter(*x[(y < 0.5) & ~outlier].T, s=10, c="tab:gray", label="class 0")
        ax.scatter(*x[outlier].T, s=30, c="k", marker="x", label="outliers (class 0)")
        xs = np.linspace(x[:, 0].min() - 1, x[:, 0].max() + 1, 2)
        for k, color in colors.items():
            r = next(r for r in results if r["kind"] == kind and r["seed"] == 0 and r["method"] == lyu_name(k))
            (w1, w2), b = r["w"], r["b"]
            if abs(w2) > 1e-9:
                ax.plot(xs, -(w1 * xs + b) / w2, c=color, label=f"{lyu_name(k)} ({r['error']:.1%})")
        ax.set_ylim(x[:, 1].min() - 1, x[:, 1].max() + 1)
        ax.set_title(f"{kind}, seed 0: boundaries (test error)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[2]
    for kind, marker in zip(kinds, ("o", "s")):
        ks = list(LYU_K)
        errs = [[r["error"] for r in results if r["kind"] == kind and r["method"] == lyu_name(k)] for k in ks]
        ax.errorbar(ks, [np.mean(e) for e in errs], yerr=[np.std(e, ddof=1) if len(e) > 1 else 0 for e in errs],
                    marker=marker, capsize=3, label=kind)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("k (1 = max, 200 = average)")
    ax.set_ylabel("test error")
    ax.set_title(f"test error vs k, mean ± std over {seeds} seeds", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> str:
    args = _study.resolve(_study.parser(__doc__ or "", EPOCHS).parse_args(argv), EPOCHS, QUICK_EPOCHS)
    lyu_epochs = LYU_QUICK_EPOCHS if args.quick else LYU_EPOCHS
    _study.header(
        "Study 2: hard examples (TopKLoss)",
        args,
        f"digits: MLP 64-{HIDDEN}-10, Adam lr {LR}, batch {BATCH}, {args.epochs} epochs, last epoch evaluated. "
        f"Lyu 2-D: linear, logistic loss, full batch n={LYU_N}, Adam lr {LYU_LR}, L2 {LYU_L2}, {lyu_epochs} steps",
    )
    start = time.perf_counter()
    seeds = range(args.seeds)
    jobs_a = [(m, c, s, args.epochs, args.quick) for s in seeds for c in CONDITIONS for m in METHODS]
    kinds = ("multi-modal", "imbalanced")
    jobs_b = [(kind, spec, s, lyu_epochs, args.quick) for s in seeds for kind in kinds for spec in LYU_SPECS]
    res_a = _study.run_jobs(digits_job, jobs_a, args.workers)
    res_b = _study.run_jobs(lyu_job, jobs_b, args.workers)

    def res_a_of(condition: str) -> list[dict]:
        return [r for r in res_a if r["condition"] == condition]

    def cell(method: str, condition: str, key: str) -> list[float]:
        return [r[key] for r in res_a if r["method"] == method and r["condition"] == condition]

    rows = []
    for m in METHODS:
        row = [m] + [_study.mean_std(cell(m, c, "acc")) for c in CONDITIONS]
        row += [_study.mean_std(cell(m, "imbalance 10:1", k)) for k in ("balanced_acc", "minority_recall")]
        rows.append(row)
    table_a = _study.markdown_table(
        ["loss", *[f"acc, {c}" for c in CONDITIONS], "bal. acc, imbalance", "minority recall, imbalance"], rows
    )
    print("## Digits: clean test accuracy\n")
    print(table_a)
    for c in CONDITIONS:
        rs = [r for r in res_a if r["method"] == PLATEAU and r["condition"] == c]
        print(f"plateau, {c}: final ratio {_study.mean_std([r['final_ratio'] for r in rs], 2)}, reductions "
              f"{_study.mean_std([r['reductions'] for r in rs], 1)}; acc beats mean on "
              f"{_study.wins(res_a_of(c), PLATEAU, 'mean', 'acc', True)} seeds")  # fmt: skip

    def avg(method: str, condition: str, key: str) -> float:
        return float(np.mean(cell(method, condition, key)))

    for candidate in (PLATEAU, CLASS):
        checks = [(f"acc, {c}", avg(candidate, c, "acc"), avg("mean", c, "acc")) for c in ("noise 20%", "noise 40%")]
        checks.append(("minority recall, imbalance 10:1", avg(candidate, "imbalance 10:1", "minority_recall"), 0.75))
        print(f"goal, {candidate!r} (fixed in advance): " + "; ".join(
            f"{name} {got:.3f} vs {bar:.3f} {'met' if got >= bar else 'NOT met'}" for name, got, bar in checks))
        print("  acc beats mean on: " + ", ".join(
            f"{c} {_study.wins(res_a_of(c), candidate, 'mean', 'acc', True)}" for c in CONDITIONS))
    rows_b = []
    for rule, k in LYU_SPECS:
        m = lyu_name(k, rule)
        row = [m]
        for kind in ("multi-modal", "imbalanced"):
            rs = [r for r in res_b if r["kind"] == kind and r["method"] == m]
            row.append(_study.mean_std([r["error"] for r in rs]))
            if kind == "imbalanced":
                row.append(_study.mean_std([r["balanced_error"] for r in rs]))
        flat = [{**r, "method": r["method"] + "|" + r["kind"]} for r in res_b]
        row += [
            _study.wins(flat, f"{m}|{kind}", f"{lyu_name(LYU_N)}|{kind}", "error", higher_is_better=False)
            for kind in ("multi-modal", "imbalanced")
        ]
        rows_b.append(row)
    table_b = _study.markdown_table(
        ["aggregate", "test error, multi-modal", "test error, imbalanced", "balanced error, imbalanced",
         "beats average (m-m)", "beats average (imb.)"],
        rows_b,
    )  # fmt: skip
    print("\n## Lyu 2017 2-D synthetic: test error (linear classifier, logistic loss)\n")
    print(table_b)
    if not args.quick:
        print("\ndiagnostics, seed 0: |w| of the exact ATk optimum (scipy; 0 = the constant classifier)")
        for kind in kinds:
            d = lyu_diagnostics(kind, 0)
            ws = ", ".join(f"k={k}: {v:.3f}" for k, v in d["optimum_w_norm"].items())
            print(f"  {kind}: fewest training errors of a linear classifier ≈ {d['fewest_errors']}; {ws}")
    wall = time.perf_counter() - start
    print(f"\nwall time: {wall:.0f} s ({len(jobs_a) + len(jobs_b)} runs)")

    path = os.path.join(args.out, "study_hard_examples.png")
    panels = [(f"test acc, {c}", [cell(m, c, "acc") for m in METHODS]) for c in CONDITIONS]
    panels.append(("minority recall, imbalance", [cell(m, "imbalance 10:1", "minority_recall") for m in METHODS]))
    _study.bar_panels(path, list(METHODS), panels, f"digits MLP, {args.seeds} seeds, {args.epochs} epochs")
    lyu_path = os.path.join(args.out, "study_lyu_synthetic.png")
    lyu_plot(lyu_path, res_b, args.seeds)
    print(f"plots: {path}, {lyu_path}")
    return table_a + "\n\n" + table_b


if __name__ == "__main__":
    main()
