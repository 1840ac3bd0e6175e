"""nash_mtl's α against a float64 reference of the paper's and the official rule,
α_i·(G·Gᵀ·α)_i = 1 on the raw Gram matrix (Navon et al. 2022, eq. 3; nash-mtl
weight_methods.py keeps the normalisation factor in its constraint), at gradient scales
1e-3..1e3, and through hapi's train_batch with the losses multiplied by s."""

import numpy as np
import paddle
import pytest
from helpers import TrunkNet
from scipy.optimize import root

import hapi_autoloss
from hapi_autoloss import AutoWeight
from hapi_autoloss.weighting import METHODS
from hapi_autoloss.weighting.nash_mtl import nash_alpha

RNG = np.random.default_rng(3)
G3 = RNG.normal(size=(3, 20)) * np.array([[0.1], [1.0], [30.0]])  # three scales, conflicting


def reference(gram):
    """α > 0 with α_i·(gram·α)_i = 1, by scipy's root finder on log α (float64)."""
    sol = root(lambda u: np.exp(u) * (gram @ np.exp(u)) - 1.0, -0.5 * np.log(np.diag(gram)), tol=1e-13)
    alpha = np.exp(sol.x)
    assert np.abs(alpha * (gram @ alpha) - 1.0).max() < 1e-12
    return alpha


@pytest.mark.parametrize("s", [1e-3, 1.0, 1e3])
def test_raw_gram_rule_at_every_scale(s):
    g = G3 * s
    gram = g @ g.T
    alpha = nash_alpha(gram)
    np.testing.assert_allclose(alpha, reference(gram), rtol=1e-9)
    np.testing.assert_allclose(alpha * s, nash_alpha(G3 @ G3.T), rtol=1e-9)  # α(s·G) = α(G)/s
    np.testing.assert_allclose(np.linalg.norm(alpha @ g), np.sqrt(3), rtol=1e-9)  # ‖g‖ = √k
    m = METHODS["nash_mtl"](max_norm=0.0)
    m.bind(["a", "b", "c"], [None] * 3)
    np.testing.assert_allclose(m.alphas(gram, np.ones(3)), alpha, rtol=1e-12)


def test_zero_gradient_task_keeps_its_last_alpha():
    g = np.vstack([G3[:2], np.zeros((1, 20))])
    m = METHODS["nash_mtl"](max_norm=0.0)
    m.bind(["a", "b", "c"], [None] * 3)
    first = m.alphas(G3 @ G3.T, np.ones(3))
    alpha = m.alphas(g @ g.T, np.ones(3))  # task c's gradient is 0: α_c would be infinite
    np.testing.assert_allclose(alpha[:2], reference(g[:2] @ g[:2].T), rtol=1e-9)
    assert alpha[2] == first[2]
    np.testing.assert_array_equal(nash_alpha(np.zeros((2, 2))), [1.0, 1.0])  # no gradient at all
    opposite = np.array([[1.0, 2.0], [-2.0, -4.0]])
    np.testing.assert_array_equal(nash_alpha(opposite @ opposite.T, np.array([0.5, 2.0])), [0.5, 2.0])


class Scaled(paddle.nn.Layer):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, out, y):
        return self.s * paddle.nn.functional.mse_loss(out, y)


def one_step(s, max_norm):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y1 = (x @ rng.normal(size=(4, 1))).astype("float32")
    y2 = (3 * np.sin(x[:, :1])).astype("float32")
    paddle.seed(0)
    net = TrunkNet()
    loss = AutoWeight([Scaled(s), Scaled(s)], method="nash_mtl", max_norm=max_norm)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(1.0, parameters=net.parameters()), loss)
    hapi_autoloss.attach(model)
    model.train_batch([x], [y1, y2], update=False)
    return {n: p.grad.numpy().astype(np.float64) for n, p in net.named_parameters()}


@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_train_batch_update_is_the_same_at_every_loss_scale(max_norm):
    base = one_step(1.0, max_norm)
    trunk = np.sqrt(sum((v**2).sum() for n, v in base.items() if n.startswith("trunk")))
    np.testing.assert_allclose(trunk, np.sqrt(2) if max_norm == 0 else 1.0, rtol=1e-5)
    for s in (1e-3, 1e3):
        grads = one_step(s, max_norm)
        for name, value in base.items():  # trunk and heads: α_i·s·∇L_i with α_i ∝ 1/s
            np.testing.assert_allclose(grads[name], value, rtol=2e-4, atol=1e-6, err_msg=name)
