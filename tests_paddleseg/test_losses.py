"""Our PaddleSeg losses against float64 numpy references, and PaddleSeg 2.8.0's own on paddle 3."""

import math
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from paddleseg.models import CrossEntropyLoss, DiceLoss, MixedLoss
from seg_helpers import ROOT, SegData, TinyNet, shapes

import hapi_autoloss
import hapi_autoloss.paddleseg as hp

sys.path.insert(0, os.path.join(ROOT, "scripts"))


def batch(seed=0, n=4):
    _, y = shapes(seed, n)  # labels with an ignored (255) border
    logits = np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype("float32")
    return logits, y


def softmax64(z):
    z = z.astype(np.float64) - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def ce64(logits, y):
    """Per-pixel CE (float64) and the valid mask."""
    p = softmax64(logits)
    valid = y != 255
    yy = np.where(valid, y, 0)
    picked = np.take_along_axis(p, yy[:, None], 1)[:, 0]
    return -np.log(picked), valid


def test_import_hapi_autoloss_does_not_import_paddleseg():
    code = "import sys, hapi_autoloss; assert 'paddleseg' not in sys.modules, sorted(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_paddleseg_ce_fails_on_paddle3_ours_matches_reference():
    logits, y = batch()
    with pytest.raises(TypeError):
        CrossEntropyLoss()(paddle.to_tensor(logits), paddle.to_tensor(y))
    ce, valid = ce64(logits, y)
    out = hp.SafeCrossEntropyLoss()(paddle.to_tensor(logits), paddle.to_tensor(y))
    assert out.shape == [1]  # PaddleSeg's train logs loss.numpy()[0]
    np.testing.assert_allclose(out.numpy()[0], ce[valid].mean(), rtol=1e-5)
    w = np.array([0.2, 1.0, 3.0])
    out = hp.SafeCrossEntropyLoss(weight=list(w))(paddle.to_tensor(logits), paddle.to_tensor(y))
    wy = w[np.where(valid, y, 0)]
    np.testing.assert_allclose(out.numpy()[0], (wy * ce)[valid].sum() / wy[valid].sum(), rtol=1e-5)


def test_paddleseg_dice_overwrites_the_label_ours_does_not():
    logits, y = batch()
    label = paddle.to_tensor(y)
    expected = DiceLoss()(paddle.to_tensor(logits), label)
    assert not (label.numpy() == 255).any()  # PaddleSeg's: the ignored pixels became class 0
    label = paddle.to_tensor(y)
    ours = hp.SafeDiceLoss()(paddle.to_tensor(logits), label)
    np.testing.assert_array_equal(label.numpy(), y)
    np.testing.assert_allclose(ours.numpy()[0], float(expected), rtol=1e-5)


def test_mixed_loss_runs_with_ours_not_with_paddleseg_own():
    logits, y = batch()
    x = paddle.to_tensor(logits, stop_gradient=False)
    with pytest.raises((TypeError, RuntimeError)):
        sum(MixedLoss([CrossEntropyLoss(), DiceLoss()], [0.8, 0.2])(x, paddle.to_tensor(y))).backward()
    x = paddle.to_tensor(logits, stop_gradient=False)
    out = MixedLoss([hp.SafeCrossEntropyLoss(), hp.SafeDiceLoss()], [0.8, 0.2])(x, paddle.to_tensor(y))
    sum(out).backward()
    ce, valid = ce64(logits, y)
    np.testing.assert_allclose(out[0].numpy()[0], 0.8 * ce[valid].mean(), rtol=1e-5)
    assert np.isfinite(x.grad.numpy()).all() and np.abs(x.grad.numpy()).sum() > 0


def test_topk_keeps_min_kept_paddleseg_one_fewer():
    from study_paddleseg import PaddleSegOhem

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, (4, 16, 16))
    logits = (4.0 * np.eye(3)[y].transpose(0, 3, 1, 2) + rng.standard_normal((4, 3, 16, 16))).astype("float32")
    ce, _ = ce64(logits, y)
    min_kept = 200
    assert (ce > -math.log(0.7)).sum() < min_kept  # the threshold gets raised to the min_kept-th pixel
    kept = {}
    for name, fn in (("paddleseg", PaddleSegOhem(0.7, min_kept)), ("ours", hp.TopKLoss(0.01, min_kept, thresh=0.7))):
        x = paddle.to_tensor(logits, stop_gradient=False)
        out = fn(x, paddle.to_tensor(y))
        out.backward()
        kept[name] = int((np.abs(x.grad.numpy()).sum(1) > 0).sum())
        top = np.sort(ce.ravel())[::-1]
        np.testing.assert_allclose(out.numpy()[0], top[: kept[name]].mean(), rtol=1e-4)
    assert kept == {"paddleseg": min_kept - 1, "ours": min_kept}


def test_topk_threshold_and_ignore():
    logits, y = batch()
    ce, valid = ce64(logits, y)
    out = hp.TopKLoss(ratio=0.1, thresh=0.5)(paddle.to_tensor(logits), paddle.to_tensor(y))
    v = ce[valid]
    k = max(math.ceil(0.1 * v.size - 1e-6), 1)
    keep = np.zeros(v.size, bool)
    keep[np.argsort(-v)[:k]] = True
    keep |= v > -math.log(0.5)
    np.testing.assert_allclose(out.numpy()[0], v[keep].mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="thresh"):
        hp.TopKLoss(thresh=1.5)


def test_autoweight_liebel_value_and_checks():
    logits, y = batch()
    aw = hp.AutoWeight([{"type": "SafeCrossEntropyLoss"}, {"type": "SafeDiceLoss"}], method="liebel")
    assert aw.task_names == ["crossentropy", "dice"]
    out = aw(paddle.to_tensor(logits), paddle.to_tensor(y))
    assert out.shape == [1]
    ce, valid = ce64(logits, y)
    dice = float(hp.SafeDiceLoss()(paddle.to_tensor(logits), paddle.to_tensor(y)))
    c = 1.0  # liebel: Σ L_i / (2 c_i²) + ln(1 + c_i²)
    expected = (ce[valid].mean() + dice) / (2 * c * c) + 2 * math.log(1 + c * c)
    np.testing.assert_allclose(out.numpy()[0], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="SafeCrossEntropyLoss"):
        hp.AutoWeight([CrossEntropyLoss(), hp.SafeDiceLoss()])
    with pytest.raises(ValueError, match="SafeDiceLoss"):
        hp.AutoWeight([{"type": "SafeCrossEntropyLoss"}, {"type": "DiceLoss"}])
    supported = ("aligned_mtl, cagrad, db_mtl, dwa, equal, fixed, gls, gradnorm, imtl, imtl_l, kendall, liebel, "
                 "mgda, nash_mtl, pcgrad, rlw, simple, stch, uw_so")
    with pytest.raises(ValueError, match=rf"^method='famo' needs a forward after each update, .*\. Fix: use one "
                                         rf"of {supported}, or train through paddle"):  # a hook train never calls
        hp.AutoWeight([hp.SafeCrossEntropyLoss(), hp.SafeDiceLoss()], method="famo")
    assert hp.AutoWeight([hp.SafeCrossEntropyLoss(), hp.SafeDiceLoss()], method="mgda").method == "mgda"
    with pytest.raises(ValueError, match="ignore"):
        hp.AutoWeight([hp.SafeCrossEntropyLoss(ignore_index=0), hp.SafeDiceLoss()], ignore_index=255)


def test_attach_refuses_mistakes():
    model = TinyNet()
    opt = paddle.optimizer.AdamW(1e-3, parameters=TinyNet().parameters())
    aw = hp.AutoWeight([hp.SafeCrossEntropyLoss(), hp.SafeDiceLoss()], method="liebel")
    with pytest.raises(ValueError, match="none of model's parameters"):
        hp.attach(model, {"types": [aw], "coef": [1]}, opt)
    core = hapi_autoloss.AutoWeight([hp.SafeCrossEntropyLoss(), hp.SafeDiceLoss()], method="liebel",
                                    routing="shared")
    opt = paddle.optimizer.AdamW(1e-3, parameters=model.parameters())
    with pytest.raises(TypeError, match=r"hapi_autoloss\.paddleseg\.AutoWeight"):
        hp.attach(model, {"types": [core], "coef": [1]}, opt)
    with pytest.warns(UserWarning, match="nothing to do"):
        assert hp.attach(model, {"types": [hp.SafeDiceLoss()], "coef": [1]}, opt) == []
    for coef in ([], [1, 0.4]):  # train's coef[i]: an IndexError at the first iteration, or ignored
        with pytest.raises(ValueError, match=rf"1 types but {len(coef)} coef\. Fix: one coef per entry"):
            hp.attach(model, {"types": [aw], "coef": coef}, opt)
    assert len(SegData()) == 16


def test_autoweight_from_a_nested_dict_config():
    aw = hp._losses.build({"type": "AutoWeight", "method": "fixed", "weights": [0.8, 0.2],
                           "losses": [{"type": "TopKLoss", "ratio": 0.5}, {"type": "SafeDiceLoss"}]}, "loss")
    assert isinstance(aw, hp.AutoWeight) and aw.task_names == ["topk", "dice"]
    logits, y = batch()
    ce, valid = ce64(logits, y)
    v = ce[valid]
    top = np.sort(v)[::-1][: math.ceil(0.5 * v.size)].mean()
    dice = float(hp.SafeDiceLoss()(paddle.to_tensor(logits), paddle.to_tensor(y)))
    out = aw(paddle.to_tensor(logits), paddle.to_tensor(y))
    np.testing.assert_allclose(out.numpy()[0], 0.8 * top + 0.2 * dice, rtol=1e-5)


def test_topk_ranked_range_band_and_class_balanced_from_the_config_keys():
    logits, y = batch()
    ce, valid = ce64(logits, y)
    v = np.sort(ce[valid])[::-1]
    n = v.size
    k, m = max(math.ceil(0.3 * n - 1e-6), 1), math.floor(0.05 * n + 1e-6)
    out = hp.TopKLoss(ratio=0.3, drop=0.05)(paddle.to_tensor(logits), paddle.to_tensor(y))
    np.testing.assert_allclose(out.numpy()[0], v[m:k].mean(), rtol=1e-5)
    mu, sd = v.mean(), v.std()
    inside = v[(v <= mu + 1.0 * sd) & (v >= mu - 2.0 * sd)]
    out = hp.TopKLoss(band=(1.0, 2.0))(paddle.to_tensor(logits), paddle.to_tensor(y))
    np.testing.assert_allclose(out.numpy()[0], inside.mean(), rtol=1e-5)
    # per: class, ratio 1: the mean over the classes present of each class's mean pixel CE
    means = [ce[valid & (y == c)].mean() for c in range(3) if np.any(valid & (y == c))]
    out = hp.TopKLoss(ratio=1.0, per="class")(paddle.to_tensor(logits), paddle.to_tensor(y))
    np.testing.assert_allclose(out.numpy()[0], np.mean(means), rtol=1e-5)
    assert len(means) >= 2 and abs(np.mean(means) - ce[valid].mean()) > 1e-3  # not the pixel mean
    with pytest.raises(ValueError, match=r"band=.*Fix"):
        hp.TopKLoss(ratio=0.5, band=(1.0, 2.0))
