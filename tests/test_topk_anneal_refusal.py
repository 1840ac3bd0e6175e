"""A TopKLoss whose rule has no ratio to change (``anneal_refusal``, set by a subclass) is refused by
TopKScheduler and TopKOnPlateau before any step, with the loss's own text, nested in AutoWeight too."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from hapi_autoloss import AutoWeight, TopKLoss
from hapi_autoloss.callbacks import TopKOnPlateau, TopKScheduler


class FixedRule(TopKLoss):
    """A subclass whose rule owns k: the callbacks must not read its class name, only the attribute."""

    @property
    def anneal_refusal(self):
        return "this rule keeps k itself. Fix: give ratio=, or drop the callback."


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, (n, 1)).astype("int64")
    x = (rng.standard_normal((n, 4)) + y).astype("float32")
    return paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])


def build(loss):
    paddle.seed(0)
    net = paddle.nn.Linear(4, 3)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.Adam(0.05, parameters=net.parameters()), loss)
    return model


@pytest.mark.parametrize("callback,verb", [(lambda: TopKScheduler(1.0, 0.5), "anneal"),
                                           (lambda: TopKOnPlateau(monitor="acc", patience=0), "reduce")])
@pytest.mark.parametrize("nested", [False, True])
def test_a_loss_that_refuses_annealing_is_refused_before_any_step(callback, verb, nested):
    layer = FixedRule(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=0.3)
    nest = {"a": layer, "b": paddle.nn.CrossEntropyLoss()}
    loss = AutoWeight(nest, method="fixed", weights=[1.0, 1.0]) if nested else layer
    model = build(loss)
    before = [p.numpy().copy() for p in model.parameters()]
    match = rf"cannot {verb} a TopKLoss's ratio: this rule keeps k itself. Fix: give ratio="
    with pytest.raises(ValueError, match=match):
        model.fit(data(), data(16, 1), epochs=2, batch_size=8, verbose=0, callbacks=[callback()])
    assert layer.ratio == 0.3
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)


def test_a_plain_topk_loss_may_be_annealed():
    layer = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=1.0)
    assert layer.anneal_refusal is None
    build(layer).fit(data(), epochs=2, batch_size=8, verbose=0, callbacks=[TopKScheduler(1.0, 0.5)])
    assert layer.ratio == 0.5
