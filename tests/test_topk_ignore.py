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
def test_the_wrapped_ignore_index_is_used(ratio):
    logits, lab = batch()
    ce = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=255)
    layer = TopKLoss(ce, ratio=ratio, per="pixel")
    assert layer.ignore_index is None and "ignore_index=None (the loss's 255)" in layer.extra_repr()
    losses, valid = ce64(logits, lab)
    kept = np.sort(losses[valid])[::-1][: int(np.ceil(ratio * valid.sum() - 1e-6))]
    out = layer(paddle.to_tensor(logits), paddle.to_tensor(lab.astype("int64")))
    np.testing.assert_allclose(float(out), kept.mean(), rtol=1e-5)
    if ratio == 1.0:  # the plain mean over the valid pixels, as Paddle's own reduction gives it
        plain = paddle.nn.functional.cross_entropy(paddle.to_tensor(logits), paddle.to_tensor(lab.astype("int64")),
                                                   axis=1, ignore_index=255)
        np.testing.assert_allclose(float(out), float(plain), rtol=1e-5)


def test_nll_loss_keeps_its_ignore_index_in_a_private_attribute():
    rng = np.random.default_rng(1)
    logp = np.log(rng.dirichlet(np.ones(3), size=8)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    layer = TopKLoss(paddle.nn.NLLLoss(ignore_index=0, reduction="none"), ratio=1.0)
    out = layer(paddle.to_tensor(logp), paddle.to_tensor(y))
    want = -logp[np.arange(8), y][y != 0].astype(np.float64).mean()
    np.testing.assert_allclose(float(out), want, rtol=1e-6)


def test_paddles_default_is_not_used_and_any_value_of_ours_wins():
    ce = paddle.nn.CrossEntropyLoss(reduction="none")  # ignore_index=-100: it ignores nothing
    assert TopKLoss(ce)._loss_ignores is None
    logits, lab = batch(seed=2, ignored=0.0)
    ce255 = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=255)
    ours = TopKLoss(ce255, ratio=1.0, per="pixel", ignore_index=0)  # class 0 left out of the ranking only
    losses, _ = ce64(logits, lab)
    out = ours(paddle.to_tensor(logits), paddle.to_tensor(lab.astype("int64")))
    np.testing.assert_allclose(float(out), losses[lab != 0].mean(), rtol=1e-5)


class SequenceLoss(paddle.nn.Layer):
    """A loss with an ignore_index that masks its padding itself and returns one loss per sample."""

    def __init__(self):
        super().__init__()
        self.ignore_index = 0

    def forward(self, logits, tokens):
        each = paddle.nn.functional.cross_entropy(logits, tokens.unsqueeze(-1), reduction="none").squeeze(-1)
        mask = (tokens != 0).astype("float32")
        return (each * mask).sum(axis=1) / mask.sum(axis=1).clip(min=1.0)


def test_a_loss_that_reduces_per_sample_itself_is_left_alone():
    """Its label [N, T] holds more entries than its loss [N]: its ignore_index is not TopKLoss's business."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 5, 6)).astype("float32")
    tokens = rng.integers(1, 6, (4, 5))
    tokens[:, 3:] = 0
    per_sample = SequenceLoss()(paddle.to_tensor(logits), paddle.to_tensor(tokens)).numpy().astype(np.float64)
    out = TopKLoss(SequenceLoss(), ratio=0.5)(paddle.to_tensor(logits), paddle.to_tensor(tokens))
    np.testing.assert_allclose(float(out), np.sort(per_sample)[::-1][:2].mean(), rtol=1e-6)


def test_a_reduced_loss_without_a_reduction_argument_gets_a_fix_it_can_follow():
    """TopKLoss(DiceLoss()) was told to build DiceLoss with reduction='none', which DiceLoss does not take."""
    from hapi_autoloss import DiceLoss

    logits, lab = batch(ignored=0.0)
    with pytest.raises(ValueError, match=r"already reduced.*Fix: it takes no reduction='none': wrap a "
                                         r"function that returns one loss per sample"):
        TopKLoss(DiceLoss(), per="sample")(paddle.to_tensor(logits), paddle.to_tensor(lab.astype("int64")))
    with pytest.raises(ValueError, match=r"already reduced.*Fix: build it with reduction='none'"):
        TopKLoss(paddle.nn.CrossEntropyLoss(axis=1))(paddle.to_tensor(logits), paddle.to_tensor(lab.astype("int64")))


def test_a_reducing_function_is_told_to_take_reduction_none_and_a_layer_that_reduces_anyway_is_told_so():
    import functools

    logits, lab = batch(ignored=0.0)
    x, y = paddle.to_tensor(logits), paddle.to_tensor(lab.astype("int64"))
    ce = paddle.nn.functional.cross_entropy
    for fn in (functools.partial(ce, axis=1), functools.partial(ce, axis=1, reduction="mean")):
        with pytest.raises(ValueError, match=r"Fix: call it with reduction='none', e.g. TopKLoss\(functools.partial"):
            TopKLoss(fn)(x, y)
    fixed = TopKLoss(functools.partial(ce, axis=1, reduction="none"), per="pixel", ratio=1.0)(x, y)  # the fix works
    np.testing.assert_allclose(float(fixed), ce64(logits, lab)[0].mean(), rtol=1e-5)

    class Stubborn(paddle.nn.Layer):
        reduction = "none"

        def forward(self, out, lab):
            return ce(out, lab, axis=1)

    with pytest.raises(ValueError, match=r"Fix: it reduces although built with reduction='none'"):
        TopKLoss(Stubborn())(x, y)
