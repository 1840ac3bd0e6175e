"""The radix select behind TopKLoss on large CPU inputs, against a float64 full sort.

Most cases lower ``_select.SELECT_MIN_SIZE`` so that a few thousand losses take the
radix path (the same code as at 10⁶, only faster to check); one case runs at the real
threshold with cross-entropy losses.
"""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest
from helpers import forbid_host_reads, identity
from test_aorr import run  # forward + backward: (value, float64 gradient)

from hapi_autoloss import TopKLoss, _select
from hapi_autoloss.topk import k_of, m_of

IGNORE = 255


def reference(x, valid, ratio, drop, min_kept=1):
    """(value, d value / d x, k, m) of the mean of ranks m+1..k by a float64 sort; ties at
    the k-th (m-th) value share the weight of the ranks they straddle evenly."""
    x = np.asarray(x, np.float64).ravel()
    valid = np.asarray(valid, bool).ravel()
    n = int(valid.sum())
    k = k_of(ratio, n, min_kept)
    m = m_of(drop, n, k, min_kept)
    desc = np.sort(x[valid])[::-1]

    def weight(c):
        if c == 0:
            return np.zeros_like(x)
        tau = desc[c - 1]
        gt, eq = valid & (x > tau), valid & (x == tau)
        return gt + eq * (c - gt.sum()) / eq.sum()

    d = max(k - m, 1)
    return float(desc[m:k].sum() / d), (weight(k) - weight(m)) / d, k, m


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setattr(_select, "SELECT_MIN_SIZE", 1024)




def losses(n, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "distinct":
        return (rng.permutation(n) / n * 3.0 + 0.01).astype(np.float32)
    if kind == "signed":  # negative and positive, distinct, wide range of exponents
        return (rng.permutation(n) - n / 3).astype(np.float32) * np.float32(1e-3) ** rng.integers(0, 3, n)
    if kind == "ties":  # 21 distinct values: the k-th and m-th values are tied many times
        return (rng.integers(-4, 17, n) / 4.0).astype(np.float32)
    raise ValueError(kind)


def labels(n, seed, frac):
    rng = np.random.default_rng(seed + 1)
    return np.where(rng.random(n) < frac, IGNORE, 0).astype("int64")


@pytest.mark.parametrize("kind", ["distinct", "signed", "ties"])
@pytest.mark.parametrize("frac_ignored", [0.0, 0.3])
@pytest.mark.parametrize("ratio, drop", [(0.1, 0.0), (0.1, 0.02), (0.5, 0.3), (1.0, 0.2), (0.002, 0.0)])
def test_value_and_gradient_match_a_full_sort(small_threshold, kind, frac_ignored, ratio, drop):
    n = 5000
    x, label = losses(n, 1, kind), labels(n, 2, frac_ignored)
    ii = IGNORE if frac_ignored else None
    value, grad = run(TopKLoss(identity, ratio=ratio, drop=drop, per="pixel", ignore_index=ii), x, label)
    want, want_grad, k, m = reference(x, label != IGNORE, ratio, drop)
    assert value == pytest.approx(want, rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-12)
    assert grad.sum() == pytest.approx(1.0, rel=1e-6)  # the weights of a mean
    assert not grad[label == IGNORE].any()
    if kind != "ties":
        assert np.count_nonzero(grad) == k - m


@pytest.mark.parametrize("drop", [0.0, 0.05])
def test_k_follows_the_ignored_count_and_min_kept(small_threshold, drop):
    n = 4000
    x = losses(n, 3, "distinct")
    for n_ignored in (0, 1, 999, 3000, 3990, 3999):
        label = np.zeros(n, "int64")
        label[np.random.default_rng(n_ignored).permutation(n)[:n_ignored]] = IGNORE
        for min_kept in (1, 25):
            layer = TopKLoss(identity, ratio=0.1, drop=drop, per="pixel", ignore_index=IGNORE, min_kept=min_kept)
            value, grad = run(layer, x, label)
            want, want_grad, k, m = reference(x, label != IGNORE, 0.1, drop, min_kept)
            assert k == k_of(0.1, n - n_ignored, min_kept)
            assert np.count_nonzero(grad) == k - m, (n_ignored, min_kept)
            assert value == pytest.approx(want, rel=1e-6)
            np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=0)


def test_k_equal_to_n_and_all_ignored(small_threshold):
    n = 3000
    x = losses(n, 4, "signed")
    none_ignored = np.zeros(n, "int64")
    # k = n: through min_kept (the plain mean), and ratio 1 with a drop (the trimmed mean).
    for ratio, drop, min_kept, km in [(0.1, 0.0, n, (n, 0)), (1.0, 0.1, 1, (n, 300))]:
        layer = TopKLoss(identity, ratio=ratio, drop=drop, per="pixel", min_kept=min_kept)
        value, grad = run(layer, x, none_ignored)
        want, want_grad, k, m = reference(x, none_ignored == 0, ratio, drop, min_kept)
        assert (k, m) == km and value == pytest.approx(want, rel=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=0)
    everything = np.full(n, IGNORE, "int64")
    for kw in ({"ratio": 0.1}, {"ratio": 0.1, "drop": 0.05}):
        value, grad = run(TopKLoss(identity, per="pixel", ignore_index=IGNORE, **kw), x, everything)
        assert value == 0.0 and not grad.any()


def test_zeros_of_both_signs_infinities_and_subnormals(small_threshold):
    """−0.0 ranks just below +0.0 (equal values: any split is exact), ±inf and subnormals
    are ordinary keys; the value and the gradient's total stay exact."""
    rng = np.random.default_rng(5)
    pool = np.array([0.0, -0.0, 1e-45, -1e-45, 3e-39, -3e-39, np.inf, -np.inf, 1.0, -1.0], np.float32)
    x = pool[rng.integers(0, len(pool), 4000)]
    x[:3] = np.inf  # so that the top-k is finite only from the 4th rank on
    for ratio, drop in [(0.3, 0.01), (0.5, 0.2), (0.7, 0.3), (0.9, 0.5)]:
        value, grad = run(TopKLoss(identity, ratio=ratio, drop=drop, per="pixel"), x, np.zeros(4000, "int64"))
        want, want_grad, _, _ = reference(x, np.ones(4000, bool), ratio, drop)
        assert value == want or value == pytest.approx(want, rel=1e-6)
        assert grad.sum() == pytest.approx(1.0, rel=1e-6)
        for v in np.unique(x):  # each group of equal values gets the reference's total weight
            assert grad[x == v].sum() == pytest.approx(want_grad[x == v].sum(), rel=1e-6, abs=1e-12), v


def test_real_threshold_with_cross_entropy():
    """4×1×256×256 = 2**18 pixels: the size where the radix select starts, without any patch."""
    rng = np.random.default_rng(6)
    logits = paddle.to_tensor(rng.standard_normal((4, 5, 256, 256)).astype("float32"), stop_gradient=False)
    lab = rng.integers(0, 5, (4, 1, 256, 256))
    lab[rng.random(lab.shape) < 0.1] = IGNORE
    ce = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=IGNORE)
    per_pixel = ce(logits, paddle.to_tensor(lab)).numpy().ravel()
    assert _select.use_select(paddle.to_tensor(per_pixel)) and not _select.use_select(paddle.ones([2**18 - 1]))
    for drop in (0.0, 0.02):
        layer = TopKLoss(ce, ratio=0.1, drop=drop, per="pixel", ignore_index=IGNORE)
        out = layer(logits, paddle.to_tensor(lab))
        want, _, k, m = reference(per_pixel, lab.ravel() != IGNORE, 0.1, drop)
        assert float(out) == pytest.approx(want, rel=1e-5)
        out.backward()
        # Each kept pixel's logits get a gradient of total |.| > 0; the others none.
        touched = (np.abs(logits.grad.numpy()).sum(axis=1) > 0).ravel()
        assert touched.sum() == k - m
        assert not touched[lab.ravel() == IGNORE].any()
        logits.clear_gradient()


def test_forward_never_reads_a_tensor_on_the_host(monkeypatch, small_threshold):
    rng = np.random.default_rng(7)
    x = paddle.to_tensor(rng.standard_normal(6000).astype("float32"), stop_gradient=False)
    label = paddle.to_tensor(labels(6000, 8, 0.2))
    layers = [TopKLoss(identity, per="pixel", ignore_index=ii, ratio=0.2, drop=d) for ii in (None, IGNORE)
              for d in (0.0, 0.05)]
    assert _select.use_select(x)
    forbid_host_reads(monkeypatch)
    outs = [layer(x, label) for layer in layers]
    for out in outs:
        out.backward()  # the select's own backward: no read either
    monkeypatch.undo()
    assert all(math.isfinite(float(o)) for o in outs)


NANS = {"+nan": 0x7FC00000, "-nan (paddle's 0*inf, log(-1))": 0xFFC00000, "-nan, payload": 0xFFFFFFFF}


@pytest.mark.parametrize("size", [4096, 512])  # the radix path (threshold lowered), the topk path
@pytest.mark.parametrize("nan", list(NANS))
@pytest.mark.parametrize("rule", [dict(ratio=0.1), dict(ratio=0.5, drop=0.1), dict(band=(1.0, 2.0)),
                                  dict(ratio=0.1, threshold=0.5)])  # fmt: skip
def test_a_nan_among_the_valid_losses_makes_the_result_nan_whatever_its_sign(small_threshold, size, nan, rule):
    """A rule that drops the hardest must not hide a NaN (hapi_autoloss's non-finite check
    then skips the step); a NaN at an ignored position does not count."""
    x = np.random.default_rng(0).random(size).astype("float32")
    x[7:8] = np.array([NANS[nan]], dtype=np.uint32).view(np.float32)
    label = np.zeros(size, dtype="int64")
    layer = TopKLoss(identity, per="pixel", ignore_index=IGNORE, **rule)
    assert math.isnan(float(layer(paddle.to_tensor(x), paddle.to_tensor(label))))
    label[7] = IGNORE
    assert math.isfinite(float(layer(paddle.to_tensor(x), paddle.to_tensor(label))))


@pytest.mark.parametrize("drop", [0.0, 0.05])
def test_the_value_stays_exact_on_millions_of_losses(drop):
    """Bucket sums per slice of 2**18 losses, added in float64: one float32 bincount over
    2**22 cross-entropy-like losses drifted by ~8e-5."""
    n = 2**22
    x = np.random.default_rng(2).uniform(2.4, 3.5, n).astype("float32")
    layer = TopKLoss(identity, ratio=0.7, drop=drop, per="pixel", ignore_index=IGNORE)
    got = float(layer(paddle.to_tensor(x), paddle.to_tensor(np.zeros(n, dtype="int64"))))
    want = reference(x, np.ones(n, bool), 0.7, drop)[0]
    assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("size", [4096, 512])
@pytest.mark.parametrize("inf", [math.inf, -math.inf])
def test_an_infinite_loss_leaves_no_band_and_gives_nan(small_threshold, size, inf):
    """μ or σ of losses holding ±inf is undefined: NaN (which the non-finite check catches),
    not the 0 of an empty band with a zero gradient; an ignored inf does not count."""
    x = np.random.default_rng(1).random(size).astype("float32")
    x[3] = inf
    label = np.zeros(size, dtype="int64")
    layer = TopKLoss(identity, per="pixel", ignore_index=IGNORE, band=(1.0, 2.0))
    assert math.isnan(float(layer(paddle.to_tensor(x), paddle.to_tensor(label))))
    label[3] = IGNORE
    value, grad = run(layer, x, label)
    assert math.isfinite(value) and grad[3] == 0.0 and grad.sum() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("size", [4096, 512])  # the radix path (threshold lowered), the topk path
@pytest.mark.parametrize("rule", [dict(ratio=0.9), dict(ratio=0.9, drop=0.2), dict(ratio=0.3),
                                  dict(ratio=0.9, threshold=0.5)])  # fmt: skip
def test_valid_minus_inf_losses_never_let_an_ignored_loss_in(small_threshold, size, rule):
    """Ignored losses are ranked as −inf: a top-k reaching into valid −inf losses must count
    those (−inf), not an ignored loss picked in their place (the topk path read its value)."""
    rng = np.random.default_rng(2)
    x = rng.random(size).astype("float32")
    label = np.zeros(size, dtype="int64")
    label[: size // 2] = IGNORE
    x[: size // 2] = 5.0 + rng.random(size // 2)  # ignored, and larger than every valid loss
    x[size // 2 :][rng.random(size - size // 2) < 0.5] = -np.inf
    valid = label != IGNORE
    layer = TopKLoss(identity, per="pixel", ignore_index=IGNORE, **rule)
    got = float(layer(paddle.to_tensor(x), paddle.to_tensor(label)))
    if "threshold" in rule:  # {loss > 0.5} ∪ top-k holds a −inf here
        want = -math.inf
    else:
        want = reference(x, valid, rule["ratio"], rule.get("drop", 0.0))[0]
    assert got == want or got == pytest.approx(want, rel=1e-6)
