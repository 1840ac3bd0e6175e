"""PaddleSeg's own loss arguments on ours: OhemCrossEntropyLoss's thresh/min_kept on TopKLoss, CE's and
Dice's arguments on the Safe losses, the dataset's ignore_index for AutoWeight's config dicts."""

import math

import numpy as np
import paddle
import pytest
from paddleseg.models import DiceLoss, OhemCrossEntropyLoss

import hapi_autoloss.paddleseg as hp


def softmax64(z):
    z = z.astype(np.float64) - z.max(1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def easy_batch(seed=0, margin=4.0):
    """A trained net's logits: most pixels easy (p > 0.7), ignored (255) top rows."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, (2, 32, 32))
    y[:, :2] = 255
    onehot = np.eye(3)[np.where(y == 255, 0, y)].transpose(0, 3, 1, 2)
    logits = 0.5 * rng.standard_normal((2, 3, 32, 32)) + margin * onehot
    return logits.astype("float32"), y


def ohem64(logits, y, thresh, min_kept):
    """PaddleSeg's OHEM rule in float64: the valid pixels whose true-class probability is below thresh,
    and at least min_kept of them (the lowest probabilities; all when min_kept >= the valid count)."""
    valid = y != 255
    p = np.take_along_axis(softmax64(logits), np.where(valid, y, 0)[:, None], 1)[:, 0][valid]
    keep = p < thresh
    if min_kept >= p.size:
        keep[:] = True
    elif keep.sum() < min_kept:
        keep[np.argsort(p, kind="stable")[:min_kept]] = True
    return -np.log(p[keep]).mean(), int(keep.sum())


@pytest.mark.parametrize("margin,min_kept,kept", [(4.0, 100, 100), (2.0, 100, 500), (4.0, 5000, 1920)])
def test_topk_thresh_min_kept_without_ratio_is_paddleseg_ohem(margin, min_kept, kept):
    logits, y = easy_batch(margin=margin)
    want, n = ohem64(logits, y, 0.7, min_kept)
    assert n == kept  # min_kept; all 500 below thresh (fewer than 70% of 1920); every valid pixel
    out = hp.TopKLoss(thresh=0.7, min_kept=min_kept)(paddle.to_tensor(logits), paddle.to_tensor(y))
    np.testing.assert_allclose(out.numpy()[0], want, rtol=1e-5)
    threshold = hp.TopKLoss(threshold=-math.log(0.7), min_kept=min_kept)(paddle.to_tensor(logits), paddle.to_tensor(y))
    np.testing.assert_allclose(threshold.numpy()[0], want, rtol=1e-5)


def test_topk_min_kept_alone_refused_ratio_default_kept():
    with pytest.raises(ValueError, match=r"without ratio or thresh.*Fix: give thresh .*or ratio="):
        hp.TopKLoss(min_kept=100)
    assert hp.TopKLoss().ratio == 0.7 and hp.TopKLoss(ratio=0.1, min_kept=5).min_kept == 5


def test_ohem_refusal_names_the_exact_topk_config():
    with pytest.raises(ValueError, match=r"Fix: use \{type: TopKLoss, thresh: 0.6, min_kept: 50, ignore_index: 0\}"):
        hp.AutoWeight([OhemCrossEntropyLoss(thresh=0.6, min_kept=50, ignore_index=0), hp.SafeDiceLoss(ignore_index=0)])


def test_safe_ce_takes_paddleseg_arguments():
    logits, y = easy_batch(margin=1.0)
    p = softmax64(logits)
    valid = y != 255
    ce = -np.log(np.take_along_axis(p, np.where(valid, y, 0)[:, None], 1)[:, 0])
    x, label = paddle.to_tensor(logits), paddle.to_tensor(y)
    out = hp.SafeCrossEntropyLoss(avg_non_ignore=False)(x, label)  # PaddleSeg: Σ_valid CE / every pixel
    np.testing.assert_allclose(out.numpy()[0], ce[valid].sum() / y.size, rtol=1e-5)
    nhwc = hp.SafeCrossEntropyLoss(data_format="NHWC")(x.transpose([0, 2, 3, 1]), label)
    np.testing.assert_allclose(nhwc.numpy()[0], ce[valid].mean(), rtol=1e-5)
    nchw = hp.SafeCrossEntropyLoss(data_format="NCHW")(x, label)
    np.testing.assert_allclose(nchw.numpy()[0], ce[valid].mean(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"top_k_percent_pixels=0.2\). Fix: use \{type: TopKLoss, ratio: 0.2\}"):
        hp.AutoWeight([{"type": "SafeCrossEntropyLoss", "top_k_percent_pixels": 0.2}, {"type": "SafeDiceLoss"}])
    with pytest.raises(ValueError, match="Fix: avg_non_ignore=True"):
        hp.SafeCrossEntropyLoss(weight=[1.0, 2.0, 3.0], avg_non_ignore=False)
    with pytest.raises(ValueError, match="data_format"):
        hp.SafeCrossEntropyLoss(data_format="NDHWC")


def test_safe_dice_class_weight_equals_paddleseg():
    logits, y = easy_batch(margin=1.0)
    w = [0.1, 1.0, 5.0]
    want = float(DiceLoss(weight=w)(paddle.to_tensor(logits), paddle.to_tensor(y)))  # writes into its label copy
    label = paddle.to_tensor(y)
    out = hp.SafeDiceLoss(weight=w)(paddle.to_tensor(logits), label)
    np.testing.assert_allclose(out.numpy()[0], want, rtol=1e-5)
    np.testing.assert_array_equal(label.numpy(), y)
    # float64: Σ_c w_c (1 − mean_n (2I + 1) / (U + 1)) / C over the non-ignored pixels
    p, m = softmax64(logits), (y != 255)[:, None]
    t = (np.where(y == 255, 0, y)[:, None] == np.arange(3)[None, :, None, None]) * m
    ratio = (2 * (p * m * t).sum((2, 3)) + 1) / ((p * m + t).sum((2, 3)) + 1 + 1e-8)
    np.testing.assert_allclose(out.numpy()[0], (np.array(w) * (1 - ratio.mean(0))).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="2 class weights for 3 classes"):
        hp.SafeDiceLoss(weight=[1.0, 2.0])(paddle.to_tensor(logits), paddle.to_tensor(y))


def test_dataset_ignore_index_reaches_config_dicts_without_their_own():
    from hapi_autoloss.paddleseg import _loss_args
    losses = [{"type": "SafeCrossEntropyLoss"}, {"type": "SafeDiceLoss", "ignore_index": 0}, hp.SafeDiceLoss(),
              {"type": "MixedLoss", "losses": [], "coef": []}]
    out = _loss_args.with_ignore_index(losses, 0)
    assert out[0] == {"type": "SafeCrossEntropyLoss", "ignore_index": 0} and out[1] is losses[1]
    assert out[2] is losses[2] and "ignore_index" not in out[3] and "ignore_index" not in losses[0]
    assert _loss_args.with_ignore_index(losses, None) is losses
    dicts = [{"type": "SafeCrossEntropyLoss"}, {"type": "TopKLoss", "ratio": 0.5}]
    aw = hp.AutoWeight(_loss_args.with_ignore_index(dicts, 0), method="liebel", ignore_index=0)
    assert [f.ignore_index for f in aw.losses] == [0, 0]


def test_autoweight_gives_the_datasets_ignore_index_to_its_entries():
    """PaddleSeg's config checker gives the dataset's ignore_index to AutoWeight, not to the dicts
    in its losses: with ignore_index 0, AutoWeight was refused ("losses[0] ignores label 255")."""
    aw = hp.AutoWeight([{"type": "SafeCrossEntropyLoss"}, {"type": "SafeDiceLoss"}], method="liebel", ignore_index=0)
    assert [f.ignore_index for f in aw.losses] == [0, 0]
    with pytest.raises(ValueError, match="leave it out there to take the dataset's"):
        hp.AutoWeight([{"type": "SafeCrossEntropyLoss", "ignore_index": 255}], method="liebel", ignore_index=0)


def seg_fit(loss, callback):
    """A hapi fit of a 1×1 conv on 8×8 labels; returns the model's parameters before it."""
    paddle.seed(0)
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((8, 3, 8, 8)).astype("float32"))
    y = paddle.to_tensor(rng.integers(0, 3, (8, 1, 8, 8)).astype("int64"))
    net = paddle.nn.Conv2D(3, 3, 1)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(0.1, parameters=net.parameters()), loss)
    before = [p.numpy().copy() for p in net.parameters()]
    data = paddle.io.TensorDataset([x, y])
    model.fit(data, data, batch_size=4, epochs=3, verbose=0, callbacks=[callback])
    return before, net.parameters()


@pytest.mark.parametrize("kwargs,rule", [(dict(thresh=0.7, min_kept=10), "thresh=0.7"),
                                         (dict(threshold=0.3), "threshold=0.3")])
def test_topk_schedulers_refuse_ohem_rule_before_any_step(kwargs, rule):
    """TopKScheduler made OHEM's rule a plain top-k (ratios 0.5..1.0, thresh without effect at 1.0);
    TopKOnPlateau never acted on it."""
    from hapi_autoloss.callbacks import TopKOnPlateau, TopKScheduler
    for callback, verb in [(TopKScheduler(1.0, 0.5), "anneal"), (TopKOnPlateau(monitor="acc", patience=0), "reduce")]:
        loss = hp.TopKLoss(**kwargs)
        match = (rf"cannot {verb} a TopKLoss's ratio: TopKLoss\({rule}\) without ratio is OHEM's rule, which has no "
                 r"ratio to anneal. Fix: give ratio= to combine both .*or drop the callback.")
        with pytest.raises(ValueError, match=match):
            seg_fit(loss, callback)
        assert loss.ratio == 1e-12
    combined = hp.TopKLoss(ratio=1.0, **kwargs)  # thresh and a fraction: the ratio anneals
    assert combined.anneal_refusal is None and hp.TopKLoss(ratio=0.5).anneal_refusal is None
    before, after = seg_fit(combined, TopKScheduler(1.0, 0.5))
    assert combined.ratio == 0.5 and any((b != a.numpy()).any() for b, a in zip(before, after))


def test_safe_dice_weight_takes_arrays_and_numpy_numbers():
    logits, y = easy_batch(margin=1.0)
    want = float(DiceLoss(weight=[0.1, 1.0, 5.0])(paddle.to_tensor(logits), paddle.to_tensor(y)))
    for w in [np.array([0.1, 1.0, 5.0]), [np.float32(0.1), np.float64(1.0), np.int64(5)], (0.1, 1, 5.0)]:
        out = hp.SafeDiceLoss(weight=w)(paddle.to_tensor(logits), paddle.to_tensor(y))
        np.testing.assert_allclose(out.numpy()[0], want, rtol=1e-6)
    for w, match in [([True, 1.0, 1.0], r"weight\[0\] is a bool \(True\), not a number. Fix"),
                     ([1.0, "2", 1.0], r"weight\[1\] is a str \('2'\), not a number. Fix"),
                     ("1,2,3", "non-empty 1-D list"), (np.ones((3, 1)), "non-empty 1-D list"), ([], "non-empty")]:
        with pytest.raises(ValueError, match=match):
            hp.SafeDiceLoss(weight=w)


@pytest.mark.parametrize("thresh,min_kept", [(1.0, 100), (1.5, 100), (0.7, 0)])
def test_ohem_refusal_keeping_every_pixel_names_the_plain_ce(thresh, min_kept):
    """PaddleSeg's rule keeps every valid pixel at thresh >= 1 or min_kept == 0: the suggested TopKLoss
    config was itself refused (thresh outside (0, 1), min_kept < 1)."""
    with pytest.raises(ValueError, match=r"Fix: use \{type: SafeCrossEntropyLoss, ignore_index: 0\} \(with thresh="):
        hp.AutoWeight([OhemCrossEntropyLoss(thresh=thresh, min_kept=min_kept, ignore_index=0), hp.SafeDiceLoss()])
    logits, y = easy_batch(margin=1.0)
    out = hp.SafeCrossEntropyLoss(ignore_index=255)(paddle.to_tensor(logits), paddle.to_tensor(y))
    want, kept = ohem64(logits, y, 2.0, 0)  # every valid pixel (no probability reaches 1.0 here)
    assert kept == (y != 255).sum()
    np.testing.assert_allclose(out.numpy()[0], want, rtol=1e-5)


def test_safe_ce_top_k_percent_pixels_fix_names_range_and_weights():
    for value in [1.5, 0.0, -0.2, "0.2"]:
        with pytest.raises(ValueError, match=r"top_k_percent_pixels must lie in \(0, 1\].*Fix: leave it at 1.0"):
            hp.SafeCrossEntropyLoss(top_k_percent_pixels=value)
    with pytest.raises(ValueError, match=r"ratio: 0.2\} \(.*unweighted: TopKLoss does not carry the class weights"):
        hp.SafeCrossEntropyLoss(top_k_percent_pixels=0.2, weight=[1.0, 2.0, 3.0])
    assert hp.SafeCrossEntropyLoss(top_k_percent_pixels=1).weight is None


def test_a_nan_dice_weight_and_the_threshold_rules_refusal_text():
    with pytest.raises(ValueError, match=r"weight\[1\] is nan, not a finite number\. Fix: one finite weight"):
        hp.SafeDiceLoss(weight=np.array([1.0, np.nan, 1.0]))
    from hapi_autoloss.paddleseg import _loss_args
    assert "the pixels whose loss is above threshold" in _loss_args.ohem_anneal_refusal("threshold=0.3")
    assert "the pixels whose probability is below thresh" in _loss_args.ohem_anneal_refusal("thresh=0.7")


def test_ohem_refusal_at_thresh_zero_or_below_names_a_config_that_runs():
    """thresh <= 0 keeps no pixel by probability, so PaddleSeg's rule is the min_kept hardest pixels: the
    suggested config (YAML as a user pastes it) builds and equals the mean of those pixels' CE in float64."""
    import re

    import yaml
    for thresh in (0.0, -0.3):
        with pytest.raises(ValueError) as err:
            hp.AutoWeight([OhemCrossEntropyLoss(thresh=thresh, min_kept=100, ignore_index=255), hp.SafeDiceLoss()])
        config = re.search(r"Fix: use (\{.*?\})", str(err.value)).group(1)
        assert f"thresh={thresh} no probability is below thresh: the 100 hardest pixels" in str(err.value)
        cfg = yaml.safe_load(config)
        loss = hp.TopKLoss(**{k: v for k, v in cfg.items() if k != "type"})
        logits, y = easy_batch(margin=2.0)
        valid = y != 255
        p = np.take_along_axis(softmax64(logits), np.where(valid, y, 0)[:, None], 1)[:, 0][valid]
        want = -np.log(np.sort(p)[:100]).mean()
        np.testing.assert_allclose(loss(paddle.to_tensor(logits), paddle.to_tensor(y)).numpy()[0], want, rtol=1e-5)
