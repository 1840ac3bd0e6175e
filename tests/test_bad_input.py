"""The bad-input catalogue (issue 5) for AutoWeight and AutoWeightCallback: each error is
raised at construction, at train begin or in the first forward (before any update), and
names the problem and the fix. TopKLoss, TopKScheduler and the exporters have theirs
in their own test files."""

import warnings

import numpy as np
import paddle
import pytest
from helpers import TwoTaskData, build_model, kendall_loss
from paddle.static import InputSpec

from hapi_autoloss import AutoWeight, TopKLoss, attach
from hapi_autoloss.callbacks import AutoWeightCallback

mse = paddle.nn.MSELoss()


def check(info, *fragments):
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Fix" in message, message


def test_label_shape_that_cannot_match_the_output_of_a_regression_task():
    aw = kendall_loss()
    with pytest.raises(ValueError) as info:
        aw(paddle.ones([8, 1]), paddle.ones([8, 1]), paddle.ones([8]), paddle.ones([8, 1]))
    check(info, "task 'y1'", "[8, 1]", "[8]", "broadcast", "Fix: reshape the label (or the output) to [8, 1].")
    with pytest.raises(ValueError) as info:  # no reshape makes [8, 2] of [8, 1]: the sizes differ
        aw(paddle.ones([8, 1]), paddle.ones([8, 1]), paddle.ones([8, 2]), paddle.ones([8, 1]))
    check(info, "Fix: the network's output for this task holds 1 value(s) per sample and the label 2")
    assert "reshape" not in str(info.value)


def test_batch_sizes_that_differ_within_a_task():
    aw = AutoWeight([paddle.nn.CrossEntropyLoss()], method="kendall", task_types=["classification"])
    with pytest.raises(ValueError) as info:
        aw(paddle.ones([8, 3]), paddle.zeros([4, 1], dtype="int64"))
    check(info, "different batch sizes", "[8, 3]", "[4, 1]")


def test_integer_output_given_to_a_regression_loss():
    aw = kendall_loss()
    with pytest.raises(TypeError) as info:
        aw(paddle.ones([8, 1], dtype="int64"), paddle.ones([8, 1]), paddle.ones([8, 1]), paddle.ones([8, 1]))
    check(info, "task 'y1'", "regression", "int64")


def test_shape_errors_come_before_any_update_inside_fit():
    class WrongLabels(TwoTaskData):
        def __getitem__(self, i):
            x, y1, y2 = super().__getitem__(i)
            return x, y1[0], y2  # y1 of shape [] per sample: [16] per batch

    loss = kendall_loss()
    model = build_model(loss)
    before = model.network.trunk.weight.numpy().copy()
    with pytest.raises(ValueError, match="task 'y1'"):
        model.fit(WrongLabels(), epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback()])
    np.testing.assert_array_equal(model.network.trunk.weight.numpy(), before)
    np.testing.assert_array_equal(loss.s.numpy(), [0.0, 0.0])


@pytest.mark.parametrize(
    "kwargs,exc,fragments",
    [
        ({"method": "liebel", "clamp": (0.0, 10.0)}, ValueError, ["must stay > 0"]),
        ({"method": "equal", "clamp": (-1.0, 1.0)}, ValueError, ["clamp does not apply to method='equal'"]),
        ({"method": "fixed", "weights": [1.0], "init": 0.5}, ValueError,
         ["init does not apply to method='fixed', which takes weights"]),
        ({"method": "dwa", "temperature": 0.0}, ValueError, ["temperature must be a finite number > 0"]),
        ({"method": "equal", "routing": [(0, -1)]}, ValueError, ["non-negative tensor indices"]),
        ({"method": "equal", "routing": {"other": (0, 1)}}, ValueError, ["missing ['task0']", "unknown ['other']"]),
        ({"method": "kendall", "task_types": "regression"}, TypeError, ["not a string"]),
        ({"method": "simple", "clamp": (float("nan"), 1.0)}, ValueError, ["finite"]),
    ],
)
def test_construction_errors(kwargs, exc, fragments):
    with pytest.raises(exc) as info:
        AutoWeight([mse], **kwargs)
    check(info, *fragments)


def test_losses_of_the_wrong_type():
    with pytest.raises(TypeError) as info:
        AutoWeight(mse)
    check(info, "list of losses or a dict")


def test_sub_loss_returning_a_non_tensor():
    aw = AutoWeight([lambda o, y: 1.0], method="equal")
    with pytest.raises(TypeError) as info:
        aw(paddle.ones([2]), paddle.ones([2]))
    check(info, "returned float")


def test_callback_arguments():
    for bad in (0, float("inf"), True, "2"):  # inf, True and "2" passed, or gave a bare TypeError
        with pytest.raises(ValueError) as info:
            AutoWeightCallback(lr_scale=bad)
        check(info, "lr_scale must be a finite number > 0")
    with pytest.raises(ValueError) as info:  # the plain attach checked only > 0: inf reached the optimizer
        attach(build_model(kendall_loss()), lr_scale=float("inf"))
    check(info, "lr_scale must be a finite number > 0")


class SumLoss(paddle.nn.Layer):
    def forward(self, o1, o2, y1, y2):
        return mse(o1, y1) + mse(o2, y2)


def test_callback_with_nothing_to_learn_warns_once_and_trains():
    model = build_model(SumLoss())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(TwoTaskData(32), epochs=2, batch_size=16, verbose=0, callbacks=[AutoWeightCallback()])
    nothing = [w for w in caught if "nothing to do" in str(w.message)]
    assert len(nothing) == 1 and "Fix" in str(nothing[0].message)


def test_static_graph_mode_is_refused_with_a_clear_error():
    paddle.enable_static()
    try:
        with pytest.raises(RuntimeError) as info:
            kendall_loss()
        check(info, "dynamic graph mode", "paddle.enable_static()")
        # TopKLoss said "CrossEntropyLoss returned Value, not a paddle.Tensor" at the first batch
        with pytest.raises(RuntimeError) as info:
            TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"))
        check(info, "dynamic graph mode", "paddle.enable_static()")
    finally:
        paddle.disable_static()
    # A TopKLoss built before static mode was turned on: the first forward names the mode.
    topk = TopKLoss(paddle.nn.CrossEntropyLoss(reduction="none"))
    paddle.enable_static()
    try:
        net = paddle.nn.Linear(8, 4)
        model = paddle.Model(net, [InputSpec([None, 8], "float32", "x")], [InputSpec([None, 1], "int64", "y")])
        with pytest.raises(RuntimeError) as info:
            model.prepare(paddle.optimizer.SGD(0.1, parameters=model.parameters()), topk)
        check(info, "dynamic graph mode", "paddle.enable_static()")
    finally:
        paddle.disable_static()
    loss = kendall_loss()
    model = build_model(loss)
    paddle.enable_static()
    try:
        with pytest.raises(RuntimeError, match="dynamic graph mode"):
            attach(model)
    finally:
        paddle.disable_static()


def test_dwa_without_the_callback_raises_too():
    loss = AutoWeight({"y1": mse, "y2": mse}, method="dwa")
    with pytest.raises(RuntimeError, match="AutoWeightCallback"):
        build_model(loss).fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0)
    fixed = AutoWeight({"y1": mse, "y2": mse}, method="fixed", weights=[0.8, 0.2])
    build_model(fixed).fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0)  # nothing to learn: fine


# ---------------------------------------------------------------- from the cold review of the weighting side


@pytest.mark.parametrize("kwargs,fragments", [
    ({"method": "liebel", "clamp": 5}, ["clamp must be two finite numbers", "got 5"]),
    ({"method": "liebel", "clamp": (1.0, 2.0, 3.0)}, ["clamp must be two finite numbers"]),
    ({"method": "kendall", "clamp": (False, True)}, ["clamp must be two finite numbers"]),  # bools
    ({"method": "liebel", "init": 0.0}, ["within clamp (0.01, 100.0)", "got 0.0"]),  # c = 0: weight 1/(2·0.01²)
    ({"method": "kendall", "init": 20.0}, ["within clamp (-10.0, 10.0)"]),
    ({"method": "liebel", "init": True}, ["init must be 'auto' or a number"]),
    ({"method": "rlw", "seed": True}, ["seed must be an int >= 0"]),
    ({"method": "fixed", "weights": [0.0]}, ["at least one > 0"]),  # trained nothing, silently
    ({"method": "fixed", "weights": ["0.5"]}, ["must be numbers"]),
    ({"method": "fixed", "weights": [True]}, ["must be numbers"]),
])
def test_number_arguments_are_numbers_in_range(kwargs, fragments):
    with pytest.raises(ValueError) as info:
        AutoWeight([mse], **kwargs)
    check(info, *fragments)


def test_numpy_scalars_are_numbers():
    """np.float32(1.0) was refused with 'must be a finite number > 0, got np.float32(1.0)'."""
    assert AutoWeight([mse, mse], method="stch", mu=np.float32(0.5)).weighting.mu == 0.5
    assert AutoWeight([mse, mse], method="dwa", temperature=np.float32(3.0)).weighting.temperature == 3.0
    assert AutoWeight([mse, mse], method="rlw", seed=np.int64(4)).weighting.seed == 4
    assert AutoWeight([mse, mse], method="liebel", init=np.float32(2.0), clamp=(np.float64(0.1), 10)).sigmas() == {
        "task0": 2.0, "task1": 2.0}
    assert AutoWeight([mse, mse], method="fixed", weights=[np.float32(0.8), 0.2]).weighting.values == [
        pytest.approx(0.8), pytest.approx(0.2)]
    # one-element arrays and tensors too (refused for a few hours on the day these checks came in)
    assert AutoWeight([mse], method="kendall", clamp=np.array([-5.0, 5.0]), task_types=["regression"]).weighting.clamp \
        == (-5.0, 5.0)
    assert AutoWeight([mse, mse], method="fixed", weights=[paddle.to_tensor(0.8), np.array(0.2)]).weighting.values == [
        pytest.approx(0.8), pytest.approx(0.2)]


def test_numbers_past_floats_range_or_of_time_are_refused_with_the_fix():
    """A raw OverflowError and TypeError came out of float()."""
    for bad in ([10**400, 1.0], [np.array([5], dtype="timedelta64[s]"), 1.0]):
        with pytest.raises(ValueError) as info:
            AutoWeight([mse, mse], method="fixed", weights=bad)
        check(info, "fixed weights must be numbers")
    with pytest.raises(ValueError) as info:
        AutoWeight([mse], method="stch", mu=10**400)
    check(info, "mu must be a finite number > 0")
    assert AutoWeight([mse], method="liebel", clamp=(1.0, 5.0), init=paddle.to_tensor(2.0)).s.numpy().tolist() == [2.0]


def test_without_init_a_narrower_clamp_moves_the_default_start_into_it():
    """kendall with clamp=(1, 5) started s at 0, outside its own clamp."""
    kendall = AutoWeight([mse], method="kendall", clamp=(1.0, 5.0), task_types=["regression"])
    assert kendall.s.numpy().tolist() == [1.0]
    liebel = AutoWeight([mse], method="liebel", clamp=(2.0, 10.0))
    assert liebel.s.numpy().tolist() == [2.0]
    with pytest.raises(ValueError) as info:
        AutoWeight([mse], method="liebel", clamp=(2.0, 10.0), init=1.0)
    check(info, "within clamp (2.0, 10.0)", "init=2.0")  # the Fix suggests a value it accepts


def test_task_names_equal_as_text_are_refused():
    with pytest.raises(ValueError) as info:
        AutoWeight({1: mse, "1": mse})
    check(info, "equal as text", "[1, '1']")


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_a_loss_of_integers_is_refused_before_any_update(dtype):
    """It was cast to float32: its task never trained the network, and σ learned from the truncated value."""
    class Truncated(paddle.nn.Layer):
        def forward(self, out, label):
            return mse(out, label).astype(dtype)

    loss = AutoWeight({"y1": Truncated(), "y2": mse}, method="kendall", task_types=["regression"] * 2)
    model = build_model(loss)
    before = model.network.trunk.weight.numpy().copy()
    with pytest.raises(TypeError) as info:
        model.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback()])
    check(info, "loss 'y1'", dtype, "no gradient")
    np.testing.assert_array_equal(model.network.trunk.weight.numpy(), before)
    np.testing.assert_array_equal(loss.s.numpy(), [0.0, 0.0])


def test_the_error_without_the_callback_names_the_methods_own_calls():
    """attach + train_batch left famo's logits at 0 and stch in warm-up: the Fix named only dwa's call."""
    for method, call in (("famo", "loss.after_update("), ("stch", "loss.end_epoch()"), ("dwa", "loss.end_epoch()")):
        model = build_model(AutoWeight({"y1": mse, "y2": mse}, method=method))
        with pytest.raises(RuntimeError) as info:
            model.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0)
        check(info, "AutoWeightCallback", call)
    kendall = build_model(kendall_loss())
    with pytest.raises(RuntimeError) as info:
        kendall.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0)
    assert "end_epoch" not in str(info.value) and "after_update" not in str(info.value)


@pytest.mark.parametrize("method", ["pcgrad", "mgda"])
def test_the_error_without_the_callback_gives_a_gradient_level_methods_own_reason(method):
    """pcgrad and mgda learn nothing, yet the error said their weights would stay frozen or drift."""
    model = build_model(AutoWeight({"y1": mse, "y2": mse}, method=method))
    with pytest.raises(RuntimeError) as info:
        model.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0)
    check(info, f"each task's gradient of the network's shared parameters ({method})", "plain sum",
          "AutoWeightCallback")
    assert "frozen" not in str(info.value)


def test_a_network_returning_a_dict_is_told_to_return_a_tuple():
    """A LibMTL-style forward ({task: prediction}): hapi passes the dict as one item, and the error
    said only "expects 4 tensors ... but hapi passed 3"."""

    class DictNet(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.h1, self.h2 = paddle.nn.Linear(3, 1), paddle.nn.Linear(3, 1)

        def forward(self, x):
            return {"y1": self.h1(x), "y2": self.h2(x)}

    model = paddle.Model(DictNet())
    loss = AutoWeight({"y1": mse, "y2": mse}, method="equal")
    model.prepare(paddle.optimizer.SGD(0.1, parameters=model.parameters()), loss)
    net_before = [p.numpy().copy() for p in model.parameters()]
    with pytest.raises(TypeError) as info:
        model.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback()])
    check(info, "returned a dict (y1, y2)", "return tuple(out[k] for k in ['y1', 'y2'])")
    for p, before in zip(model.parameters(), net_before):
        np.testing.assert_array_equal(p.numpy(), before)


def test_routing_errors_show_a_zero_based_routing_that_fits():
    """A main head and an auxiliary head with one label: 'shared' and 'paired' fail, and so did 1-based
    indices, with fixes that did not show what to write."""
    main, aux, label = paddle.ones([4, 1]), paddle.ones([4, 1]), paddle.ones([4, 1])
    fix = "indices from 0 over the 3 tensors (*outputs, *labels): e.g. routing={'main': (0, 2), 'aux': (1, 2)}"
    for routing in ("shared", "paired", {"main": (1, 3), "aux": (2, 3)}):
        aw = AutoWeight({"main": paddle.nn.MSELoss(), "aux": paddle.nn.MSELoss()}, method="equal", routing=routing)
        with pytest.raises(ValueError) as info:
            aw(main, aux, label)
        check(info, fix)
    aw = AutoWeight({"main": paddle.nn.MSELoss(), "aux": paddle.nn.MSELoss()}, method="equal",
                    routing={"main": (0, 2), "aux": (1, 2)})
    np.testing.assert_allclose(float(aw(main, 2 * aux, label)), 0.0 + 1.0, rtol=1e-6)  # the fix works


def test_routing_examples_use_the_task_names_and_only_what_fits():
    two = paddle.ones([4, 1])
    aw = AutoWeight({"it's": paddle.nn.MSELoss(), "b": paddle.nn.MSELoss()}, method="equal", routing="shared")
    with pytest.raises(ValueError) as info:  # 4 tensors: each task its own output and label
        aw(two, two, two, two)
    check(info, "e.g. routing={\"it's\": (0, 2), 'b': (1, 3)}")
    aw = AutoWeight({"depth": paddle.nn.MSELoss(), "seg": paddle.nn.MSELoss(), "normal": paddle.nn.MSELoss()},
                    method="equal")
    with pytest.raises(ValueError) as info:  # 2 tensors for 3 tasks: no routing of that shape fits
        aw(two, two)
    check(info, "give each of ['depth', 'seg', 'normal'] a tuple (its output's index, its label's index)")
    assert "routing={" not in str(info.value)
