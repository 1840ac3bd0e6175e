"""What TopKOnPlateau monitors: never hapi's 'loss', a mode read from the metric's name, and the
name the error suggests for a key the evaluation will not log."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from paddle.callbacks import Callback

from hapi_autoloss import TopKLoss
from hapi_autoloss.callbacks import TopKOnPlateau

LOSS_REFUSED = r"cannot monitor 'loss': the evaluation loss is the TopKLoss at the current k.*Fix: monitor a metric"


class EvalLog(Callback):
    """Each evaluation's logs, with the ratio the next epoch trains with."""

    def __init__(self, layer):
        self.layer = layer
        self.evals: list[dict] = []

    def on_eval_end(self, logs=None):
        self.evals.append({**logs, "ratio": self.layer.ratio})


def blobs(n, seed, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x @ np.random.default_rng(7).normal(size=(8, classes)) + 0.8 * rng.normal(size=(n, classes))).argmax(1)
    return x, y.astype("int64")[:, None]


def dataset(*arrays):
    return paddle.io.TensorDataset([paddle.to_tensor(a) for a in arrays])


def test_loss_is_refused_at_construction_with_the_reason_and_the_fix():
    with pytest.raises(ValueError, match=LOSS_REFUSED + r".*monitor='acc' with model.prepare\(\.\.\., "
                                         r"metrics=\[paddle.metric.Accuracy\(\)\]\)\.$"):
        TopKOnPlateau(monitor="loss")
    for mode in ("min", "max", "auto"):
        with pytest.raises(ValueError, match=LOSS_REFUSED):
            TopKOnPlateau(monitor="loss", mode=mode)
    # only hapi's own key: a user's metric that holds a loss is theirs
    assert TopKOnPlateau(monitor="val_loss").mode == "min"


def test_the_default_monitor_is_acc_in_max_mode():
    plateau = TopKOnPlateau()
    assert (plateau.monitor, plateau.mode) == ("acc", "max")


@pytest.mark.parametrize("name", ["acc", "acc_top1", "Accuracy", "precision", "recall", "auc", "miou", "mIoU",
                                  "f1", "mAP", "dice"])
def test_auto_mode_is_max_for_higher_is_better_names(name):
    assert TopKOnPlateau(monitor=name).mode == "max"


@pytest.mark.parametrize("name", ["err", "error_rate", "mse", "mae", "rmse", "val_loss", "mape", "val_mape"])
def test_auto_mode_is_min_for_lower_is_better_names(name):
    assert TopKOnPlateau(monitor=name).mode == "min"


@pytest.mark.parametrize("name", ["heatmap_mse", "score", "val_ce", "top1"])  # heatmap: "map" and "mse"
def test_auto_mode_refuses_a_name_it_cannot_read(name):
    with pytest.raises(ValueError, match=rf"mode='auto' cannot tell whether a higher '{name}' is better. "
                                         r"Fix: mode='max' \(.*\) or mode='min' \(.*\)\.$"):
        TopKOnPlateau(monitor=name)
    for mode in ("max", "min"):
        assert TopKOnPlateau(monitor=name, mode=mode).mode == mode


def test_explicit_mode_wins_over_the_name():
    assert TopKOnPlateau(monitor="acc", mode="min").mode == "min"
    assert TopKOnPlateau(monitor="err", mode="max").mode == "max"


def test_a_real_fit_cannot_cut_k_on_its_own_rising_eval_loss():
    """The old default's mechanism, seen in a real fit: the evaluation loss is the TopKLoss at the
    current k, so it jumps at each reduction while the accuracy does not fall. Monitoring it would
    have cut k at every evaluation; it is refused before any fit."""
    x, y = blobs(400, 0)
    xv, yv = blobs(200, 1)
    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Linear(8, 16), paddle.nn.ReLU(), paddle.nn.Linear(16, 3))
    loss = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=1.0)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.Adam(0.01, parameters=net.parameters()), loss, metrics=[paddle.metric.Accuracy()])
    log = EvalLog(loss)
    forced = TopKOnPlateau(monitor="acc", patience=0, min_delta=10.0, factor=0.5, min_ratio=0.125, verbose=0)
    model.fit(dataset(x, y), dataset(xv, yv), epochs=4, batch_size=200, shuffle=False, verbose=0,
              callbacks=[forced, log])
    ratios = [e["ratio"] for e in log.evals]
    assert ratios == [1.0, 0.5, 0.25, 0.125]
    eval_loss = [float(np.ravel(e["loss"])[0]) for e in log.evals]
    acc = [e["acc"] for e in log.evals]
    # evaluation i runs at the ratio evaluation i-1 left: from the first reduction on, each one's
    # loss is above the one before (a "worse" value in min mode) while the accuracy does not fall
    assert all(b > a for a, b in zip(eval_loss[1:], eval_loss[2:])), eval_loss
    assert all(b >= a for a, b in zip(acc[1:], acc[2:])), acc
    with pytest.raises(ValueError, match=LOSS_REFUSED):
        TopKOnPlateau(monitor="loss", patience=0)


def test_monitor_recall_keeps_k_while_recall_rises_in_a_real_fit():
    """Recall is higher-is-better: mode='auto' was 'min' for every name without 'acc', and cut k at
    each rise of the recall."""
    x, y = blobs(400, 0, classes=2)
    xv, yv = blobs(200, 1, classes=2)

    class Shifted(paddle.nn.Layer):  # starts predicting almost no positives: recall rises from 0
        def __init__(self):
            super().__init__()
            paddle.seed(0)
            self.linear = paddle.nn.Linear(8, 1)

        def forward(self, inputs):
            return paddle.nn.functional.sigmoid(self.linear(inputs) - 3.0)

    net = Shifted()
    loss = TopKLoss(paddle.nn.BCELoss(reduction="none"), ratio=1.0)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.Adam(0.1, parameters=net.parameters()), loss,
                  metrics=[paddle.metric.Precision(), paddle.metric.Recall()])
    log = EvalLog(loss)
    plateau = TopKOnPlateau(monitor="recall", patience=1, verbose=0)
    model.fit(dataset(x, y.astype("float32")), dataset(xv, yv.astype("float32")), epochs=6, batch_size=100,
              shuffle=False, verbose=0, callbacks=[plateau, log])
    recall = [e["recall"] for e in log.evals]
    assert all(b > a + 1e-4 for a, b in zip(recall, recall[1:])), recall  # it rose at every evaluation
    assert [e["ratio"] for e in log.evals] == [1.0] * 6  # HEAD's 'min': 1, 0.5, 0.25, 0.125, 0.1, 0.1
    assert plateau.mode == "max" and plateau.reductions == 0


def _refusal(metrics, monitor):
    paddle.seed(0)
    net = paddle.nn.Linear(8, 3)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(0.1, parameters=net.parameters()),
                  TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"), ratio=1.0), metrics=metrics)
    x, y = blobs(16, 0)
    with pytest.raises(ValueError) as info:
        model.fit(dataset(x, y), dataset(x, y), epochs=1, batch_size=8, verbose=0,
                  callbacks=[TopKOnPlateau(monitor=monitor, mode="max", verbose=0)])
    return str(info.value)


def test_a_missing_monitor_suggests_the_metric_it_starts():
    message = _refusal([paddle.metric.Accuracy(topk=(1, 5))], "acc")
    assert "they hold ['loss', 'acc_top1', 'acc_top5']" in message
    assert message.endswith("Fix: monitor one of them, e.g. monitor='acc_top1'.")


def test_a_missing_monitor_suggests_the_closest_name():
    message = _refusal([paddle.metric.Precision(), paddle.metric.Recall()], "prec")
    assert message.endswith("Fix: monitor one of them, e.g. monitor='precision'.")
    message = _refusal([paddle.metric.Precision(), paddle.metric.Recall()], "recal")
    assert message.endswith("e.g. monitor='recall'.")
    assert _refusal([paddle.metric.Accuracy()], "score").endswith("e.g. monitor='acc'.")


def test_without_a_metric_the_fix_is_to_add_one():
    message = _refusal(None, "acc")
    assert "they hold ['loss']" in message and "monitor='loss'" not in message
    assert message.endswith("Fix: add a metric to model.prepare, e.g. model.prepare(..., "
                            "metrics=[paddle.metric.Accuracy()]) and monitor='acc'.")


def test_a_saved_state_of_loss_keeps_its_ratios_and_starts_its_watch_over():
    plateau = TopKOnPlateau()
    with pytest.warns(UserWarning, match=r"saved TopKOnPlateau monitored 'loss'.*its ratios go on, its best "
                                         r"value and wait start over for 'acc'"):
        plateau.set_state_dict({"monitor": "loss", "best": 0.3, "wait": 2, "cooldown_counter": 1,
                                "evaluations": 7, "reductions": 1, "ranges": [(0.5, 0.0)]})
    assert (plateau.best, plateau.wait, plateau.cooldown_counter) == (None, 0, 1)
    assert (plateau.evaluations, plateau.reductions, plateau._ranges) == (7, 1, [(0.5, 0.0)])
    with pytest.raises(ValueError, match=r"monitored 'recall', this one monitors 'acc'.*Fix: monitor='recall'"):
        TopKOnPlateau().set_state_dict({"monitor": "recall", "best": 0.3})
