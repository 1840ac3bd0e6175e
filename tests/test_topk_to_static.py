"""TopKLoss inside ``paddle.jit.to_static``'s default mode (SOT): the traced value and
gradient equal the eager ones, on every ranking path; from 2**18 CPU losses on the radix
select's frame runs eagerly inside the trace (it views float bits as ints)."""

from __future__ import annotations

import json
import os

import numpy as np
import paddle
import pytest
from helpers import run_python
from test_select import IGNORE

from hapi_autoloss import TopKLoss

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def ce(**kwargs):
    return paddle.nn.CrossEntropyLoss(reduction="none", **kwargs)


def traced_and_eager(layer, x, y):
    """(value, gradient) of two traced calls (the second reuses the trace) and one eager call."""
    traced = paddle.jit.to_static(lambda a, b: layer(a, b) * 2.0)  # the * 2 stays in the graph
    results = []
    for fn in (traced, traced, lambda a, b: layer(a, b) * 2.0):
        out = fn(x, y)
        out.backward()
        results.append((float(out), x.grad.numpy().copy()))
        x.clear_gradient()
    return results


SMALL = {
    "sample": lambda: TopKLoss(ce(), ratio=0.5),
    "sample, drop": lambda: TopKLoss(ce(), ratio=0.5, drop=0.1),
    "sample, band": lambda: TopKLoss(ce(), band=(1.0, 2.0)),
    "class": lambda: TopKLoss(ce(), ratio=1.0, per="class"),
    "class, drop": lambda: TopKLoss(ce(), ratio=0.8, drop=0.1, per="class"),
    "pixel, ignored": lambda: TopKLoss(ce(axis=1, ignore_index=IGNORE), ratio=0.3, per="pixel", ignore_index=IGNORE),
    "pixel, drop": lambda: TopKLoss(
        ce(axis=1, ignore_index=IGNORE), ratio=0.3, drop=0.05, per="pixel", ignore_index=IGNORE
    ),
    "pixel, threshold": lambda: TopKLoss(
        ce(axis=1, ignore_index=IGNORE), ratio=0.3, per="pixel", ignore_index=IGNORE, threshold=0.3
    ),
}


@pytest.mark.parametrize("case", list(SMALL))
def test_every_ranking_path_traces_to_the_eager_value_and_gradient(case):
    rng = np.random.default_rng(len(case))
    if case.startswith("pixel"):
        x = rng.standard_normal((2, 4, 16, 16))
        lab = rng.integers(0, 4, (2, 1, 16, 16))
        lab[rng.random(lab.shape) < 0.1] = IGNORE
    else:
        x, lab = rng.standard_normal((32, 10)), rng.integers(0, 10, (32, 1))
    x = paddle.to_tensor(x.astype("float32"), stop_gradient=False)
    results = traced_and_eager(SMALL[case](), x, paddle.to_tensor(lab))
    assert np.count_nonzero(results[-1][1]) > 0
    for value, grad in results[:2]:
        assert value == pytest.approx(results[-1][0], rel=1e-6)
        np.testing.assert_allclose(grad, results[-1][1], rtol=1e-5, atol=1e-8)


def test_full_graph_mode_is_refused_with_the_fix():
    layer = TopKLoss(ce(), ratio=0.5)

    def step(x, y):
        return layer(x, y)

    with pytest.raises(RuntimeError, match=r"dynamic graph mode.*Fix: .*without full_graph=True"):
        paddle.jit.to_static(step, full_graph=True)(paddle.randn([8, 4]), paddle.randint(0, 4, [8, 1]))


@pytest.mark.parametrize("drop", [0.0, 0.02])
def test_the_radix_select_runs_eagerly_inside_the_trace(drop):
    """1×4×512×512 = 2**18 pixels: SOT traced into the select and failed there before."""
    proc = run_python(os.path.join(SCRIPTS, "topk_to_static.py"), str(drop))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["values"] == pytest.approx([got["want"]] * 3, rel=1e-5)
    assert got["same_gradient"] == [True, True]
    assert got["pixels_with_gradient"] == got["kept"] > 0  # k − m pixels, as the reference keeps
