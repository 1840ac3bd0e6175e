"""TopKLoss against a float64 numpy reference: values, kept sets, gradients, errors."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest
from helpers import forbid_host_reads

from hapi_autoloss import AutoWeight, TopKLoss, _kept_counts
from hapi_autoloss.topk import k_of

IGNORE = 255


def identity(out, label):
    """A 'loss' equal to its input, so the gradient shows exactly which entries were kept."""
    return out


def reference(loss, ratio, per, label=None, ignore_index=None, min_kept=1, threshold=None):
    """(value, d value / d loss) in float64, written independently of TopKLoss.

    k = min(max(ceil(ratio·n − 1e-6), min_kept), n) over the n valid units.
    """
    loss = np.asarray(loss, dtype=np.float64)
    n_batch = loss.shape[0]
    if ignore_index is None:
        valid_el = np.ones(loss.shape, dtype=bool)
    else:
        valid_el = np.asarray(label).reshape(loss.shape) != ignore_index
    if per == "pixel":
        units = loss.reshape(-1)
        unit_valid = valid_el.reshape(-1)
        # d unit / d element: identity
        unit_of = np.arange(loss.size).reshape(loss.shape)
        weight_el = np.ones(loss.shape)
    else:
        flat = loss.reshape(n_batch, -1)
        vflat = valid_el.reshape(n_batch, -1)
        count = vflat.sum(axis=1)
        units = np.where(count > 0, (flat * vflat).sum(axis=1) / np.maximum(count, 1), 0.0)
        unit_valid = count > 0
        unit_of = np.repeat(np.arange(n_batch), flat.shape[1]).reshape(loss.shape)
        weight_el = (vflat / np.maximum(count, 1)[:, None]).reshape(loss.shape)
    idx = np.flatnonzero(unit_valid)
    n = len(idx)
    k = 0 if n == 0 else min(max(math.ceil(ratio * n - 1e-6), min_kept), n)
    order = idx[np.argsort(-units[idx], kind="stable")]
    kept = set(order[:k].tolist())
    if threshold is not None:
        kept |= set(idx[units[idx] > threshold].tolist())
    kept_arr = np.array(sorted(kept), dtype=np.int64)
    value = float(units[kept_arr].mean()) if len(kept_arr) else 0.0
    unit_grad = np.zeros(units.shape)
    if len(kept_arr):
        unit_grad[kept_arr] = 1.0 / len(kept_arr)
    grad = unit_grad[unit_of] * weight_el
    return value, grad


def distinct(shape, seed):
    """Distinct losses (no ties), so the kept set is unique."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n).astype(np.float64) / n * 3.0 + 0.01).reshape(shape)


def labels_for(shape, seed, frac_ignored=0.3):
    rng = np.random.default_rng(seed + 100)
    lab = rng.integers(0, 5, shape)
    lab[rng.random(shape) < frac_ignored] = IGNORE
    return lab.astype("int64")


def run_layer(layer, x_np, label_np, dtype="float32"):
    x = paddle.to_tensor(x_np.astype(dtype), stop_gradient=False)
    label = paddle.to_tensor(label_np)
    out = layer(x, label)
    out.backward()
    return out, x.grad.numpy().astype(np.float64)


# ---------------------------------------------------------------- rounding


@pytest.mark.parametrize(
    "ratio, n, min_kept, k",
    [
        (0.1, 1000, 1, 100),
        (0.1, 5, 1, 1),  # 0.5 rounds up
        (0.5, 5, 1, 3),
        (0.001, 10, 1, 1),  # ratio·n = 0.01 still keeps one
        (0.07, 100, 1, 7),  # 7.000000000000001 is 7, not 8
        (0.1, 30, 1, 3),
        (0.3, 10, 5, 5),  # min_kept bites
        (0.3, 3, 5, 3),  # but never more than n
        (1.0, 7, 1, 7),
        (0.999, 3, 1, 3),
        (0.5, 1, 1, 1),
        (0.5, 0, 1, 0),  # nothing valid: k = 0
    ],
)
def test_rounding_rule(ratio, n, min_kept, k):
    assert k_of(ratio, n, min_kept) == k


def test_k_tensor_matches_the_host_formula():
    """k is computed on the device from the valid count; it must be the same integer."""
    for ratio in (0.07, 0.1, 0.3, 1 / 3, 0.7, 0.999):
        n_total = 200
        k_max = k_of(ratio, n_total, 2)
        for n_valid in (0, 1, 2, 3, 10, 30, 99, 100, 101, 200):
            ignored = paddle.to_tensor(np.arange(n_total) >= n_valid)
            got = int(_kept_counts.k_tensor(_kept_counts.count_valid(ignored), ratio, 2, k_max))
            assert got == k_of(ratio, n_valid, 2), (ratio, n_valid)


# ---------------------------------------------------------------- exactness


SHAPES = [(12,), (6, 5), (3, 4, 5, 6)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per", ["sample", "pixel"])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.7, 1.0])
def test_value_and_gradient_match_reference(shape, per, ignore, ratio):
    x = distinct(shape, seed=len(shape))
    label = labels_for(shape, seed=len(shape))
    ii = IGNORE if ignore else None
    layer = TopKLoss(identity, ratio=ratio, per=per, ignore_index=ii)
    out, grad = run_layer(layer, x, label)
    want, want_grad = reference(x, ratio, per, label, ii)
    assert out.shape == [] and out.dtype == paddle.float32
    np.testing.assert_allclose(float(out), want, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-9)
    # Only the kept elements get a gradient.
    np.testing.assert_array_equal(grad != 0, want_grad != 0)


@pytest.mark.parametrize(
    "n, ratio, min_kept, n_ignored",
    [(1, 0.1, 1, 0), (2, 0.1, 1, 0), (3, 0.5, 1, 0), (3, 0.5, 2, 0), (5, 0.2, 3, 0),
     (4, 0.3, 1, 2), (4, 0.3, 3, 2), (5, 0.9, 1, 4), (6, 0.01, 1, 3)],
)
@pytest.mark.parametrize("per", ["sample", "pixel"])
def test_tiny_n_where_rounding_and_min_kept_bite(n, ratio, min_kept, n_ignored, per):
    x = distinct((n,), seed=n)
    label = np.zeros(n, dtype="int64")
    label[:n_ignored] = IGNORE
    layer = TopKLoss(identity, ratio=ratio, per=per, ignore_index=IGNORE, min_kept=min_kept)
    out, grad = run_layer(layer, x, label)
    want, want_grad = reference(x, ratio, per, label, IGNORE, min_kept)
    np.testing.assert_allclose(float(out), want, rtol=1e-6)
    k = k_of(ratio, n - n_ignored, min_kept)
    assert int((grad != 0).sum()) == k
    np.testing.assert_array_equal(grad != 0, want_grad != 0)


def test_k_extremes_are_max_and_mean():
    x = distinct((50,), seed=3)
    top1 = TopKLoss(identity, ratio=0.001, per="pixel")
    assert float(top1(paddle.to_tensor(x.astype("float32")), None)) == pytest.approx(x.max(), rel=1e-6)
    full = TopKLoss(identity, ratio=1.0, per="pixel")
    assert float(full(paddle.to_tensor(x.astype("float32")), None)) == pytest.approx(x.mean(), rel=1e-6)


@pytest.mark.parametrize("label_shape", ["N1HW", "NHW"])
@pytest.mark.parametrize("per", ["sample", "pixel"])
def test_cross_entropy_segmentation_with_ignore_index(label_shape, per):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 5, 6)).astype("float32")
    lab = rng.integers(0, 4, (2, 5, 6))
    lab[rng.random(lab.shape) < 0.25] = IGNORE
    # float64 reference cross-entropy per pixel
    z = logits.astype(np.float64)
    logp = z - z.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    safe = np.where(lab == IGNORE, 0, lab)
    ce_ref = -np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    label = lab[:, None] if label_shape == "N1HW" else lab
    ce = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=IGNORE)
    for ratio in (0.2, 0.6, 1.0):
        layer = TopKLoss(ce, ratio=ratio, per=per, ignore_index=IGNORE)
        x = paddle.to_tensor(logits, stop_gradient=False)
        out = layer(x, paddle.to_tensor(label.astype("int64")))
        out.backward()
        want, want_grad = reference(ce_ref, ratio, per, lab, IGNORE)
        np.testing.assert_allclose(float(out), want, rtol=1e-5)
        # Pixels outside the kept set get no gradient in any channel.
        touched = (x.grad.numpy() != 0).any(axis=1)
        np.testing.assert_array_equal(touched, want_grad != 0)


def test_ratio_one_is_the_plain_mean_of_cross_entropy():
    rng = np.random.default_rng(1)
    logits = paddle.to_tensor(rng.standard_normal((3, 5, 7, 7)).astype("float32"))
    lab = rng.integers(0, 5, (3, 7, 7))
    lab[rng.random(lab.shape) < 0.2] = IGNORE
    label = paddle.to_tensor(lab.astype("int64"))
    plain = paddle.nn.functional.cross_entropy(logits, label, axis=1, ignore_index=IGNORE)
    layer = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=IGNORE),
                     ratio=1.0, per="pixel", ignore_index=IGNORE)
    np.testing.assert_allclose(float(layer(logits, label)), float(plain), rtol=1e-6)
    # Classification, per sample, no ignore: the batch mean.
    x = paddle.to_tensor(rng.standard_normal((16, 10)).astype("float32"))
    y = paddle.to_tensor(rng.integers(0, 10, (16, 1)))
    layer = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=1.0)
    np.testing.assert_allclose(float(layer(x, y)), float(paddle.nn.functional.cross_entropy(x, y)), rtol=1e-6)


def test_mse_per_sample_ranks_sample_means():
    rng = np.random.default_rng(2)
    out = rng.standard_normal((10, 3)).astype("float32")
    target = rng.standard_normal((10, 3)).astype("float32")
    layer = TopKLoss(paddle.nn.MSELoss(reduction="none"), ratio=0.3, per="sample")
    got = float(layer(paddle.to_tensor(out), paddle.to_tensor(target)))
    per_sample = ((out.astype(np.float64) - target) ** 2).mean(axis=1)
    np.testing.assert_allclose(got, np.sort(per_sample)[::-1][:3].mean(), rtol=1e-6)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("per", ["sample", "pixel"])
def test_threshold_keeps_everything_above_it_and_never_fewer_than_k(ratio, ignore, per):
    x = distinct((4, 10), seed=7)
    label = labels_for((4, 10), seed=7)
    ii = IGNORE if ignore else None
    for threshold in (0.5, 1.5, 2.9, 10.0):
        layer = TopKLoss(identity, ratio=ratio, per=per, ignore_index=ii, threshold=threshold)
        out, grad = run_layer(layer, x, label)
        want, want_grad = reference(x, ratio, per, label, ii, threshold=threshold)
        np.testing.assert_allclose(float(out), want, rtol=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("per", ["sample", "pixel"])
@pytest.mark.parametrize("ratio", [0.1, 1.0])
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_all_ignored_gives_zero_and_zero_gradient(per, ratio, threshold):
    rng = np.random.default_rng(0)
    logits = paddle.to_tensor(rng.standard_normal((2, 3, 4, 4)).astype("float32"), stop_gradient=False)
    label = paddle.full([2, 1, 4, 4], IGNORE, dtype="int64")
    layer = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=IGNORE),
                     ratio=ratio, per=per, ignore_index=IGNORE, threshold=threshold)
    out = layer(logits, label)
    out.backward()
    assert float(out) == 0.0 and not math.isnan(float(out))
    grad = logits.grad.numpy()
    assert np.isfinite(grad).all() and (grad == 0).all()


def test_float16_losses_are_ranked_in_float32():
    # Paddle 3.3.1 has no float16 cross-entropy (or arithmetic) kernel on CPU, so the
    # wrapped loss is a plain function returning float16 values.
    x_np = distinct((8, 6), seed=11)
    x16 = x_np.astype("float16")
    layer = TopKLoss(identity, ratio=0.25, per="pixel")
    x = paddle.to_tensor(x16, stop_gradient=False)
    out = layer(x, None)
    out.backward()
    assert out.dtype == paddle.float32 and out.shape == []
    want, want_grad = reference(x16.astype(np.float64), 0.25, "pixel")
    np.testing.assert_allclose(float(out), want, rtol=1e-6)
    assert x.grad.dtype == paddle.float16
    np.testing.assert_array_equal(x.grad.numpy() != 0, want_grad != 0)


def test_gradient_support_through_cross_entropy_per_sample():
    rng = np.random.default_rng(4)
    x = paddle.to_tensor(rng.standard_normal((20, 10)).astype("float32"), stop_gradient=False)
    y = paddle.to_tensor(rng.integers(0, 10, (20, 1)))
    layer = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=0.25)
    layer(x, y).backward()
    ce = paddle.nn.functional.cross_entropy(x.detach(), y, reduction="none").numpy().ravel()
    hardest = set(np.argsort(-ce)[:5].tolist())
    assert set(np.flatnonzero((x.grad.numpy() != 0).any(axis=1)).tolist()) == hardest


def segmentation_batch():
    """(logits [2,3,6,6], label [2,1,6,6]) with two ignored rows: every code path of a forward."""
    rng = np.random.default_rng(5)
    logits = paddle.to_tensor(rng.standard_normal((2, 3, 6, 6)).astype("float32"), stop_gradient=False)
    lab = rng.integers(0, 3, (2, 1, 6, 6))
    lab[0, 0, :2] = IGNORE
    return logits, paddle.to_tensor(lab)


def test_forward_never_reads_a_tensor_on_the_host(monkeypatch):
    """No .numpy(), .item(), int(), float() or bool() of a tensor inside forward."""
    logits, label = segmentation_batch()
    layers = [
        TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=IGNORE), ratio=r,
                 per=p, ignore_index=ii, threshold=t)
        for r in (0.3, 1.0) for p in ("sample", "pixel") for ii in (None, IGNORE) for t in (None, 1.0)
    ]

    forbid_host_reads(monkeypatch)
    outs = [layer(logits, label) for layer in layers]
    monkeypatch.undo()
    assert all(np.isfinite(float(o)) for o in outs)


# ---------------------------------------------------------------- AutoWeight


def test_composes_inside_autoweight():
    rng = np.random.default_rng(6)
    logits = paddle.to_tensor(rng.standard_normal((2, 3, 4, 4)).astype("float32"), stop_gradient=False)
    label = paddle.to_tensor(rng.integers(0, 3, (2, 1, 4, 4)))
    topk = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none", axis=1), ratio=0.25, per="pixel")

    def soft_dice(out, lab):
        prob = paddle.nn.functional.softmax(out, axis=1)
        onehot = paddle.nn.functional.one_hot(lab.squeeze(1), 3).transpose([0, 3, 1, 2])
        inter = (prob * onehot).sum()
        return 1.0 - 2.0 * inter / (prob.sum() + onehot.sum())

    aw = AutoWeight({"ce": topk, "dice": soft_dice}, method="liebel", routing="shared")
    total = aw(logits, label)
    total.backward()
    ce_alone = float(topk(logits, label))
    dice_alone = float(soft_dice(logits, label))
    # liebel with c = 1: L/2 + ln 2 per task
    np.testing.assert_allclose(float(total), ce_alone / 2 + dice_alone / 2 + 2 * math.log(2), rtol=1e-5)
    assert logits.grad is not None and np.isfinite(logits.grad.numpy()).all()
    assert topk in list(aw.sublayers())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_bad_ratio_raises_value_error_naming_the_range(bad):
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\].*Fix"):
        TopKLoss(identity, ratio=bad)
    layer = TopKLoss(identity, ratio=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        layer.ratio = bad
    assert layer.ratio == 0.5  # unchanged after a refused value


def test_ratio_is_settable():
    layer = TopKLoss(identity, ratio=0.5, per="pixel")
    layer.ratio = 0.25
    x = distinct((8,), seed=1)
    assert float(layer(paddle.to_tensor(x.astype("float32")), None)) == pytest.approx(
        np.sort(x)[-2:].mean(), rel=1e-6)
    with pytest.raises(TypeError, match="number in"):
        layer.ratio = "0.5"
    with pytest.raises(TypeError, match="number in"):
        layer.ratio = True


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match=r"Layer or a function.*Fix"):
        TopKLoss("ce")
    with pytest.raises(ValueError, match=r"Unknown per 'row'.*per='pixel'"):
        TopKLoss(identity, per="row")
    with pytest.raises(ValueError, match=r"min_kept must be an int >= 1.*Fix"):
        TopKLoss(identity, min_kept=0)
    with pytest.raises(ValueError, match="min_kept must be an int >= 1"):
        TopKLoss(identity, min_kept=2.5)
    with pytest.raises(TypeError, match=r"ignore_index must be an int.*Fix"):
        TopKLoss(identity, ignore_index=2.5)
    with pytest.raises(ValueError, match=r"threshold must be a finite number.*Fix"):
        TopKLoss(identity, threshold=float("nan"))


def test_already_reduced_loss_is_refused_with_the_fix():
    x = paddle.randn([8, 10])
    y = paddle.randint(0, 10, [8, 1])
    with pytest.raises(ValueError, match=r"already reduced.*reduction='none'"):
        TopKLoss(paddle.nn.CrossEntropyLoss())(x, y)
    with pytest.raises(ValueError, match=r"already reduced.*reduction='none'"):
        TopKLoss(lambda o, t: ((o - 1.0) ** 2).mean().reshape([1]))(x, y)
    # A batch of one with one value per sample is fine.
    out = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"))(x[:1], y[:1])
    assert out.shape == []


def test_bad_loss_outputs_and_labels():
    x = paddle.randn([4, 3, 5, 5])
    with pytest.raises(TypeError, match=r"not a paddle.Tensor.*Fix"):
        TopKLoss(lambda o, t: 1.0)(x, x)
    with pytest.raises(TypeError, match=r"floating-point.*Fix"):
        TopKLoss(lambda o, t: t)(x, paddle.ones([4, 2], dtype="int64"))
    with pytest.raises(ValueError, match=r"per='sample' ranks the first dimension.*Fix"):
        TopKLoss(lambda o, t: o.reshape([-1, 4]))(x, x)
    soft = paddle.nn.functional.softmax(paddle.randn([4, 3, 5, 5]), axis=1)
    layer = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none", axis=1, soft_label=True),
                     per="pixel", ignore_index=IGNORE)
    with pytest.raises(ValueError, match=r"one label per loss element.*Fix"):
        layer(x, soft)
    with pytest.raises(ValueError, match=r"last argument.*Fix"):
        TopKLoss(lambda o: o, ignore_index=IGNORE)(x)


# ---------------------------------------------------------------- benchmark baselines


def _bench_module():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "bench_topk.py")
    spec = importlib.util.spec_from_file_location("bench_topk", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_baselines_compute_the_same_loss():
    """The seed loop and the PaddleSeg OHEM rewrite select what TopKLoss selects."""
    bench = _bench_module()
    rng = np.random.default_rng(8)
    x = paddle.to_tensor(rng.standard_normal((64, 10)).astype("float32"))
    y = paddle.to_tensor(rng.integers(0, 10, (64, 1)))
    seed_value = float(bench.SeedTopKCrossEntropy(0.7)(x, y))
    k = int(0.7 * 64)  # the seed floors; TopKLoss's ceil gives the same k at ratio k/64
    ours = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=k / 64)
    np.testing.assert_allclose(float(ours(x, y)), seed_value, rtol=1e-6)

    logits = paddle.to_tensor(rng.standard_normal((2, 5, 8, 8)).astype("float32"))
    lab = rng.integers(0, 5, (2, 1, 8, 8))
    lab[rng.random(lab.shape) < 0.1] = IGNORE
    label = paddle.to_tensor(lab)
    # threshold 0: OHEM keeps the pixels below the min_kept-th smallest true-class
    # probability, i.e. the min_kept − 1 hardest
    ohem = float(bench.paddleseg_ohem(logits, label, thresh=0.0, min_kept=21))
    n_valid = int((lab != IGNORE).sum())
    ours = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=IGNORE),
                    ratio=20 / n_valid, per="pixel", ignore_index=IGNORE)
    np.testing.assert_allclose(float(ours(logits, label)), ohem, rtol=1e-4)
