"""DiceLoss against a float64 numpy reference: values, ignore_index, gradients, dtype."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from hapi_autoloss import AutoWeight, DiceLoss


def dice_reference(logits: np.ndarray, labels: np.ndarray, ignore_index=255, smooth=1.0, eps=1e-8) -> float:
    """The documented formula, in float64, with explicit loops over images and classes."""
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    n, c = x.shape[:2]
    keep = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    ratios = []
    for i in range(n):
        for k in range(c):
            pk = p[i, k][keep[i]]
            tk = (labels[i][keep[i]] == k).astype(np.float64)
            inter, union = (pk * tk).sum(), pk.sum() + tk.sum()
            ratios.append((2 * inter + smooth) / (union + smooth + eps))
    return 1.0 - float(np.mean(ratios))


def _data(seed=0, n=3, c=4, h=5, w=6, ignore=None, frac=0.3):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.standard_normal((n, c, h, w))).astype(np.float32)
    labels = rng.integers(0, c, (n, h, w)).astype(np.int64)
    if ignore is not None:
        labels[rng.random((n, h, w)) < frac] = ignore
    return logits, labels


@pytest.mark.parametrize("ignore_index", [None, 255, -100, 0])
@pytest.mark.parametrize("smooth", [1.0, 0.0, 1e-3])
def test_matches_float64_reference(ignore_index, smooth):
    logits, labels = _data(ignore=ignore_index)
    got = DiceLoss(ignore_index=ignore_index, smooth=smooth)(paddle.to_tensor(logits), paddle.to_tensor(labels))
    want = dice_reference(logits, labels, ignore_index, smooth)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


def test_ignored_pixels_change_nothing_whatever_their_logits():
    logits, labels = _data(ignore=255, frac=0.5)
    ignored = np.broadcast_to((labels == 255)[:, None], logits.shape)
    other = np.where(ignored, 100.0 * np.random.default_rng(1).standard_normal(logits.shape), logits)
    loss = DiceLoss(ignore_index=255)
    a = loss(paddle.to_tensor(logits), paddle.to_tensor(labels))
    b = loss(paddle.to_tensor(other.astype(np.float32)), paddle.to_tensor(labels))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


def test_ignored_pixels_are_not_an_extra_class():
    """Dropping the ignored pixels by hand (a 1-pixel-wide image) gives the same loss."""
    logits, labels = _data(n=1, ignore=255, frac=0.4)
    keep = labels[0] != 255
    flat_logits = logits[0][:, keep][None, :, None, :]  # [1, C, 1, kept]
    flat_labels = labels[0][keep][None, None, :]
    loss = DiceLoss(ignore_index=255)
    a = loss(paddle.to_tensor(logits), paddle.to_tensor(labels))
    b = loss(paddle.to_tensor(flat_logits), paddle.to_tensor(flat_labels))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


@pytest.mark.parametrize("smooth", [1.0, 0.0])
def test_all_ignored_is_finite_with_zero_gradient(smooth):
    logits, labels = _data()
    labels[:] = 255
    x = paddle.to_tensor(logits, stop_gradient=False)
    loss = DiceLoss(ignore_index=255, smooth=smooth)(x, paddle.to_tensor(labels))
    loss.backward()
    assert np.isfinite(float(loss))
    assert float(loss) == pytest.approx(0.0 if smooth > 0 else 1.0, abs=1e-6)
    assert x.grad is not None
    np.testing.assert_array_equal(x.grad.numpy(), 0.0)


def test_perfect_prediction_is_near_zero_and_wrong_is_near_one():
    _, labels = _data(c=3)
    onehot = np.eye(3, dtype=np.float32)[labels].transpose(0, 3, 1, 2)
    loss = DiceLoss(smooth=0.0)
    good = loss(paddle.to_tensor(50.0 * onehot), paddle.to_tensor(labels))
    bad = loss(paddle.to_tensor(50.0 * np.roll(onehot, 1, axis=1)), paddle.to_tensor(labels))
    assert float(good) < 1e-6
    assert float(bad) > 1.0 - 1e-6


def test_gradient_matches_finite_differences_of_the_reference():
    logits, labels = _data(n=2, c=3, h=3, w=4, ignore=255, frac=0.25)
    x = paddle.to_tensor(logits, stop_gradient=False)
    DiceLoss(ignore_index=255, smooth=0.5)(x, paddle.to_tensor(labels)).backward()
    got = x.grad.numpy()

    base = logits.astype(np.float64)
    num = np.zeros_like(base)
    h = 1e-6
    for idx in np.ndindex(base.shape):
        up, down = base.copy(), base.copy()
        up[idx] += h
        down[idx] -= h
        num[idx] = (dice_reference(up, labels, 255, 0.5) - dice_reference(down, labels, 255, 0.5)) / (2 * h)
    np.testing.assert_allclose(got, num, rtol=1e-3, atol=1e-6)
    ignored = np.broadcast_to((labels == 255)[:, None], got.shape)
    np.testing.assert_array_equal(got[ignored], 0.0)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("label_shape", ["nhw", "n1hw"])
def test_output_is_0d_float32(dtype, label_shape):
    logits, labels = _data()
    if label_shape == "n1hw":
        labels = labels[:, None]
    out = DiceLoss()(paddle.to_tensor(logits).astype(dtype), paddle.to_tensor(labels).astype("int32"))
    assert out.shape == [] and out.dtype == paddle.float32
    tol = 1e-2 if dtype == "float16" else 1e-5
    np.testing.assert_allclose(float(out), dice_reference(logits, labels.reshape(labels.shape[0], *labels.shape[-2:])),
                               rtol=tol, atol=tol)


def test_does_not_modify_its_labels():
    logits, labels = _data(ignore=255)
    y = paddle.to_tensor(labels)
    DiceLoss(ignore_index=255)(paddle.to_tensor(logits), y)
    np.testing.assert_array_equal(y.numpy(), labels)


def test_inside_autoweight_shared_with_ce():
    logits, labels = _data(ignore=255)
    loss = AutoWeight(
        {"ce": paddle.nn.CrossEntropyLoss(axis=1, ignore_index=255), "dice": DiceLoss(ignore_index=255)},
        method="fixed", weights=[0.8, 0.2], routing="shared",
    )
    x, y = paddle.to_tensor(logits), paddle.to_tensor(labels)
    want = 0.8 * float(paddle.nn.functional.cross_entropy(x, y, axis=1, ignore_index=255)) + 0.2 * dice_reference(
        logits, labels
    )
    np.testing.assert_allclose(float(loss(x, y)), want, rtol=1e-5)


@pytest.mark.parametrize(
    ("logits_shape", "labels_shape", "dtype", "err"),
    [
        ([2, 3, 4], [2, 4], "int64", ValueError),
        ([2, 3, 4, 4], [2, 3, 4, 4], "int64", ValueError),
        ([2, 3, 4, 4], [2, 5, 4], "int64", ValueError),
        ([2, 3, 4, 4], [2, 4, 4], "float32", TypeError),
    ],
)
def test_bad_inputs_say_how_to_fix(logits_shape, labels_shape, dtype, err):
    with pytest.raises(err, match="Fix"):
        DiceLoss()(paddle.zeros(logits_shape), paddle.zeros(labels_shape, dtype=dtype))


@pytest.mark.parametrize("kw", [{"smooth": -1.0}, {"smooth": float("nan")}, {"eps": 0.0}, {"ignore_index": 1.5}])
def test_bad_arguments(kw):
    with pytest.raises((ValueError, TypeError), match="Fix"):
        DiceLoss(**kw)


@pytest.mark.parametrize("kwargs,match", [
    ({"smooth": -1.0}, r"smooth must be a finite number >= 0, got -1\.0\. Fix: e\.g\. smooth=1\.0\."),
    ({"smooth": 10**400}, r"smooth must be a finite number >= 0"),  # was an OverflowError from float()
    ({"eps": 0.0}, r"eps must be a finite number > 0, got 0\.0\. Fix: e\.g\. eps=1e-8\."),
    ({"smooth": True}, r"smooth must be"),
])
def test_dice_refuses_bad_numbers_with_the_projects_message(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiceLoss(**kwargs)
