"""Choose the defaults of the learned-scale methods (kendall, simple, liebel, imtl_l) by measurement.

Issue 10, step 1 of docs/results.md. Study 1's setup (MultiDigits data, network, Adam, batch,
epochs: scripts/study_multitask.py, reused as is) for each method under four rules:

  A  init = the method's default (s = 0, liebel c = 1), lr_scale 1   (the current default)
  B  init = "auto" (s starts at the first batch's optimum), lr_scale 1
  C  init = the method's default, lr_scale 10 (σ's learning rate = 10 × the network's)
  D  init = "auto", lr_scale 10

Only the VALIDATION pairs are scored: no test number is computed. Per (method, rule) the mean
± std over seeds of the validation norm. error; per rule the "rule score", mean ± std over
seeds of the per-seed average over the four methods. The choice, fixed before any run: the
best rule R* (lowest score) and every rule within one std of it (score − score(R*) ≤ the larger
of the two stds) are tied; among the tied ones, the fewest changes from A wins (A, then B or C
by score, then D).

    python scripts/tune_learned_defaults.py            # 5 seeds, 80 runs, ~20 min on 2 shared cores
    python scripts/tune_learned_defaults.py --quick    # smoke test
"""

from __future__ import annotations

import os
import time

import _study
import numpy as np
import study_multitask as mt

RULES = {"A": ("default", 1.0), "B": ("auto", 1.0), "C": ("default", 10.0), "D": ("auto", 10.0)}
CHANGES = {"A": 0, "B": 1, "C": 1, "D": 2}  # from the current default, for the tie-break


def rule_label(name: str) -> str:
    init, lr_scale = RULES[name]
    return f"{name}: init {init}, lr_scale {lr_scale:g}"


def choose(scores: dict[str, np.ndarray]) -> tuple[str, list[str]]:
    """The chosen rule and the rules tied with the best, from per-seed rule scores (lower is better)."""
    mean = {r: float(v.mean()) for r, v in scores.items()}
    std = {r: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for r, v in scores.items()}
    best = min(scores, key=lambda r: mean[r])
    tied = [r for r in scores if mean[r] - mean[best] <= max(std[r], std[best])]
    return min(tied, key=lambda r: (CHANGES[r], mean[r])), tied


def main(argv: list[str] | None = None) -> str:
    args = _study.resolve(_study.parser(__doc__ or "", mt.EPOCHS).parse_args(argv), mt.EPOCHS, mt.QUICK_EPOCHS)
    _study.header(
        "Tuning the learned-scale defaults on MultiDigits (validation only)",
        args,
        f"study 1's setup: Adam lr {mt.LR}, batch {mt.BATCH}, {args.epochs} epochs, last epoch evaluated on the "
        f"validation pairs {mt.SIZES['quick' if args.quick else 'full'][1]}; rules "
        + "; ".join(rule_label(r) for r in RULES),
    )
    start = time.perf_counter()
    seeds = range(args.seeds)
    jobs = [(m, s, None, args.epochs, args.quick, *RULES[r], False) for s in seeds for m in mt.LEARNED_SCALE
            for r in RULES]  # fmt: skip
    results = _study.run_jobs(mt.job, jobs, args.workers)

    def val(method: str, rule: str) -> np.ndarray:
        init, lr_scale = RULES[rule]
        rs = [r for r in results if r["method"] == method and r["init"] == init and r["lr_scale"] == lr_scale]
        return np.array([r["val"]["norm_error"] for r in sorted(rs, key=lambda r: r["seed"])])

    per_rule = {r: np.mean([val(m, r) for m in mt.LEARNED_SCALE], axis=0) for r in RULES}
    rows = [[m, *(_study.mean_std(val(m, r)) for r in RULES)] for m in mt.LEARNED_SCALE]
    rows.append(["rule score (mean of the 4)", *(_study.mean_std(per_rule[r]) for r in RULES)])
    seconds = {r: np.mean([x["seconds"] for x in results if (x["init"], x["lr_scale"]) == RULES[r]]) for r in RULES}
    rows.append(["s/run", *(f"{seconds[r]:.1f}" for r in RULES)])
    table = _study.markdown_table(["validation norm. error ↓", *(rule_label(r) for r in RULES)], rows)
    print(table)
    print("\nrule score per seed: " + "; ".join(f"{r} " + " ".join(f"{v:.4f}" for v in per_rule[r]) for r in RULES))
    for r in list(RULES)[1:]:  # paired by seed, against the current default
        print(f"{r} beats A (lower rule score) on {int((per_rule[r] < per_rule['A']).sum())}/{args.seeds} seeds")
    chosen, tied = choose(per_rule)
    print(f"\ntied with the best (within one std): {', '.join(tied)}")
    print(f"chosen: {rule_label(chosen)}")
    for m in mt.LEARNED_SCALE:
        for r in RULES:
            init, lr_scale = RULES[r]
            ws = [x["weights"] for x in results if x["method"] == m and (x["init"], x["lr_scale"]) == (init, lr_scale)]
            w = np.mean([list(x.values()) for x in ws], axis=0)
            print(f"final weights {m:<8} rule {r} left/right/sum: " + " / ".join(f"{v:.3g}" for v in w))
    wall = time.perf_counter() - start
    print(f"\nwall time: {wall:.0f} s ({len(jobs)} runs)")

    path = os.path.join(args.out, "tune_learned_defaults.png")
    panels = [(f"{m}: val. norm. error", [list(val(m, r)) for r in RULES]) for m in mt.LEARNED_SCALE]
    panels.append(("rule score (mean of the 4)", [list(per_rule[r]) for r in RULES]))
    _study.bar_panels(path, list(RULES), panels, f"MultiDigits validation, {args.seeds} seeds: rules A-D")
    print(f"plot: {path}")
    return table


if __name__ == "__main__":
    main()
