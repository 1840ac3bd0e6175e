"""Smoke test: each study in scripts/ runs end to end with --quick and prints a complete table."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
sys.path.insert(0, SCRIPTS)

import study_hard_examples  # noqa: E402
import study_multitask  # noqa: E402
import study_segmentation  # noqa: E402

NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d+|\d+|nan|inf)(?![\w.])", re.IGNORECASE)

STUDIES = {
    "study_multitask.py": (list(study_multitask.ROWS), ["study_multitask.png"]),
    "study_multitask.py --rows grad": (list(study_multitask.GRAD_ROWS), ["study_multitask_grad.png"]),
    "study_hard_examples.py": (
        list(study_hard_examples.METHODS) + [study_hard_examples.lyu_name(k) for k in study_hard_examples.LYU_K],
        ["study_hard_examples.png", "study_lyu_synthetic.png"],
    ),
    "study_segmentation.py": (
        list(study_segmentation.METHODS),
        ["study_segmentation.png", "study_segmentation_examples.png"],
    ),
}


def table_rows(stdout: str) -> dict[str, list[str]]:
    """First column -> the other cells, for every markdown table row printed."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    return rows


@pytest.mark.parametrize("script", sorted(STUDIES))
def test_study_quick_prints_every_row_with_finite_numbers(script, tmp_path):
    methods, plots = STUDIES[script]
    proc = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, script.split()[0]), *script.split()[1:], "--quick", "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
    for method in methods:
        assert method in rows, f"no table row for {method!r} in:\n{proc.stdout}"
        numbers = [float(x) for cell in rows[method] for x in NUMBER.findall(cell)]
        assert numbers, f"row {method!r} has no numbers: {rows[method]}"
        assert all(math.isfinite(x) for x in numbers), f"row {method!r}: {rows[method]}"
    assert "wall time:" in proc.stdout
    for plot in plots:
        assert (tmp_path / plot).stat().st_size > 1000
