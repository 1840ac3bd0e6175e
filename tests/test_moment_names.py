"""Loaded optimizer moments are found under the names the optimizer creates at its first
update, not at load time: Paddle numbers accumulator names with a process-wide counter
(``unique_name``), which another optimizer or a ``unique_name.guard()`` moves in between."""

import numpy as np
import paddle
from helpers import TwoTaskData, build_model, kendall_loss
from paddle.base import unique_name

import hapi_autoloss
from hapi_autoloss.callbacks import AutoWeightCallback

DATA = TwoTaskData(96)


def fit(model, epochs, save_dir=None):
    model.fit(DATA, epochs=epochs, batch_size=16, verbose=0, shuffle=False, save_dir=save_dir,
              callbacks=[AutoWeightCallback()])


def straight_and_checkpoint(tmp_path):
    straight = build_model(kendall_loss())
    fit(straight, 4)
    fit(build_model(kendall_loss()), 2, str(tmp_path / "ck"))
    return straight, str(tmp_path / "ck" / "final")


def assert_same(model, straight):
    assert model._loss.sigmas() == straight._loss.sigmas()
    for got, want in zip(model.network.parameters(), straight.network.parameters()):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def loaded(model, path):
    model.load(path)
    hapi_autoloss.load_state(model, path)
    return model


def test_a_model_loaded_inside_a_name_guard_trains_outside_it(tmp_path):
    """Failed at the first update: "Optimizer set error, linear_0.w_0_moment1_1 should in state dict"."""
    straight, path = straight_and_checkpoint(tmp_path)
    with unique_name.guard():
        model = loaded(build_model(kendall_loss()), path)
    fit(model, 2)
    assert_same(model, straight)


def test_two_optimizers_over_one_network_loaded_then_trained_in_turn(tmp_path):
    """Both predicted the same suffix at load time; the second to train failed at its first update."""
    straight, path = straight_and_checkpoint(tmp_path)
    first = loaded(build_model(kendall_loss()), path)
    second = paddle.Model(first.network, first._inputs, first._labels)
    second.prepare(paddle.optimizer.Adam(0.05, parameters=second.parameters()), kendall_loss())
    loaded(second, path)
    fit(first, 2)
    assert_same(first, straight)
    # the reference for the second: a fresh model holding the same network and the checkpoint's moments
    reference = loaded(build_model(kendall_loss()), path)
    reference.network.set_state_dict(first.network.state_dict())
    fit(second, 1)
    fit(reference, 1)
    assert_same(second, reference)
