"""AutoWeight's methods imtl_l, gls, rlw and dwa against float64 numpy references
(kendall, simple, liebel, fixed and equal: test_weighting.py)."""

import numpy as np
import paddle
from helpers import feed_losses, identity

from hapi_autoloss import AutoWeight
from hapi_autoloss.weighting.gls import GLS_FLOOR

L = np.array([0.7, 2.5, 0.05])


def test_imtl_l_value_and_gradients():
    s = np.array([0.4, -0.8, 1.5])
    aw = AutoWeight([identity] * 3, method="imtl_l")
    aw.s.set_value(s.astype("float32"))
    total, dl = feed_losses(aw, L)
    np.testing.assert_allclose(float(total), (np.exp(s) * L - s).sum(), rtol=1e-6)
    np.testing.assert_allclose(dl, np.exp(s), rtol=1e-6)
    np.testing.assert_allclose(aw.s.grad.numpy(), np.exp(s) * L - 1.0, rtol=1e-5)
    np.testing.assert_allclose(list(aw.weights().values()), np.exp(s), rtol=1e-6)
    np.testing.assert_allclose(list(aw.sigmas().values()), np.exp(-s / 2), rtol=1e-6)


def test_gls_is_the_geometric_mean_with_its_gradient():
    aw = AutoWeight([identity] * 3, method="gls")
    total, dl = feed_losses(aw, L)
    geo = np.exp(np.log(L).mean())
    np.testing.assert_allclose(float(total), geo, rtol=1e-6)
    np.testing.assert_allclose(dl, geo / (3 * L), rtol=1e-5)
    np.testing.assert_allclose(list(aw.weights().values()), geo / (3 * L), rtol=1e-5)
    # A loss at 0 is floored at GLS_FLOOR: the total is finite and that task gets no gradient
    # (the clip passes none below its floor); the others get total / (n·L_i).
    zero, dz = feed_losses(aw, [0.0, 1.0, 1.0])
    floored = GLS_FLOOR ** (1 / 3)
    np.testing.assert_allclose(float(zero), floored, rtol=1e-6)
    np.testing.assert_allclose(dz, [0.0, floored / 3, floored / 3], rtol=1e-6, atol=0)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_rlw_draws_softmax_of_normal_weights_from_its_own_seed():
    aw = AutoWeight([identity] * 3, method="rlw", seed=123)
    rng = np.random.default_rng(123)
    for _ in range(3):
        w = softmax(rng.standard_normal(3))
        total, dl = feed_losses(aw, L)
        np.testing.assert_allclose(float(total), (w * L).sum(), rtol=1e-6)
        np.testing.assert_allclose(dl, w, rtol=1e-6)
        np.testing.assert_allclose(list(aw.weights().values()), w, rtol=1e-12)
    with paddle.no_grad():
        total, _ = feed_losses(aw, L, grad=False)
    np.testing.assert_allclose(float(total), L.mean(), rtol=1e-6)
    # seeding is the generator's own: paddle's random stream is untouched
    paddle.seed(5)
    a = paddle.rand([2]).numpy()
    paddle.seed(5)
    feed_losses(AutoWeight([identity] * 3, method="rlw", seed=1), L)
    np.testing.assert_array_equal(paddle.rand([2]).numpy(), a)


def test_dwa_uses_the_last_two_epoch_averages_with_temperature_two():
    aw = AutoWeight([identity] * 3, method="dwa")
    epochs = [
        [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]],  # average (2, 2, 2)
        [[1.0, 3.0, 1.0], [1.0, 1.0, 1.0]],  # average (1, 2, 1)
        [[0.5, 2.0, 1.5], [0.5, 2.0, 0.5]],  # average (0.5, 2, 1)
    ]
    averages = []
    for e, batches in enumerate(epochs):
        for values in batches:
            total, dl = feed_losses(aw, values)
            if e < 2:  # the first two epochs train with weight 1
                np.testing.assert_allclose(dl, [1, 1, 1])
        averages.append(np.mean(batches, axis=0))
        aw.end_epoch()
    expected = 3 * softmax((averages[2] / averages[1]) / 2.0)
    np.testing.assert_allclose(list(aw.weights().values()), expected, rtol=1e-6)
    total, dl = feed_losses(aw, L)
    np.testing.assert_allclose(dl, expected, rtol=1e-6)
    np.testing.assert_allclose(float(total), (expected * L).sum(), rtol=1e-6)
    # evaluation forwards (no grad) do not count in the epoch average
    with paddle.no_grad():
        feed_losses(aw, [100.0, 100.0, 100.0], grad=False)
    aw.end_epoch()
    np.testing.assert_allclose(aw.weighting.dwa_history.numpy()[1], L, rtol=1e-6)


def test_dwa_state_is_part_of_the_state_dict():
    aw = AutoWeight([identity] * 2, method="dwa")
    for values in ([1.0, 2.0], [2.0, 1.0], [1.0, 1.0]):
        feed_losses(aw, values)
        aw.end_epoch()
    other = AutoWeight([identity] * 2, method="dwa")
    other.set_state_dict(aw.state_dict())
    # epoch averages (2, 1) then (1, 1): the next epoch's weights are 2·softmax((½, 1) / 2), not the initial 1s
    np.testing.assert_allclose(list(aw.weights().values()), 2 * softmax(np.array([0.5, 1.0]) / 2.0), rtol=1e-6)
    assert other.weights() == aw.weights()
    assert int(other.weighting.epochs_seen) == 3
