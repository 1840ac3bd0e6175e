"""AutoWeight's formulas, gradients, routing and input checks, against float64 numpy."""

import numpy as np
import paddle
import pytest

from hapi_autoloss import AutoWeight

L = np.array([0.7, 2.5, 0.05])
S = np.array([0.3, -1.2, 2.0])


def identity(out, _label):
    return out


def make(method, s=S, **kw):
    aw = AutoWeight([identity] * 3, method=method, **kw)
    if aw.s is not None:
        aw.s.set_value(np.asarray(s, dtype="float32"))
    return aw


def run(aw, values=L):
    leaves = [paddle.to_tensor(np.float32(v), stop_gradient=False) for v in values]
    labels = [paddle.zeros([]) for _ in values]
    total = aw(*leaves, *labels)
    total.backward()
    return total, np.array([float(t.grad) for t in leaves])


def reference(method, factors=None, weights=None, s=S, values=L):
    """Float64 value, d/dL and d/ds of the total."""
    s, values = np.asarray(s, np.float64), np.asarray(values, np.float64)
    if method == "kendall":
        f = np.asarray(factors)
        value = (f * np.exp(-s) * values + 0.5 * s).sum()
        return value, f * np.exp(-s), -f * np.exp(-s) * values + 0.5
    if method == "simple":
        return (np.exp(-s) * values + s).sum(), np.exp(-s), -np.exp(-s) * values + 1.0
    if method == "liebel":
        c2 = s * s
        value = (values / (2 * c2) + np.log1p(c2)).sum()
        return value, 1 / (2 * c2), -values / s**3 + 2 * s / (1 + c2)
    if method == "fixed":
        return (np.asarray(weights) * values).sum(), np.asarray(weights), None
    return values.sum(), np.ones_like(values), None


@pytest.mark.parametrize(
    "method,kw,factors",
    [
        ("kendall", {"task_types": ["regression"] * 3}, [0.5] * 3),
        ("kendall", {"task_types": ["classification"] * 3}, [1.0] * 3),
        ("kendall", {"task_types": ["regression", "classification", "regression"]}, [0.5, 1.0, 0.5]),
        ("simple", {}, None),
        ("fixed", {"weights": [0.8, 0.2, 1.5]}, None),
        ("equal", {}, None),
    ],
)
def test_value_and_gradients_match_float64(method, kw, factors):
    aw = make(method, **kw)
    total, dl = run(aw)
    value, ref_dl, ref_ds = reference(method, factors=factors, weights=kw.get("weights"))
    assert total.shape == [] and total.dtype == paddle.float32
    np.testing.assert_allclose(float(total), value, rtol=1e-6)
    np.testing.assert_allclose(dl, ref_dl, rtol=1e-6)
    if ref_ds is not None:
        np.testing.assert_allclose(aw.s.grad.numpy(), ref_ds, rtol=1e-5, atol=1e-7)
    else:
        assert aw.parameters() == []


def test_liebel_value_and_gradients():
    c = np.array([1.0, 0.4, 2.5])
    aw = make("liebel", s=c)
    total, dl = run(aw)
    value, ref_dl, ref_dc = reference("liebel", s=c)
    np.testing.assert_allclose(float(total), value, rtol=1e-6)
    np.testing.assert_allclose(dl, ref_dl, rtol=1e-6)
    np.testing.assert_allclose(aw.s.grad.numpy(), ref_dc, rtol=1e-5)
    assert float(total) > 0  # Liebel's form keeps the total positive


def test_sigmas_and_weights_follow_the_formulas():
    aw = make("kendall", task_types=["regression", "classification", "regression"])
    np.testing.assert_allclose(list(aw.sigmas().values()), np.exp(S / 2), rtol=1e-6)
    np.testing.assert_allclose(list(aw.weights().values()), [0.5, 1.0, 0.5] * np.exp(-S), rtol=1e-6)
    assert list(aw.sigmas()) == ["task0", "task1", "task2"]
    lb = make("liebel", s=[1.0, 0.5, 2.0])
    np.testing.assert_allclose(list(lb.weights().values()), [0.5, 2.0, 0.125])
    assert make("equal").sigmas() == {}
    assert make("fixed", weights=[1, 2, 3]).weights() == {"task0": 1.0, "task1": 2.0, "task2": 3.0}


def test_last_losses_are_the_raw_losses():
    aw = make("kendall", task_types=["regression"] * 3)
    assert aw.last_losses() == {}
    run(aw)
    np.testing.assert_allclose(list(aw.last_losses().values()), L, rtol=1e-6)


def test_clamp_keeps_everything_finite_and_bounds_the_gradient():
    aw = make("kendall", s=[-1e4, 1e4, 3.0], task_types=["regression"] * 3)
    total, dl = run(aw, values=[1e30, 1.0, 1.0])
    assert np.isfinite(float(total))
    np.testing.assert_allclose(dl[:2], 0.5 * np.exp([10.0, -10.0]), rtol=1e-5)
    # Straight-through: beyond a bound the gradient is the one at the bound.
    at_bound = reference("kendall", [0.5] * 3, s=[-10.0, 10.0, 3.0], values=[1e30, 1.0, 1.0])[2]
    np.testing.assert_allclose(aw.s.grad.numpy(), at_bound, rtol=1e-5)
    np.testing.assert_allclose(list(aw.sigmas().values())[:2], np.exp([-5.0, 5.0]), rtol=1e-6)
    custom = make("simple", s=[5.0, 5.0, 5.0], clamp=(-1.0, 1.0))
    np.testing.assert_allclose(float(run(custom)[0]), (np.exp(-1) * L + 1).sum(), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_give_a_float32_total(dtype):
    # Losses near float16's maximum (65504): weighted and summed in float16 they overflow.
    aw = make("kendall", s=[-10.0, -10.0, 0.0], task_types=["classification"] * 3)
    values = [60000.0, 50000.0, 3.0]
    leaves = [paddle.to_tensor(np.float32(v)).astype(dtype) for v in values]
    total = aw(*leaves, *[paddle.zeros([]).astype(dtype) for _ in values])
    assert total.dtype == paddle.float32 and total.shape == []
    exact = [float(t.astype("float32")) for t in leaves]
    expected = reference("kendall", [1.0] * 3, s=[-10, -10, 0], values=exact)[0]
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)
    assert float(total) > 1e9
    assert all(v.dtype == paddle.float32 for v in aw.parameters())


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append([float(a) for a in args])
        return args[0] * 0 + len(self.calls)


def scalars(*values):
    return [paddle.to_tensor(np.float32(v)) for v in values]


def test_routing_paired_shared_and_explicit():
    a, b = Recorder(), Recorder()
    AutoWeight([a, b], method="equal")(*scalars(1, 2, 10, 20))
    assert a.calls == [[1, 10]] and b.calls == [[2, 20]]

    a, b = Recorder(), Recorder()
    AutoWeight({"ce": a, "dice": b}, method="equal", routing="shared")(*scalars(1, 10))
    assert a.calls == [[1, 10]] and b.calls == [[1, 10]]

    a, b = Recorder(), Recorder()
    AutoWeight({"x": a, "y": b}, method="equal", routing={"x": (1, 2), "y": (0, 2, 3)})(*scalars(1, 2, 10, 20))
    assert a.calls == [[2, 10]] and b.calls == [[1, 10, 20]]

    a, b = Recorder(), Recorder()
    AutoWeight([a, b], method="equal", routing=[(0,), (1, 0)])(*scalars(5, 6))
    assert a.calls == [[5]] and b.calls == [[6, 5]]


def expect(exc, *fragments):
    info = pytest.raises(exc)
    return _Match(info, fragments)


class _Match:
    def __init__(self, ctx, fragments):
        self.ctx, self.fragments = ctx, fragments

    def __enter__(self):
        self.info = self.ctx.__enter__()
        return self.info

    def __exit__(self, *exc):
        handled = self.ctx.__exit__(*exc)
        message = str(self.info.value)
        for fragment in self.fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"
        assert "Fix" in message, message
        return handled


mse = paddle.nn.MSELoss()


def test_bad_input_errors_name_problem_and_fix():
    with expect(ValueError, "Unknown method 'kendal'", "liebel"):
        AutoWeight([mse], method="kendal")
    with expect(ValueError, "needs task_types", "one per task, in the order of the losses (2)",
                "'classification' (e.g. CrossEntropyLoss"):
        AutoWeight([mse, mse], method="kendall")
    with expect(ValueError, "task_types has 1 entries but there are 2 tasks"):
        AutoWeight([mse, mse], method="kendall", task_types=["regression"])
    with expect(ValueError, "missing ['b']"):
        AutoWeight({"a": mse, "b": mse}, method="kendall", task_types={"a": "regression"})
    with expect(ValueError, "Unknown task type 'segmentation'"):
        AutoWeight([mse], method="kendall", task_types=["segmentation"])
    with expect(ValueError, "weights has 3 entries but there are 2 tasks"):
        AutoWeight([mse, mse], method="fixed", weights=[0.8, 0.1, 0.1])
    with expect(ValueError, "needs weights"):
        AutoWeight([mse, mse], method="fixed")
    with expect(ValueError, "finite and >= 0"):
        AutoWeight([mse, mse], method="fixed", weights=[0.8, -0.2])
    with expect(ValueError, "losses is empty"):
        AutoWeight([])
    with expect(TypeError, "not callable"):
        AutoWeight([mse, "ce"], method="equal")
    with expect(ValueError, "min < max"):
        AutoWeight([mse], method="simple", clamp=(3.0, 3.0))
    with expect(ValueError, "Unknown routing 'pairs'"):
        AutoWeight([mse], method="equal", routing="pairs")
    with expect(ValueError, "weights does not apply to method='equal'"):
        AutoWeight([mse], method="equal", weights=[1.0])


def test_tensor_count_that_does_not_fit_the_routing():
    aw = AutoWeight([mse, mse, mse], method="equal")
    with expect(ValueError, "expects 6 tensors", "passed 4"):
        aw(*scalars(1, 2, 3, 4))
    shared = AutoWeight([mse, mse], method="equal", routing="shared")
    with expect(ValueError, "expects 2 tensors", "passed 4"):
        shared(*scalars(1, 2, 3, 4))
    explicit = AutoWeight([identity, identity], method="equal", routing=[(0, 1), (2, 5)])
    with expect(ValueError, "index 5", "only 4"):
        explicit(*scalars(1, 2, 3, 4))


def test_non_scalar_sub_loss_is_rejected():
    aw = AutoWeight([paddle.nn.MSELoss(reduction="none")], method="equal")
    with expect(ValueError, "returned shape [4, 1]", "reduction='mean'"):
        aw(paddle.ones([4, 1]), paddle.zeros([4, 1]))


def test_an_s_carried_past_the_clamp_is_pulled_back_not_frozen():
    aw = make("kendall", s=[-15.0, 15.0, 0.0], task_types=["regression"] * 3)
    opt = paddle.optimizer.SGD(learning_rate=0.5, parameters=aw.parameters())
    for _ in range(3):
        run(aw, values=[1.0, 1.0, 1.0])  # the optimum is s = log L = 0 for each task
        opt.step()
        opt.clear_grad()
    s = aw.s.numpy()
    assert s[0] > -10.0 and s[1] < 15.0 - 0.5  # both moved back towards the range
