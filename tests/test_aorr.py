"""TopKLoss's ranked range (AoRR, drop=) and band rule against float64 brute-force references."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest
from helpers import forbid_host_reads
from test_topk import distinct, labels_for, segmentation_batch  # distinct losses; labels with 30% ignored

from hapi_autoloss import TopKLoss, _kept_counts
from hapi_autoloss.topk import k_of, m_of

IGNORE = 255


def identity(out, label):
    """A 'loss' equal to its input: the gradient shows exactly which entries were kept."""
    return out


def units_of(loss, per, label=None, ignore_index=None):
    """(unit values, unit valid, d unit / d element as [n_units, n_elements]) in float64."""
    loss = np.asarray(loss, dtype=np.float64)
    valid = np.ones(loss.shape, bool) if ignore_index is None else np.asarray(label).reshape(loss.shape) != ignore_index
    if per == "pixel":
        return loss.ravel(), valid.ravel(), np.eye(loss.size)
    flat, vflat = loss.reshape(loss.shape[0], -1), valid.reshape(loss.shape[0], -1)
    count = vflat.sum(axis=1)
    units = np.where(count > 0, (flat * vflat).sum(axis=1) / np.maximum(count, 1), 0.0)
    jac = np.zeros((loss.shape[0], loss.size))
    for i in range(loss.shape[0]):
        jac[i, i * flat.shape[1] : (i + 1) * flat.shape[1]] = vflat[i] / max(count[i], 1)
    return units, count > 0, jac


def reference_range(loss, ratio, drop, per, label=None, ignore_index=None, min_kept=1):
    """Mean of ranks m+1..k by a full float64 sort; its gradient as d value / d loss."""
    units, valid, jac = units_of(loss, per, label, ignore_index)
    idx = np.flatnonzero(valid)
    n = len(idx)
    k = 0 if n == 0 else min(max(math.ceil(ratio * n - 1e-6), min_kept), n)
    m = 0 if k == 0 else max(min(math.floor(drop * n + 1e-6), k - min(min_kept, k)), 0)
    order = idx[np.argsort(-units[idx], kind="stable")]
    kept = order[m:k]
    w = np.zeros(units.shape)
    w[kept] = 1.0 / max(k - m, 1)
    value = float(units[kept].sum() / max(k - m, 1)) if len(kept) else 0.0
    return value, (w @ jac).reshape(np.shape(loss)), k, m


def reference_band(loss, a, b, per, label=None, ignore_index=None):
    """Mean of the valid units in [μ − bσ, μ + aσ] (population std), and the smallest distance
    of any unit to a bound (the test needs it clear of float32 rounding)."""
    units, valid, jac = units_of(loss, per, label, ignore_index)
    u = units[valid]
    mu, sd = u.mean(), u.std()
    inside = valid & (units <= mu + a * sd) & (units >= mu - b * sd)
    w = np.where(inside, 1.0 / max(inside.sum(), 1), 0.0)
    margin = min(np.abs(u - (mu + a * sd)).min(), np.abs(u - (mu - b * sd)).min())
    value = float(units[inside].mean()) if inside.any() else 0.0
    return value, (w @ jac).reshape(np.shape(loss)), margin




def run(layer, x_np, label_np):
    x = paddle.to_tensor(x_np.astype("float32"), stop_gradient=False)
    out = layer(x, paddle.to_tensor(label_np))
    out.backward()
    assert out.shape == [] and out.dtype == paddle.float32
    return float(out), x.grad.numpy().astype(np.float64)


# ---------------------------------------------------------------- k and m


@pytest.mark.parametrize(
    "drop, n, k, min_kept, m",
    [
        (0.1, 64, 45, 1, 6),  # 6.4 rounds down
        (0.07, 100, 50, 1, 7),  # float noise: 7.000000000000001
        (0.29, 100, 50, 1, 29),  # float noise: 28.999999999999996
        (0.5, 10, 3, 1, 2),  # at least one stays
        (0.5, 10, 3, 2, 1),  # at least min_kept stay
        (0.5, 10, 3, 5, 0),  # k < min_kept: nothing dropped
        (0.0, 10, 3, 1, 0),
        (0.3, 0, 0, 1, 0),
    ],
)
def test_m_rounding_rule(drop, n, k, min_kept, m):
    assert m_of(drop, n, k, min_kept) == m


def test_m_tensor_matches_the_host_formula():
    n_total = 200
    for ratio, drop, min_kept in [(0.7, 0.1, 1), (0.3, 0.29, 1), (1.0, 0.2, 3), (0.1, 0.07, 2), (0.5, 0.45, 4)]:
        k_max = k_of(ratio, n_total, min_kept)
        for n_valid in (0, 1, 2, 3, 7, 10, 30, 99, 100, 101, 200):
            nv = _kept_counts.count_valid(paddle.to_tensor(np.arange(n_total) >= n_valid))
            k = _kept_counts.k_tensor(nv, ratio, min_kept, k_max)
            m = _kept_counts.m_tensor(nv, drop, k, min_kept)
            want_k = k_of(ratio, n_valid, min_kept)
            assert (int(k), int(m)) == (want_k, m_of(drop, n_valid, want_k, min_kept)), (ratio, drop, n_valid)


# ---------------------------------------------------------------- exactness of the ranked range

SHAPES = [(12,), (6, 5), (3, 4, 5, 6)]
RANGES = [(0.7, 0.1), (1.0, 0.2), (0.3, 0.05), (0.5, 0.45), (0.05, 0.01), (0.999, 0.5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per", ["sample", "pixel"])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("ratio, drop", RANGES)
def test_ranked_range_value_and_gradient_match_a_full_sort(shape, per, ignore, ratio, drop):
    x = distinct(shape, seed=len(shape) * 7 + int(ratio * 100))
    label = labels_for(shape, 3) if ignore else np.zeros(shape, "int64")
    layer = TopKLoss(identity, ratio=ratio, drop=drop, per=per, ignore_index=IGNORE if ignore else None)
    value, grad = run(layer, x, label)
    want, want_grad, k, m = reference_range(x, ratio, drop, per, label, IGNORE if ignore else None)
    assert value == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=0)  # 1/(k−m) on kept, exactly 0 elsewhere
    if per == "pixel":
        assert np.count_nonzero(grad) == k - m
        np.testing.assert_allclose(grad[grad != 0], 1.0 / (k - m), rtol=1e-6)


@pytest.mark.parametrize("per", ["sample", "pixel"])
@pytest.mark.parametrize("n_ignored", [0, 3, 5, 6])
@pytest.mark.parametrize("min_kept", [1, 2, 4])
def test_tiny_n_where_rounding_and_min_kept_bite(per, n_ignored, min_kept):
    x = distinct((6, 1), seed=11)
    label = np.zeros((6, 1), "int64")
    label[:n_ignored] = IGNORE
    for ratio, drop in [(0.5, 0.3), (0.9, 0.8), (1.0, 0.5)]:
        layer = TopKLoss(identity, ratio=ratio, drop=drop, per=per, ignore_index=IGNORE, min_kept=min_kept)
        value, grad = run(layer, x, label)
        want, want_grad, _, _ = reference_range(x, ratio, drop, per, label, IGNORE, min_kept)
        assert value == pytest.approx(want, rel=1e-6, abs=0)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=0)


def test_relations_to_atk_mean_max_and_a_single_rank():
    x = distinct((40,), seed=2)
    label = np.zeros(40, "int64")
    atk = run(TopKLoss(identity, ratio=0.25, per="pixel"), x, label)
    assert run(TopKLoss(identity, ratio=0.25, drop=0.0, per="pixel"), x, label)[0] == atk[0]  # m = 0 is ATk
    assert run(TopKLoss(identity, ratio=1.0, drop=0.0, per="pixel"), x, label)[0] == pytest.approx(x.mean())
    assert run(TopKLoss(identity, ratio=1 / 40, per="pixel"), x, label)[0] == pytest.approx(x.max())
    # m = k − 1: the k-th largest loss alone
    value, grad = run(TopKLoss(identity, ratio=10 / 40, drop=9 / 40, per="pixel"), x, label)
    assert value == pytest.approx(np.sort(x)[-10]) and np.flatnonzero(grad).tolist() == [int(np.argsort(x)[-10])]
    # k = n: the trimmed mean of the easiest n − m
    assert run(TopKLoss(identity, ratio=1.0, drop=0.25, per="pixel"), x, label)[0] == pytest.approx(
        np.sort(x)[:30].mean())


def test_cross_entropy_segmentation_with_ignore_index_and_drop():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((2, 3, 8, 8)).astype("float32")
    label = rng.integers(0, 3, (2, 1, 8, 8))
    label[rng.random(label.shape) < 0.25] = IGNORE
    x = paddle.to_tensor(logits, stop_gradient=False)
    ce = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=IGNORE)
    loss = TopKLoss(ce, ratio=0.4, drop=0.1, per="pixel", ignore_index=IGNORE)(x, paddle.to_tensor(label))
    loss.backward()
    z = logits.astype(np.float64)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    safe = np.where(label == IGNORE, 0, label)
    per_px = -np.take_along_axis(logp, safe, axis=1)[:, 0].ravel()
    valid = (label != IGNORE).ravel()
    order = np.flatnonzero(valid)[np.argsort(-per_px[valid])]
    n = valid.sum()
    k, m = k_of(0.4, n), m_of(0.1, n, k_of(0.4, n))
    assert float(loss) == pytest.approx(per_px[order[m:k]].mean(), rel=1e-5)
    touched = np.flatnonzero(np.abs(x.grad.numpy()).sum(axis=1).ravel() > 0)
    assert sorted(touched.tolist()) == sorted(order[m:k].tolist())


# ---------------------------------------------------------------- band rule


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("per", ["sample", "pixel"])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("band", [(1.0, 2.0), (0.5, 0.5), (math.inf, 0.3), (0.2, math.inf)])
def test_band_value_and_gradient_match_the_reference(shape, per, ignore, band):
    label = labels_for(shape, 5) if ignore else np.zeros(shape, "int64")
    ii = IGNORE if ignore else None
    for seed in range(20):  # the first data set with every unit clear of the bounds
        x = np.random.default_rng(seed).gamma(2.0, 1.0, shape)
        want, want_grad, margin = reference_band(x, *band, per, label, ii)
        if margin > 1e-4:
            break
    value, grad = run(TopKLoss(identity, band=band, per=per, ignore_index=ii), x, label)
    assert value == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=0)
    assert np.count_nonzero(grad) == np.count_nonzero(want_grad)


def test_band_edge_cases():
    same = np.full((8,), 2.5)
    label = np.zeros(8, "int64")
    value, grad = run(TopKLoss(identity, band=(1.0, 2.0), per="pixel"), same, label)
    assert value == 2.5 and np.allclose(grad, 1 / 8)  # σ = 0: every loss is μ, all kept
    # two values: μ ± σ are the values themselves; a = b = 0.5 keeps none
    two = np.array([0.0, 1.0] * 4)
    value, grad = run(TopKLoss(identity, band=(0.5, 0.5), per="pixel"), two, label)
    assert value == 0.0 and not grad.any()
    # the official rule, on a batch with one outlier: the outlier goes
    x = np.r_[np.linspace(0.5, 1.5, 19), 30.0]
    value, grad = run(TopKLoss(identity, band=(1.0, 2.0), per="pixel"), x, np.zeros(20, "int64"))
    assert value == pytest.approx(x[:19].mean()) and grad[-1] == 0


@pytest.mark.parametrize("kwargs", [{"ratio": 0.5, "drop": 0.2}, {"band": (1.0, 2.0)}, {"ratio": 1.0, "drop": 0.5}])
@pytest.mark.parametrize("per", ["sample", "pixel"])
def test_all_ignored_gives_zero_and_zero_gradient(kwargs, per):
    label = np.full((3, 4), IGNORE, "int64")
    value, grad = run(TopKLoss(identity, per=per, ignore_index=IGNORE, **kwargs), distinct((3, 4), 1), label)
    assert value == 0.0 and not grad.any()


def test_forward_never_reads_a_tensor_on_the_host(monkeypatch):
    logits, label = segmentation_batch()
    ce = paddle.nn.CrossEntropyLoss(reduction="none", axis=1, ignore_index=IGNORE)
    layers = [TopKLoss(ce, per=p, ignore_index=ii, **kw) for p in ("sample", "pixel") for ii in (None, IGNORE)
              for kw in ({"ratio": 0.5, "drop": 0.1}, {"ratio": 1.0, "drop": 0.3}, {"band": (1.0, 2.0)})]

    forbid_host_reads(monkeypatch)
    outs = [layer(logits, label) for layer in layers]
    monkeypatch.undo()
    assert all(np.isfinite(float(o)) and float(o) > 0 for o in outs)


# ---------------------------------------------------------------- arguments and state


def test_bad_arguments_say_how_to_fix_them():
    ce = paddle.nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match=r"drop \(0.7\) must be below ratio \(0.7\).*Fix"):
        TopKLoss(ce, ratio=0.7, drop=0.7)
    with pytest.raises(ValueError, match=r"drop must be a number in \[0, 1\).*Fix"):
        TopKLoss(ce, drop=-0.1)
    with pytest.raises(ValueError, match=r"drop must be a number in \[0, 1\)"):
        TopKLoss(ce, drop=True)
    for bad in [(1.0,), (-1.0, 2.0), (float("nan"), 1.0), "wide", (1.0, None)]:
        with pytest.raises(ValueError, match=r"band must be a pair \(a, b\) of numbers >= 0.*Fix"):
            TopKLoss(ce, band=bad)
    with pytest.raises(ValueError, match=r"band=\(1.0, 2.0\) chooses the kept losses itself.*Fix"):
        TopKLoss(ce, ratio=0.5, band=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"threshold keeps every loss above it.*Fix"):
        TopKLoss(ce, ratio=0.5, drop=0.1, threshold=0.3)


def test_setters_check_the_pair_and_checkpoint_state_round_trips():
    layer = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=0.7, drop=0.1)
    assert (layer.ratio, layer.drop) == (0.7, 0.1)
    with pytest.raises(ValueError, match=r"drop \(0.1\) must be below ratio \(0.05\).*Fix"):
        layer.ratio = 0.05
    assert (layer.ratio, layer.drop) == (0.7, 0.1)  # a refused value changes nothing
    layer.set_range(0.05, 0.01)
    assert (layer.ratio, layer.drop) == (0.05, 0.01)
    state = layer.checkpoint_state()
    other = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"))
    other.check_checkpoint_state(state, "ckpt")
    other.set_checkpoint_state(state)
    assert (other.ratio, other.drop) == (0.05, 0.01)
    other.set_checkpoint_state({"ratio": 0.5})  # a checkpoint from before drop existed
    assert (other.ratio, other.drop) == (0.5, 0.0)
    with pytest.raises(ValueError, match=r"ckpt holds drop 0.5 >= ratio 0.5"):
        other.check_checkpoint_state({"ratio": 0.5, "drop": 0.5}, "ckpt")
    band = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), band=(1, 2))
    assert band.band == (1.0, 2.0) and "band=(1.0, 2.0)" in repr(band)
    with pytest.raises(ValueError, match=r"uses band=\(1.0, 2.0\), which has no ratio.*Fix"):
        band.ratio = 0.5
    assert TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none")).ratio == 0.7  # the default


def test_a_threshold_loss_refuses_a_drop_however_it_comes():
    """Refused at construction, and so through the setters and a checkpoint: else the forward
    took the ranked-range branch and silently left the threshold out."""
    layer = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=0.2, threshold=0.3)
    for set_drop in (lambda: setattr(layer, "drop", 0.1), lambda: layer.set_range(0.5, 0.1)):
        with pytest.raises(ValueError, match=r"the two contradict \(drop=0.1 with threshold=0.3\).*Fix"):
            set_drop()
    with pytest.raises(ValueError, match=r"contradict \(ck/3.autoloss holds drop 0.1, this loss threshold=0.3\)"):
        layer.check_checkpoint_state({"ratio": 0.5, "drop": 0.1}, "ck/3.autoloss")
    assert (layer.ratio, layer.drop) == (0.2, 0.0)
    layer.set_range(0.5, 0.0)  # drop 0 stays allowed
    assert (layer.ratio, layer.drop, layer.threshold) == (0.5, 0.0, 0.3)
