"""TopKLoss(per="class"): each class's mean loss ranked, against a float64 numpy reference."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest
from helpers import forbid_host_reads, identity
from test_aorr import run  # forward + backward: (value, float64 gradient)
from test_topk import distinct

from hapi_autoloss import TopKLoss
from hapi_autoloss.callbacks import TopKScheduler

IGNORE = 255


def reference(loss, label, ratio, drop=0.0, classes=5, ignore_index=None, min_kept=1):
    """(value, d value / d loss) in float64, written independently of TopKLoss: the class
    means of the valid elements, ranks m+1..k of the present classes averaged."""
    loss, label = np.asarray(loss, np.float64).reshape(-1), np.asarray(label).reshape(-1)
    valid = np.ones(loss.shape, bool) if ignore_index is None else label != ignore_index
    present = [c for c in range(classes) if np.any(valid & (label == c))]
    means = {c: loss[valid & (label == c)].mean() for c in present}
    n = len(present)
    grad = np.zeros(loss.shape)
    if n == 0:
        return 0.0, grad
    k = min(max(math.ceil(ratio * n - 1e-6), min_kept), n)
    m = max(min(math.floor(drop * n + 1e-6), k - min(min_kept, k)), 0)
    order = sorted(present, key=lambda c: -means[c])
    kept = order[m:k]
    for c in kept:
        members = valid & (label == c)
        grad[members] = 1.0 / (len(kept) * members.sum())
    return float(np.mean([means[c] for c in kept])), grad


def class_labels(n, seed, classes=5, ignored=0.2, absent=()):
    """Labels with ~10:1 imbalance between class 0 and the rest, some ignored, some classes absent."""
    rng = np.random.default_rng(seed)
    p = np.array([10.0] + [1.0] * (classes - 1))
    p[list(absent)] = 0.0
    label = rng.choice(classes, size=n, p=p / p.sum())
    label[rng.random(n) < ignored] = IGNORE
    return label.astype("int64")


@pytest.mark.parametrize("ratio, drop", [(1.0, 0.0), (0.5, 0.0), (0.34, 0.0), (1.0, 0.25), (0.75, 0.25)])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("absent", [(), (3,)])
def test_value_and_gradient_match_the_class_means_reference(ratio, drop, ignore, absent):
    loss = distinct([120], 7)
    label = class_labels(120, 3, ignored=0.2 if ignore else 0.0, absent=absent)
    layer = TopKLoss(identity, ratio=ratio, drop=drop, per="class", num_classes=5,
                     ignore_index=IGNORE if ignore else None)  # fmt: skip
    value, grad = run(layer, loss, label)
    want, want_grad = reference(loss, label, ratio, drop, ignore_index=IGNORE if ignore else None)
    assert value == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-9)
    assert grad.sum() == pytest.approx(1.0, rel=1e-5)  # the kept classes' weights add up to one


def test_class_balanced_mean_weighs_every_present_class_the_same():
    """ratio=1: 100 elements of class 0 and 2 of class 1 weigh 1/2 each as classes."""
    loss = np.concatenate([np.full(100, 0.1), [3.0, 5.0]])
    label = np.array([0] * 100 + [1, 1])
    value, grad = run(TopKLoss(identity, ratio=1.0, per="class", num_classes=4), loss, label)
    assert value == pytest.approx((0.1 + 4.0) / 2, rel=1e-6)
    np.testing.assert_allclose(grad, [0.5 / 100] * 100 + [0.25, 0.25], rtol=1e-6)
    plain_mean = loss.mean()
    assert value > 10 * plain_mean  # the rare class is not drowned


def test_segmentation_logits_infer_classes_from_axis_1_and_match_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 5, 6))
    label = rng.integers(0, 3, (2, 5, 6))  # class 3 never appears
    label[0, :2] = IGNORE
    ce = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=IGNORE)
    layer = TopKLoss(ce, ratio=0.5, per="class", ignore_index=IGNORE)
    value, grad = run(layer, logits, label)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    safe = np.where(label == IGNORE, 0, label)
    per_pixel = -np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    want, weight = reference(per_pixel, label, 0.5, classes=4, ignore_index=IGNORE)
    assert value == pytest.approx(want, rel=1e-5)
    # d/d logits = weight · (softmax − onehot), per pixel
    onehot = np.moveaxis(np.eye(4)[safe], -1, 1)
    want_grad = weight.reshape(label.shape)[:, None] * (np.exp(logp) - onehot)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)


def test_nothing_valid_gives_zero_and_an_ignored_nan_does_not_leak():
    loss = np.array([np.nan, 1.0, 2.0])
    label = np.array([IGNORE, IGNORE, IGNORE])
    value, grad = run(TopKLoss(identity, ratio=0.5, per="class", num_classes=3, ignore_index=IGNORE), loss, label)
    assert value == 0.0 and not np.any(grad)
    label = np.array([IGNORE, 0, 1])
    value, grad = run(TopKLoss(identity, ratio=1.0, per="class", num_classes=3, ignore_index=IGNORE), loss, label)
    assert value == pytest.approx(1.5) and np.isfinite(grad).all() and grad[0] == 0.0


def test_forward_never_reads_a_tensor_on_the_host(monkeypatch):
    loss = paddle.to_tensor(distinct([64], 1).astype("float32"), stop_gradient=False)
    label = paddle.to_tensor(class_labels(64, 2, absent=(2,)))
    layer = TopKLoss(identity, ratio=0.5, drop=0.2, per="class", num_classes=5, ignore_index=IGNORE)
    forbid_host_reads(monkeypatch)
    value = layer(loss, label)
    value.backward()
    monkeypatch.undo()
    want, want_grad = reference(loss.numpy(), label.numpy(), 0.5, 0.2, ignore_index=IGNORE)
    assert float(value) == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(loss.grad.numpy(), want_grad, rtol=1e-5, atol=1e-9)
    # The class-balanced mean and the band rule on classes: forward and backward without a read too.
    for other in (TopKLoss(identity, ratio=1.0, per="class", num_classes=5, ignore_index=IGNORE),
                  TopKLoss(identity, band=(1.0, 2.0), per="class", num_classes=5, ignore_index=IGNORE)):
        loss.clear_gradient()
        forbid_host_reads(monkeypatch)
        other(loss, label).backward()
        monkeypatch.undo()
        assert np.count_nonzero(loss.grad.numpy()) > 0


def test_bad_arguments_say_how_to_fix_them():
    with pytest.raises(ValueError, match=r"num_classes=3 only applies to per='class'.*Fix"):
        TopKLoss(identity, per="sample", num_classes=3)
    # The misplaced num_classes is checked last: a wrong value of another argument is named first.
    with pytest.raises(TypeError, match=r"ignore_index must be an int"):
        TopKLoss(identity, per="pixel", num_classes=3, ignore_index=1.5)
    with pytest.raises(ValueError, match=r"band=\(1.0, 2.0\) chooses the kept losses itself"):
        TopKLoss(identity, per="sample", num_classes=3, band=(1.0, 2.0), ratio=0.5)
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 1.*Fix"):
        TopKLoss(identity, per="class", num_classes=0)
    layer = TopKLoss(identity, per="class")
    with pytest.raises(ValueError, match=r"axis 1.*Fix: TopKLoss\(\.\.\., per='class', num_classes=C\)"):
        layer(paddle.ones([4]), paddle.zeros([4], dtype="int64"))
    bce = TopKLoss(paddle.nn.BCEWithLogitsLoss(reduction="none"), per="class")
    with pytest.raises(ValueError, match=r"shape \[4, 1\].*num_classes=C\), e.g. 2 for a binary logit"):
        bce(paddle.ones([4, 1]), paddle.zeros([4, 1]))
    with pytest.raises(ValueError, match=r"last argument.*Fix"):
        TopKLoss(lambda x: x, per="class", num_classes=2)(paddle.ones([4]))
    with pytest.raises(ValueError, match=r"one label per loss element.*Fix"):
        layer(paddle.ones([4, 3]), paddle.zeros([4], dtype="int64"))


def test_in_fit_it_trains_exactly_like_cross_entropy_weighted_by_inverse_class_counts():
    """Through paddle.Model.fit, full batches of a 20:1 problem: the class-balanced mean is
    paddle's CrossEntropyLoss(weight=1/count), step for step; the plain mean differs."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.0, 1.0, (400, 2)), rng.normal(1.5, 1.0, (20, 2))]).astype("float32")
    y = np.array([0] * 400 + [1] * 20, dtype="int64")[:, None]
    data = paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])
    test = paddle.to_tensor(rng.normal(1.5, 1.0, (500, 2)).astype("float32"))

    def train(loss, callbacks=()):
        paddle.seed(0)
        net = paddle.nn.Linear(2, 2)
        model = paddle.Model(net)
        model.prepare(paddle.optimizer.Adam(0.05, parameters=net.parameters()), loss)
        model.fit(data, epochs=40, batch_size=420, shuffle=False, verbose=0, callbacks=list(callbacks))
        recall = float((net(test).argmax(1) == 1).astype("float32").mean())
        return np.concatenate([net.weight.numpy().ravel(), net.bias.numpy()]), recall

    ce = paddle.nn.CrossEntropyLoss(reduction="none")
    balanced, balanced_recall = train(TopKLoss(ce, ratio=1.0, per="class"))
    weighted, _ = train(paddle.nn.CrossEntropyLoss(weight=paddle.to_tensor([1 / 400, 1 / 20])))
    plain, plain_recall = train(paddle.nn.CrossEntropyLoss())
    np.testing.assert_allclose(balanced, weighted, rtol=1e-4, atol=1e-5)
    assert np.abs(balanced - plain).max() > 0.1
    assert balanced_recall > plain_recall + 0.2  # the rare class is no longer drowned
    annealed = TopKLoss(ce, ratio=1.0, per="class")
    train(annealed, [TopKScheduler(start=1.0, end=0.5, schedule="linear", by="epoch")])
    assert annealed.ratio == pytest.approx(0.5)


def test_labels_outside_the_classes_are_left_out_and_float_labels_are_rounded():
    loss = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    label = np.array([0, 0, 1, 7, -100])  # 7 and -100: no class of 3 (e.g. a CE's own ignore_index)
    value, grad = run(TopKLoss(identity, ratio=1.0, per="class", num_classes=3), loss, label)
    assert value == pytest.approx((1.5 + 3.0) / 2) and grad[3] == 0.0 and grad[4] == 0.0
    # BCE with smoothed targets 0.05 / 0.95: classes 0 and 1, not all truncated to 0
    bce = TopKLoss(lambda x, y: x, ratio=1.0, per="class", num_classes=2)
    value, _ = run(bce, np.array([1.0, 2.0, 6.0]), np.array([0.05, 0.05, 0.95], dtype="float32"))
    assert value == pytest.approx((1.5 + 6.0) / 2)


@pytest.mark.parametrize(
    "logits, ce_axis",
    [((2, 5, 6, 4), -1),  # channels-last [N,H,W,C]: axis 1 is H
     ((2, 7, 4), -1)],  # a sequence [N,T,C]: axis 1 is T
)  # fmt: skip
def test_logits_whose_axis_1_is_not_the_class_axis_are_refused(logits, ce_axis):
    x = paddle.randn(logits)
    label = paddle.randint(0, logits[-1], logits[:-1])
    layer = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none", axis=ce_axis), per="class")
    with pytest.raises(ValueError, match=r"is not logits \[N, C, \.\.\.\].*Fix: .*num_classes=C"):
        layer(x, label)
    multi_label = TopKLoss(paddle.nn.BCEWithLogitsLoss(reduction="none"), per="class")
    with pytest.raises(ValueError, match=r"C values per loss element"):
        multi_label(paddle.randn([4, 3]), paddle.ones([4, 3]))
    explicit = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none", axis=ce_axis), per="class",
                        num_classes=logits[-1])  # fmt: skip
    assert np.isfinite(float(explicit(x, label)))


def test_class_means_are_exact_on_millions_of_elements():
    """Sums and counts in float64: a float32 running sum drifts by ~2e-4 at 4M elements."""
    n = 4 * 1024 * 1024
    rng = np.random.default_rng(0)
    loss = rng.uniform(0.05, 0.6, n).astype("float32")
    label = (rng.random(n) < 0.3).astype("int64")
    value = TopKLoss(identity, ratio=1.0, per="class", num_classes=2)(paddle.to_tensor(loss), paddle.to_tensor(label))
    l64 = loss.astype(np.float64)
    want = (l64[label == 0].mean() + l64[label == 1].mean()) / 2
    assert float(value) == pytest.approx(want, rel=2e-7)
