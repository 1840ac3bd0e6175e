"""CAGrad's inner problem when the task gradients differ by 1e3 in norm: the combined gradient
against a float64 reference (the edge w_3 = 0, where the optimum lies, solved by brentq on the
analytic derivative, and the KKT sign of the left-out task checked)."""

import numpy as np
import pytest
from scipy.optimize import brentq

from hapi_autoloss.weighting.cagrad import CAGrad

RNG = np.random.default_rng(0)
A, B, C3 = RNG.normal(size=(3, 7))
G = np.stack([1e-3 * A, B, 1e3 * C3])  # the script of the review: scales 1e-3, 1, 1e3


def reference(c):
    g0 = G.mean(axis=0)
    cn = c * np.linalg.norm(g0)
    v = G @ g0

    def slope(w, direction):  # d/dt f(w + t·direction), f(w) = vᵀw + cn‖Σ w_i g_i‖
        gw = w @ G
        return v @ direction + cn * (gw @ (direction @ G)) / np.linalg.norm(gw)

    edge = np.array([1.0, -1.0, 0.0])
    t = brentq(lambda t: slope(np.array([t, 1 - t, 0.0]), edge), 0.9, 1.0, xtol=1e-16, rtol=1e-15)
    w = np.array([t, 1 - t, 0.0])
    assert slope(w, np.array([0.0, -1.0, 1.0])) > 0  # moving weight to task 3 only costs: optimal
    gw = w @ G
    return 3 * (g0 + cn * gw / np.linalg.norm(gw))


@pytest.mark.parametrize("c", [0.4, 0.5])
def test_combined_gradient_at_mixed_scales(c):
    m = CAGrad(c, rescale=0)
    m.bind(["a", "b", "c"], [None] * 3)
    ref = reference(c)
    got = m.alphas(G @ G.T, np.ones(3)) @ G
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-9  # was 8e-5 and 1e-4
