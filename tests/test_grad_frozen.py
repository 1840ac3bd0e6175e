"""A gradient-level step refused because of what is frozen: the error says so (a frozen trunk, not
a wrong shared=), nothing is updated, and a step retried unchanged is refused again, never trained."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from test_grad_machinery import data
from test_grad_trainable import LR, build, flat, freeze

import hapi_autoloss
from hapi_autoloss import AutoWeight


def _twin(shared, rep_grad, fail):
    """Two steps with the trunk trainable around ``fail`` refused tries with the whole trunk frozen:
    the parameters after them (equal to a run without the tries, if the tries changed nothing)."""
    net, _, model = build("mgda", shared, rep_grad=rep_grad)
    hapi_autoloss.attach(model)
    x, t1, t2 = data()
    model.train_batch([x], [t1, t2])
    errors = []
    for _ in range(fail):
        freeze(net.trunk, True)
        before = flat(net.parameters())
        with pytest.raises(ValueError) as info:
            model.train_batch([x], [t1, t2])
        np.testing.assert_array_equal(flat(net.parameters()), before)  # raised before any update
        errors.append(str(info.value))
        freeze(net.trunk, False)
    model.train_batch([x], [t1, t2])
    return flat(net.parameters()), errors


@pytest.mark.parametrize("shared, rep_grad", [(None, False), ("trunk", False), ("trunk", True)])
def test_a_frozen_trunk_is_named_as_frozen_before_any_update(shared, rep_grad):
    after, errors = _twin(shared, rep_grad, fail=2)
    want, _ = _twin(shared, rep_grad, fail=0)
    for error in errors:
        assert "frozen (stop_gradient=True)" in error, error
        assert "no grad op" not in error
        if shared is None:  # frozen parameters found among the network's: maybe the trunk, maybe not
            assert "trunk.0.weight, trunk.0.bias, trunk.2.weight and 1 more are frozen" in error, error
            assert "Fix: if they are the shared trunk, unfreeze them (stop_gradient=False)" in error, error
            continue
        assert error.endswith("Fix: unfreeze them (stop_gradient=False), or use a loss-level method "
                              "(e.g. method='kendall') while the trunk is frozen."), error
        assert "pass shared=" not in error
    np.testing.assert_array_equal(after, want)  # the refused tries left no trace


class Branch(paddle.nn.Layer):
    """A feeds every task; B (after A) feeds tasks 0 and 1; task 2 reads A's output only."""

    def __init__(self):
        super().__init__()
        self.A, self.B = paddle.nn.Linear(3, 4), paddle.nn.Linear(4, 4)
        self.h = paddle.nn.LayerList([paddle.nn.Linear(4, 1) for _ in range(3)])

    def forward(self, x):
        a = paddle.tanh(self.A(x))
        b = paddle.tanh(self.B(a))
        return self.h[0](b), self.h[1](b), self.h[2](a)


def test_a_task_refused_for_reaching_no_shared_parameter_is_refused_again_when_retried():
    x, t1, t2 = data()
    t3 = (x[:, 2:3] * 2).astype("float32")
    paddle.seed(0)
    net = Branch()
    loss = AutoWeight([paddle.nn.MSELoss()] * 3, method="mgda")
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(LR, parameters=net.parameters()), loss)
    hapi_autoloss.attach(model)
    model.train_batch([x], [t1, t2, t3])
    freeze(net.A, True)  # task 2 now reaches only its head: mgda's rule breaks on its zero gradient
    before = flat(net.parameters())
    for _ in range(3):
        with pytest.raises(ValueError, match="Task 'task2' reaches none of the shared parameters"):
            model.train_batch([x], [t1, t2, t3])
        np.testing.assert_array_equal(flat(net.parameters()), before)
