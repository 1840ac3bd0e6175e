"""Real 2-process `paddle.distributed.launch` runs (CPU, gloo): a negative task loss on one rank only
is refused on every rank with the same kind of ValueError, nothing updated and nothing left waiting."""

import json
import os
import re

import numpy as np
import pytest
from helpers import launch_two_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "dist_negative.py")
ANOTHER = "A task loss < 0 on another rank at epoch 0, step 1, but method="


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_negative")
    proc, logs = launch_two_ranks(SCRIPT, str(out), log_dir=out / "log", cwd=out, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.distributed
@pytest.mark.parametrize("case", ["gls/raise", "liebel/skip", "db_mtl/raise"])
def test_every_rank_raises_the_value_error(ranks, case):
    here, other = ranks[1][case], ranks[0][case]
    method = case.split("/")[0]
    assert here["error"] == other["error"] == "ValueError"
    assert here["message"].startswith("Task 'y1' has loss ") and "at epoch 0, step 1" in here["message"]
    value = float(re.search(r"has loss (\S+) < 0", here["message"]).group(1))
    np.testing.assert_allclose(value, here["value"], rtol=1e-5)  # float64 mse − 100 of that batch
    assert value < -50
    assert other["message"].startswith(f"{ANOTHER}{method!r}")
    for msg in (here["message"], other["message"]):
        assert "it needs every task loss >= 0" in msg and "on_nonfinite" not in msg
    assert here["unchanged"] and other["unchanged"]  # step 1 updated nothing, on either rank


@pytest.mark.distributed
def test_amp_gradient_level_refuses_on_every_rank_and_hands_out_no_inf(ranks):
    here, other = ranks[1]["amp"], ranks[0]["amp"]
    for r in (here, other):
        assert np.isnan(r["total"]) and r["grads_finite"] and r["cause"][0] == "negative"
    assert re.fullmatch(r"task 'y1' has loss -\d+\.\d+ < 0", here["cause"][1])
    assert other["cause"][1] == other["negative"] == "a task loss < 0 on another rank"
