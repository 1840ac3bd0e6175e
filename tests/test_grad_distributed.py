"""Gradient-level methods under a real 2-process ``paddle.distributed.launch``: two ranks on half
batches make the same update as one process on the whole batch (what LibMTL does not offer)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import ROOT, launch_two_ranks, run_python

SCRIPT = os.path.join(ROOT, "tests", "scripts", "dist_grad.py")


def run(tmp_path, method, mode):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    proc = run_python(SCRIPT, str(one), method, mode, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, logs = launch_two_ranks(SCRIPT, str(two), method, mode, log_dir=tmp_path / "log", cwd=tmp_path)
    assert proc.returncode == 0, logs[-4000:]
    return np.load(one / "rank0.npz"), [np.load(two / f"rank{r}.npz") for r in (0, 1)]


@pytest.mark.distributed
@pytest.mark.parametrize("method, mode", [
    ("unit_norm_test", "params"), ("unit_norm_test", "rep"),  # a Gram rule, in both modes
    ("mgda", "rep"), ("pcgrad", "params"),  # pcgrad: one random order on every rank
    ("imtl", "params"), ("gradnorm", "params"),  # learned parameters, from the averaged losses
    ("db_mtl", "params"),  # a gradient history, on the averaged gradients
])
def test_two_ranks_on_half_batches_equal_one_process_on_the_whole(tmp_path, method, mode):
    whole, ranks = run(tmp_path, method, mode)
    for key in whole.files:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)  # one model on every rank
        np.testing.assert_allclose(ranks[0][key], whole[key], rtol=2e-6, atol=1e-7, err_msg=key)
    if method == "unit_norm_test":  # far from uniform: averaging before combining is what makes them agree
        assert np.ptp(whole["used"][0]) > 0.5 * whole["used"][0].max()
