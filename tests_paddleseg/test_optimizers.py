"""``attach`` under every Paddle optimizer, flat and grouped, with decay and clipping: PaddleSeg's own
``train`` makes exactly the updates of a hand-written loop that steps the network under the plain
optimizer and σ under a second instance of the same class with no decay and no clip."""

import numpy as np
import paddle
import pytest
from seg_helpers import SegData, TinyNet, hand_loop, train

import hapi_autoloss.paddleseg as hp

FAMILY = ["SGD", "Momentum", "Adam", "AdamW", "Adamax", "Adagrad", "Adadelta", "RMSProp", "Lamb"]
LR, ITERS, BATCH = 0.05, 4, 4


def decay_of(name, amount):
    return {"lamb_weight_decay": amount} if name == "Lamb" else {"weight_decay": amount}


def layout(model, name, grouped):
    """The user's parameters: a flat list, or the first conv at half lr with its own decay."""
    if not grouped:
        return model.parameters()
    return [{"params": model.c1.parameters(), "learning_rate": 0.5, **decay_of(name, 0.1)},
            {"params": model.c2.parameters()}]


def optimizer(name, params, sigma=False):
    kwargs = {} if sigma else {**decay_of(name, 0.3), "grad_clip": paddle.nn.ClipGradByGlobalNorm(0.05)}
    if sigma and name in ("AdamW", "Lamb"):
        kwargs = decay_of(name, 0.0)  # their default decay is not 0
    return getattr(paddle.optimizer, name)(learning_rate=LR, parameters=params, **kwargs)


def build():
    paddle.seed(0)
    model = TinyNet()
    aw = hp.AutoWeight([{"type": "SafeCrossEntropyLoss"}, {"type": "SafeDiceLoss"}], method="liebel")
    return model, aw


def reference(name, grouped, data):
    model, aw = build()
    net_opt, sigma_opt = optimizer(name, layout(model, name, grouped)), optimizer(name, aw.parameters(), sigma=True)
    return hand_loop(model, aw, data, [net_opt, sigma_opt], ITERS, BATCH)


@pytest.mark.parametrize("grouped", [False, True], ids=["flat", "groups"])
@pytest.mark.parametrize("name", FAMILY)
def test_paddleseg_train_follows_the_reference_loop(tmp_path, name, grouped):
    data = SegData()
    with paddle.utils.unique_name.guard():
        model, aw = build()
        opt = optimizer(name, layout(model, name, grouped))
        losses = {"types": [aw], "coef": [1]}
        hp.attach(model, losses, opt)
        train(model, losses, opt, data, tmp_path, iters=ITERS, batch_size=BATCH)
    with paddle.utils.unique_name.guard():
        ref_model, ref_aw = reference(name, grouped, data)
    assert np.abs(aw.s.numpy() - 1.0).max() > 1e-4, f"σ did not move under {name}"
    np.testing.assert_allclose(aw.s.numpy(), ref_aw.s.numpy(), rtol=1e-5, atol=1e-7)
    for got, want in zip(model.parameters()[:4], ref_model.parameters()):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)
