"""TopKLoss takes the wrapped loss's ignore_index: without it the ignored pixels counted in n as zero
losses, and ratio=1.0 was half the plain mean with half the pixels ignored."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from hapi_autoloss import TopKLoss


def batch(seed=0, ignored=0.5):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((2, 3, 8, 8)).astype("float32")
    lab = rng.integers(0, 3, (2, 8, 8))
    lab[rng.random(lab.shape) < ignored] = 255
    return logits, lab


def ce64(logits, lab):
    """Per-pixel cross-entropy in float64 and the valid mask."""
    z = logits.astype(np.float64)
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    valid = lab != 255
    return -np.take_along_axis(logp, np.where(valid, lab, 0)[:, None], axis=1)[:, 0], valid


@pytest.mark.parametrize("ratio", [1.0, 0.3])
def test_the_wrapped_ignore_index_is_taken(ratio):
    logits, lab = batch()
    ce = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=255)
    layer = TopKLoss(ce, ratio=ratio, per="pixel")
    assert layer.ignore_index == 255
    losses, valid = ce64(logits, lab)
    kept = np.sort(losses[valid])[::-1][: int(np.ceil(ratio * valid.sum() - 1e-6))]
    out = layer(paddle.to_tensor(logits), paddle.to_tensor(lab.astype("int64")))
    np.testing.assert_allclose(float(out), kept.mean(), rtol=1e-5)
    if ratio == 1.0:  # the plain mean over the valid pixels, as Paddle's own reduction gives it
        plain = paddle.nn.functional.cross_entropy(paddle.to_tensor(logits), paddle.to_tensor(lab.astype("int64")),
                                                   axis=1, ignore_index=255)
        np.testing.assert_allclose(float(out), float(plain), rtol=1e-5)


def test_paddles_default_is_not_taken_and_leaves_any_value_free():
    ce = paddle.nn.CrossEntropyLoss(reduction="none")  # ignore_index=-100: it ignores nothing
    assert TopKLoss(ce).ignore_index is None
    assert TopKLoss(ce, ignore_index=0).ignore_index == 0  # a class left out of the ranking only
    assert TopKLoss(lambda x, y: x, ignore_index=3).ignore_index == 3  # a function has none


def test_another_value_than_the_wrapped_one_is_refused():
    ce = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=255)
    with pytest.raises(ValueError, match=r"TopKLoss ignores label 0, but the wrapped CrossEntropyLoss ignores 255: "
                                         r"it gives label 255 a 0 that TopKLoss would count as a loss\. Fix: "
                                         r"the same value in both"):
        TopKLoss(ce, ignore_index=0)
    assert TopKLoss(ce, ignore_index=255).ignore_index == 255
