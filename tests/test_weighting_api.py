"""The Weighting API: a user's own method, the registry, options errors, needs_callback,
every built-in method's checkpoint round trip, init='auto', dwa's batch-size-weighted epoch average."""

import numpy as np
import paddle
import pytest
from helpers import TwoTaskData, TwoTaskNet, build_model, identity

import hapi_autoloss
from hapi_autoloss import AutoWeight
from hapi_autoloss.callbacks import AutoWeightCallback
from hapi_autoloss.weighting import METHODS, Weighting

DATA = TwoTaskData(80)
BUILTIN = sorted(k for k, cls in METHODS.items() if cls.__module__.startswith("hapi_autoloss.weighting."))


class InverseLoss(Weighting):  # the whole method: weights ∝ 1/L, summing to 1
    name = "inverse_test"

    def combine(self, losses):
        w = 1.0 / losses.detach().clip(min=1e-8)
        return (w / w.sum() * losses).sum()


def mse_losses(method, **options):
    return AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()}, method=method, **options)


def inverse_weights(losses):
    inv = 1.0 / np.asarray(losses, np.float64)
    return inv / inv.sum()


def test_a_user_method_trains_through_fit_as_a_hand_written_loop():
    loss = mse_losses(InverseLoss())
    assert loss.method == "inverse_test" and not loss.weighting.needs_callback
    model = build_model(loss)
    model.fit(DATA, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])

    paddle.seed(0)
    net = TwoTaskNet()
    opt = paddle.optimizer.Adam(learning_rate=0.05, parameters=net.parameters())
    for _ in range(2):
        for x, y1, y2 in DATA.batches(16):
            o1, o2 = net(x)
            losses = paddle.stack([((o1 - y1) ** 2).mean(), ((o2 - y2) ** 2).mean()])
            w = 1.0 / losses.detach()
            (w / w.sum() * losses).sum().backward()
            opt.step()
            opt.clear_grad()
    for got, want in zip(model.network.parameters(), net.parameters()):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)
    last = list(loss.last_losses().values())
    np.testing.assert_allclose(last, losses.numpy(), rtol=1e-5)
    # weights(): d total / d L by autograd = the detached weights, float64 reference
    np.testing.assert_allclose(list(loss.weights().values()), inverse_weights(last), rtol=1e-6)
    np.testing.assert_allclose(list(loss.used()[1].values()), inverse_weights(last), rtol=1e-6)
    probe = [0.3, 1.7]
    leaves = paddle.to_tensor(probe, dtype="float32", stop_gradient=False)
    (grad,) = paddle.grad(loss.weighting.combine(leaves), [leaves])
    np.testing.assert_allclose(grad.numpy(), inverse_weights(probe), rtol=1e-6)


class HalfUncertainty(Weighting):  # seed 000's rule, ½e^(−s)·L + ½s, written as the README shows
    name = "half_uncertainty_test"

    def bind(self, tasks, task_types):
        super().bind(tasks, task_types)
        self.s = self.task_parameter(0.0)

    def combine(self, losses):
        return (0.5 * paddle.exp(-self.s) * losses + 0.5 * self.s).sum()


def test_a_user_method_with_parameters_shows_what_the_step_used():
    """The default weight() took the step's losses but the parameters after its update: 0.3033 = ½e^(−0.5)
    for a step that trained with ½ (kendall's display shows ½)."""
    loss = mse_losses(HalfUncertainty())
    model = build_model(loss, lr=0.5)
    hapi_autoloss.attach(model)
    x, y1, y2 = next(DATA.batches(16))
    s_before = loss.weighting.s.numpy().astype(np.float64)
    model.train_batch([x], [y1, y2])
    s_after = loss.weighting.s.numpy().astype(np.float64)
    assert np.abs(s_after - s_before).min() > 0.1  # the update moved s
    np.testing.assert_allclose(list(loss.used()[1].values()), 0.5 * np.exp(-s_before), rtol=1e-6)
    np.testing.assert_allclose(list(loss.weights().values()), 0.5 * np.exp(-s_after), rtol=1e-6)
    np.testing.assert_array_equal(loss.weighting.s.numpy(), s_after.astype(np.float32))  # the read put s back


class Grows(Weighting):  # a user's method that re-creates a parameter, with another shape, at an epoch's end
    name = "grows_test"

    def bind(self, tasks, task_types):
        super().bind(tasks, task_types)
        self.s = self.task_parameter(0.0)
        self.t = self.create_parameter([1])

    def combine(self, losses):
        return (paddle.exp(-self.s) * losses).sum() + self.t.sum()

    def end_epoch(self):
        self.t = self.create_parameter([2])


def test_the_display_never_changes_a_parameter_even_when_one_was_re_created():
    """used() swapped the kept copies in by position: a re-created parameter failed the swap midway and
    left s at the step's value for good."""
    loss = AutoWeight([paddle.nn.functional.mse_loss] * 2, method=Grows())
    x, y = paddle.ones([4, 1]), paddle.zeros([4, 1])
    loss(x, 2 * x, y, y)  # a training forward: s = 0 kept
    loss.weighting.s.set_value(paddle.full([2], 0.7))  # the update
    loss.end_epoch()
    np.testing.assert_allclose(list(loss.used()[1].values()), [1.0, 1.0], rtol=1e-6)  # e^0: the step's s
    np.testing.assert_array_equal(loss.weighting.s.numpy(), np.float32([0.7, 0.7]))


def test_registry_by_name_and_instances():
    assert METHODS["inverse_test"] is InverseLoss
    by_name = AutoWeight([identity] * 2, method="inverse_test")
    assert type(by_name.weighting) is InverseLoss and by_name.method == "inverse_test"
    mine = InverseLoss()
    assert AutoWeight([identity] * 2, method=mine).weighting is mine
    assert set(BUILTIN) == {"dwa", "equal", "famo", "fixed", "gls", "imtl_l", "kendall", "liebel", "rlw",
                            "simple", "stch", "uw_so", *GRADIENT_LEVEL}

    class Unnamed(Weighting):
        def combine(self, losses):
            return losses.sum()

    assert Unnamed not in METHODS.values()

    class Sub(InverseLoss):  # inherits the name, but does not take it over
        pass

    assert METHODS["inverse_test"] is InverseLoss and Sub not in METHODS.values()
    assert AutoWeight([identity] * 2, method=Unnamed()).method == "Unnamed"

    class NoCombine(Weighting):
        pass

    aw = AutoWeight([identity] * 2, method=NoCombine())
    with pytest.raises(NotImplementedError, match=r"NoCombine does not implement combine.*Fix:"):
        aw(paddle.ones([]), paddle.ones([]), paddle.zeros([]), paddle.zeros([]))


def test_options_errors_name_the_method_and_what_it_takes():
    with pytest.raises(ValueError) as err:
        AutoWeight([identity] * 2, method="famo", mu=1.0)
    assert str(err.value).startswith("mu does not apply to method='famo', which takes w_lr, gamma. Fix: drop mu=")
    with pytest.raises(ValueError, match="method='equal', which takes no options"):
        AutoWeight([identity] * 2, method="equal", temperature=2.0)
    with pytest.raises(ValueError, match=r"Options \['gamma'\] were given with a method instance\. Fix: .*InverseLoss"):
        AutoWeight([identity] * 2, method=InverseLoss(), gamma=0.1)
    with pytest.raises(ValueError) as err:
        AutoWeight([identity] * 2, method="famo_v2")
    message = str(err.value)
    assert message.startswith("Unknown method 'famo_v2'. Fix: use one of ")
    assert all(name in message for name in [*BUILTIN, "inverse_test"])
    with pytest.raises(ValueError, match="Unknown method"):
        AutoWeight([identity] * 2, method=None)


class Options(Weighting):  # a method that takes options through **kwargs
    def __init__(self, **options):
        super().__init__()
        self.scale = options.get("scale", 1.0)

    def combine(self, losses):
        return self.scale * losses.sum()


def test_a_method_taking_keyword_options_gets_them_by_name():
    METHODS["options_test"] = Options
    try:
        aw = AutoWeight([identity] * 2, method="options_test", scale=3.0)
    finally:
        del METHODS["options_test"]
    assert aw.weighting.scale == 3.0


GRADIENT_LEVEL = ("mgda", "pcgrad", "cagrad", "imtl", "gradnorm", "aligned_mtl", "nash_mtl", "db_mtl")
NEEDS = {"kendall": True, "simple": True, "liebel": True, "imtl_l": True, "dwa": True, "stch": True, "famo": True,
         "equal": False, "fixed": False, "uw_so": False, "gls": False, "rlw": False,
         **dict.fromkeys(GRADIENT_LEVEL, True)}  # a gradient-level method always needs the callback
OPTIONS = {"kendall": {"task_types": ["regression", "classification"]}, "fixed": {"weights": [0.8, 0.2]},
           "rlw": {"seed": 3}, "stch": {"warmup_epochs": 0}, "imtl_l": {"init": "auto"}}


def test_needs_callback():
    assert sorted(NEEDS) == BUILTIN
    for name, needed in NEEDS.items():
        assert mse_losses(name, **OPTIONS.get(name, {})).weighting.needs_callback is needed, name

    class Epochs(InverseLoss):
        name = ""

        def end_epoch(self):
            pass

    assert Epochs().needs_callback and not InverseLoss().needs_callback


@pytest.mark.parametrize("name", ["famo", "stch"])
def test_fit_without_the_callback_is_refused_for_famo_and_stch(name):
    loss = mse_losses(name)
    model = build_model(loss)
    before = [p.numpy().copy() for p in model.network.parameters()]
    with pytest.raises(RuntimeError, match=r"Fix: pass hapi_autoloss\.callbacks\.AutoWeightCallback"):
        model.fit(DATA, epochs=1, batch_size=16, verbose=0)
    for p, b in zip(model.network.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)


def same(a, b):
    """Equal, NumPy arrays (db_mtl's gradient buffer) compared bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return a == b


def state_of(loss):
    return {k: v.numpy().copy() for k, v in loss.state_dict().items()}


@pytest.mark.parametrize("name", BUILTIN)
def test_every_method_round_trips_a_checkpoint(tmp_path, name):
    options = OPTIONS.get(name, {})
    with paddle.utils.unique_name.guard():
        loss = mse_losses(name, **options)
        model = build_model(loss)
        model.fit(DATA, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
        model.save(str(tmp_path / "m"))
        saved, sigmas = state_of(loss), loss.sigmas()
        extra = loss.weighting.checkpoint_state()
    with paddle.utils.unique_name.guard():
        fresh = mse_losses(name, **options)
        other = build_model(fresh)
        other.load(str(tmp_path / "m"))
        hapi_autoloss.load_state(other, str(tmp_path / "m"))
        restored = state_of(fresh)
        assert sorted(restored) == sorted(saved)
        for k in saved:
            assert restored[k].tobytes() == saved[k].tobytes(), k
        assert fresh.sigmas() == sigmas
        assert same(fresh.weighting.checkpoint_state(), extra)
        for m in (model, other):  # the same forward on both: weights() are at the same losses
            m.evaluate(TwoTaskData(32, seed=1), batch_size=32, verbose=0)
        assert fresh.weights() == loss.weights()
        # and both continue alike: one more epoch from either gives the same network and state
        model.fit(DATA, epochs=1, batch_size=16, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
        other.fit(DATA, epochs=1, batch_size=16, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
    for got, want in zip(other.network.parameters(), model.network.parameters()):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    after, want = state_of(fresh), state_of(loss)
    for k in want:
        np.testing.assert_array_equal(after[k], want[k], err_msg=k)
    assert fresh.weights() == loss.weights()


# σ from the optimum s of each term for losses L (float64): kendall s = log(2fL), σ = e^(s/2);
# simple s = log L, σ = e^(s/2); imtl_l s = −log L, σ = e^(−s/2); liebel σ = c.
AUTO = {
    "kendall": lambda L: np.sqrt(2 * np.array([0.5, 1.0]) * L),
    "simple": np.sqrt,
    "imtl_l": np.sqrt,
    "liebel": lambda L: np.sqrt((L + np.sqrt(L * L + 8 * L)) / 4),
}


class FirstStep(paddle.callbacks.Callback):
    """σ that the first step of each fit used, and that step's raw losses."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.fits = loss, []

    def on_train_begin(self, logs=None):
        self.fits.append(None)

    def on_train_batch_end(self, step, logs=None):
        if self.fits[-1] is None:
            used = np.array(list(self.loss.used()[0].values()))
            self.fits[-1] = (used, np.array(list(self.loss.last_losses().values()), np.float64))


@pytest.mark.parametrize("name", sorted(AUTO))
def test_init_auto_starts_at_the_first_batch_optimum_once(tmp_path, name):
    options = dict(OPTIONS.get(name, {}), init="auto")
    with paddle.utils.unique_name.guard():
        loss = mse_losses(name, **options)
        model = build_model(loss)
        first = FirstStep(loss)
        model.fit(DATA, epochs=1, batch_size=16, shuffle=False, verbose=0, callbacks=[AutoWeightCallback(), first])
        model.save(str(tmp_path / "m"))
        after_one = loss.sigmas()
    # the first batch's losses, by hand
    paddle.seed(0)
    x, y1, y2 = next(DATA.batches(16))
    o1, o2 = TwoTaskNet()(x)
    want = np.array([((o1 - y1) ** 2).mean().item(), ((o2 - y2) ** 2).mean().item()], np.float64)
    used, losses = first.fits[0]
    np.testing.assert_allclose(losses, want, rtol=1e-6)
    np.testing.assert_allclose(used, AUTO[name](want), rtol=1e-6)
    assert int(loss.weighting.auto_pending) == 0

    model.fit(DATA, epochs=1, batch_size=16, shuffle=False, verbose=0, callbacks=[AutoWeightCallback(), first])
    used, losses = first.fits[1]
    np.testing.assert_allclose(used, list(after_one.values()), rtol=1e-7)  # carried on, not re-initialised
    assert np.abs(used / AUTO[name](losses) - 1).max() > 1e-3
    with paddle.utils.unique_name.guard():  # a resumed run keeps the saved s
        fresh = mse_losses(name, **options)
        other = build_model(fresh)
        other.load(str(tmp_path / "m"))
        hapi_autoloss.load_state(other, str(tmp_path / "m"))
        again = FirstStep(fresh)
        other.fit(DATA, epochs=1, batch_size=16, shuffle=False, verbose=0, callbacks=[AutoWeightCallback(), again])
    np.testing.assert_allclose(again.fits[0][0], list(after_one.values()), rtol=1e-7)


class EpochEnd(paddle.callbacks.Callback):
    """Per epoch: each step's raw losses and dwa's epoch average right after the epoch ended."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.steps, self.averages, self.used = loss, [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.steps.append([])

    def on_train_batch_end(self, step, logs=None):
        self.steps[-1].append(list(self.loss.last_losses().values()))
        self.used.append(list(self.loss.used()[1].values()))

    def on_epoch_end(self, epoch, logs=None):
        self.averages.append(self.loss.weighting.dwa_history.numpy()[1].astype(np.float64))


def test_dwa_epoch_average_is_weighted_by_batch_size():
    loss = mse_losses("dwa")
    model = build_model(loss)
    seen = EpochEnd(loss)
    model.fit(TwoTaskData(40), epochs=3, batch_size=16, shuffle=False, verbose=0,
              callbacks=[AutoWeightCallback(), seen])
    sizes = np.array([16.0, 16.0, 8.0])
    want = [(np.array(steps) * sizes[:, None]).sum(0) / sizes.sum() for steps in seen.steps]
    for got, weighted, steps in zip(seen.averages, want, seen.steps):
        np.testing.assert_allclose(got, weighted, rtol=1e-6)
        assert np.abs(got / np.mean(steps, axis=0) - 1).max() > 1e-3  # not the plain mean
    np.testing.assert_allclose(seen.used[:6], np.ones((6, 2)))  # the first two epochs: weight 1
    third = 2 * np.exp(want[1] / want[0] / 2) / np.exp(want[1] / want[0] / 2).sum()
    np.testing.assert_allclose(seen.used[6:], [third] * 3, rtol=1e-6)
    nxt = 2 * np.exp(want[2] / want[1] / 2) / np.exp(want[2] / want[1] / 2).sum()
    np.testing.assert_allclose(list(loss.weights().values()), nxt, rtol=1e-6)


def test_init_auto_waits_for_a_finite_first_batch():
    aw = AutoWeight([identity, identity], method="simple", init="auto")
    leaves = [paddle.to_tensor(np.float32(v), stop_gradient=False) for v in (np.inf, 2.0)]
    aw(*leaves, paddle.zeros([]), paddle.zeros([])).backward()
    np.testing.assert_array_equal(aw.s.numpy(), [0.0, 0.0])  # not started from a non-finite optimum
    assert int(aw.weighting.auto_pending) == 1
    leaves = [paddle.to_tensor(np.float32(v), stop_gradient=False) for v in (0.5, 2.0)]
    aw(*leaves, paddle.zeros([]), paddle.zeros([]))
    np.testing.assert_allclose(aw.s.numpy(), np.log([0.5, 2.0]), rtol=1e-6)  # simple: s = log L
    assert int(aw.weighting.auto_pending) == 0


def test_a_user_method_taking_a_built_in_name_warns():
    with pytest.warns(UserWarning, match=r"takes the name 'equal' of the built-in Equal.*Fix: give your method"):

        class MyEqual(Weighting):
            name = "equal"

            def combine(self, losses):
                return losses.sum()

    import hapi_autoloss.weighting.equal as builtin

    METHODS["equal"] = builtin.Equal  # put the built-in back for the other tests


def test_a_checkpoint_learned_with_another_clamp_warns(tmp_path):
    with paddle.utils.unique_name.guard():
        loss = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method="simple", clamp=(-5.0, 5.0))
        model = build_model(loss)
        model.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback()])
        model.save(str(tmp_path / "m"))
    with paddle.utils.unique_name.guard():
        other = build_model(AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method="simple"))
        other.load(str(tmp_path / "m"))
        with pytest.warns(UserWarning, match=r"learned with clamp=\(-5.0, 5.0\).*Fix: build the loss with clamp"):
            hapi_autoloss.load_state(other, str(tmp_path / "m"))


class NoScalar(Weighting):
    name = "no_scalar_test"

    def combine(self, losses):
        return losses.sum(keepdim=True)  # shape [1], as Paddle 2.x code often returns


class NoSuperBind(Weighting):
    name = "no_super_bind_test"

    def bind(self, tasks, task_types):
        self.s = self.task_parameter(0.0)

    def combine(self, losses):
        return (paddle.exp(-self.s) * losses).sum()


class ShortWeight(InverseLoss):
    name = "short_weight_test"

    def weight(self, used):
        return np.ones(1)


def test_a_user_methods_mistakes_are_refused_before_any_update():
    """A [1] total passed the forward and failed in hapi after the update; a bind without super().bind
    made [0] parameters (a raw broadcast error); a short weight() dropped a task from the display."""
    model = build_model(mse_losses(NoScalar()))
    before = [p.numpy() for p in model.network.parameters()]
    with pytest.raises(ValueError, match=r"NoScalar.combine returned shape \[1\], float32, not a 0-d floating "
                                         r"tensor.*Fix: return the weighted sum as a scalar"):
        model.fit(DATA, epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback()])
    for got, want in zip(model.network.parameters(), before):
        np.testing.assert_array_equal(got.numpy(), want)
    with pytest.raises(ValueError, match=r"NoSuperBind.bind did not record the tasks \['y1', 'y2'\].*Fix: call "
                                         r"super\(\).bind\(tasks, task_types\) first"):
        mse_losses(NoSuperBind())
    loss = mse_losses(ShortWeight())
    loss(paddle.ones([4, 1]), paddle.ones([4, 1]), paddle.zeros([4, 1]), paddle.zeros([4, 1]))
    with pytest.raises(ValueError, match=r"ShortWeight.weight or sigma returned 1 value\(s\) for 2 tasks"):
        loss.weights()


def test_the_readings_are_python_floats():
    """They were np.float64 for a while: printed as np.float64(0.5), which the README's lines do not show."""
    loss = mse_losses("kendall", task_types=["regression", "regression"])
    loss(paddle.ones([4, 1]), paddle.ones([4, 1]), paddle.zeros([4, 1]), paddle.zeros([4, 1]))
    for reading in (loss.sigmas(), loss.weights(), loss.last_losses(), *loss.used()):
        assert reading and all(type(v) is float for v in reading.values()), reading
