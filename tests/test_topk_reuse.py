"""TopKScheduler and TopKOnPlateau kept across models (a notebook cell that builds the model again):
a new paddle.Model starts a new run, the same model goes on, and a loaded state wins over the reset."""

from __future__ import annotations

import warnings

import paddle
import pytest
from helpers import RaiseOnce
from paddle.callbacks import Callback
from test_topk_plateau import Blobs as EvalBlobs
from test_topk_plateau import build as build_eval
from test_topk_plateau import paddle_lr_factors
from test_topk_scheduler import RecordingTopK, build, ce, fit

import hapi_autoloss
from hapi_autoloss import TopKLoss, schedules
from hapi_autoloss.callbacks import BackupAndRestore, TopKOnPlateau, TopKScheduler

STEPS = 3  # batches per epoch of test_topk_scheduler's data


def per_epoch(loss: RecordingTopK) -> list[float]:
    return loss.used[::STEPS]


# ---------------------------------------------------------------- TopKScheduler


def test_a_new_model_starts_the_schedule_over_with_its_own_epochs():
    sched = TopKScheduler(1.0, 0.2)
    first = RecordingTopK(ce())
    fit(build(first), 2, [sched])
    assert per_epoch(first) == pytest.approx([1.0, 0.2])
    again = RecordingTopK(ce())
    model = build(again)  # the cell run again: a new model, the same callback, fit(epochs=4)
    fit(model, 4, [sched])
    assert per_epoch(again) == pytest.approx([schedules.ratio_at(e, 4, "linear", 1.0, 0.2) for e in range(4)])
    assert per_epoch(again) == pytest.approx([1.0, 1.0 - 0.8 / 3, 1.0 - 1.6 / 3, 0.2])
    assert (sched.epochs_done, sched.total) == (4, 4)
    fit(model, 1, [sched])  # the same model goes on: position 4 of 4 holds end
    assert per_epoch(again)[4:] == [0.2] and (sched.epochs_done, sched.total) == (5, 4)


def test_by_step_a_new_model_resolves_its_total_and_an_explicit_total_is_kept():
    sched = TopKScheduler(1.0, 0.1, by="step")
    fit(build(RecordingTopK(ce())), 1, [sched])
    assert sched.total == 3
    again = RecordingTopK(ce())
    fit(build(again), 2, [sched])  # 6 steps: the total comes from this fit
    assert again.used == pytest.approx([schedules.ratio_at(t, 6, "linear", 1.0, 0.1) for t in range(6)])
    assert (sched.steps_done, sched.total) == (6, 6)

    fixed = TopKScheduler(1.0, 0.1, by="step", total=10)
    model = build(RecordingTopK(ce()))
    fit(model, 1, [fixed])
    fit(model, 1, [fixed])  # the same model: steps 3..5
    assert fixed.steps_done == 6
    other = RecordingTopK(ce())
    fit(build(other), 2, [fixed])  # a new model: steps 0..5 again, over the given total
    assert other.used == pytest.approx([1.0 - 0.1 * t for t in range(6)])
    assert (fixed.steps_done, fixed.total) == (6, 10)


def test_a_topkloss_reused_by_a_new_model_starts_at_start():
    loss = RecordingTopK(ce())
    sched = TopKScheduler(1.0, 0.25)
    fit(build(loss), 4, [sched])
    assert loss.ratio == 0.25  # the layer ends the first run at end
    del loss.used[:]
    fit(build(loss), 3, [sched])  # the loss cell was not run again: the same TopKLoss
    assert per_epoch(loss) == pytest.approx([1.0, 0.625, 0.25])


def test_a_loaded_state_wins_over_the_new_models_reset(tmp_path):
    sched = TopKScheduler(schedule="cosine")
    full = RecordingTopK(ce())
    fit(build(full), 4, [sched], save_dir=str(tmp_path), save_freq=1)
    resumed = RecordingTopK(ce())
    model = build(resumed, seed=1)  # README's manual resume, with the callback kept from before
    model.load(str(tmp_path / "1"), reset_optimizer=True)
    hapi_autoloss.load_state(model, str(tmp_path / "1"))
    fit(model, 2, [sched])
    assert resumed.used == full.used[6:]
    assert per_epoch(resumed) == pytest.approx([schedules.ratio_at(e, 4, "cosine", 1.0, 0.1) for e in (2, 3)])
    assert (sched.epochs_done, sched.total) == (4, 4)

    by_hand = RecordingTopK(ce())
    sched.set_state_dict({"by": "epoch", "epochs_done": 1, "steps_done": 3, "total": 4})
    fit(build(by_hand), 1, [sched])  # a state given by hand before the fit wins too
    assert by_hand.used == full.used[3:6]


def test_backup_and_restore_on_a_new_model_resumes_a_kept_scheduler(tmp_path):
    full = RecordingTopK(ce())
    fit(build(full), 4, [BackupAndRestore(tmp_path / "full"), TopKScheduler(by="step")])
    sched = TopKScheduler(by="step")
    # Each model in a name scope of its own, as in a new process: the optimizer's moments
    # are keyed by parameter names, which a second model in one process does not share.
    with paddle.utils.unique_name.guard(), pytest.raises(RuntimeError, match="boom"):
        fit(build(TopKLoss(ce())), 4, [BackupAndRestore(tmp_path / "run"), sched, RaiseOnce(2, 1)])
    again = RecordingTopK(ce())
    with paddle.utils.unique_name.guard():
        fit(build(again), 4, [BackupAndRestore(tmp_path / "run"), sched])  # the cell run again
    assert again.used == pytest.approx(full.used[6:])  # epochs 2 and 3, from the backup after epoch 1
    assert (sched.steps_done, sched.total) == (12, 12)


# ---------------------------------------------------------------- TopKOnPlateau


class Evals(Callback):
    def __init__(self, layer):
        self.layer, self.evals, self.ratios = layer, [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.ratios.append(self.layer.ratio)

    def on_eval_end(self, logs=None):
        self.evals.append(dict(logs))


def fit_eval(model, epochs, callbacks, **kwargs):
    model.fit(EvalBlobs(), EvalBlobs(16, seed=1, noise=2.0), epochs=epochs, batch_size=8, shuffle=False,
              verbose=0, callbacks=callbacks, **kwargs)


def plateau():
    return TopKOnPlateau(monitor="acc", factor=0.5, patience=1, min_delta=0.0, min_ratio=0.1, verbose=0)


def test_a_new_models_plateau_starts_without_the_old_best():
    plat = plateau()
    fit_eval(build_eval(TopKLoss(ce(), ratio=1.0), lr=0.1), 8, [plat])
    old_best = plat.best
    loss = TopKLoss(ce(), ratio=1.0)
    rec = Evals(loss)
    fit_eval(build_eval(loss, seed=1, lr=0.01), 4, [plat, rec])
    assert rec.evals[0]["acc"] <= old_best  # compared with the old best, epoch 1 would train at 0.5
    factors = paddle_lr_factors(rec.evals, "acc", factor=0.5, patience=1, min_delta=0.0, min_lr=0.1)
    assert rec.ratios == pytest.approx([1.0, *factors[:-1]])  # a fresh ReduceLROnPlateau on this run's evals
    assert rec.ratios[1] == 1.0
    assert plat.evaluations == 4


def test_the_same_model_goes_on_and_a_loaded_state_wins(tmp_path):
    plat = plateau()
    loss = TopKLoss(ce(), ratio=1.0)
    model = build_eval(loss, lr=0.1)
    fit_eval(model, 4, [plat])
    fit_eval(model, 4, [plat])  # the same model: the plateau goes on
    assert plat.evaluations == 8
    model.save(str(tmp_path / "ckpt"))
    saved = plat.state_dict()
    assert saved["reductions"] >= 1

    fit_eval(build_eval(TopKLoss(ce(), ratio=1.0)), 1, [plat])  # a third model: a run of its own
    assert plat.evaluations == 1
    other_loss = TopKLoss(ce(), ratio=1.0)
    other = build_eval(other_loss, seed=3)
    other.load(str(tmp_path / "ckpt"), reset_optimizer=True)
    hapi_autoloss.load_state(other, str(tmp_path / "ckpt"))
    rec = Evals(other_loss)
    fit_eval(other, 1, [plat, rec])
    assert rec.ratios == [saved["ranges"][0][0]]
    assert plat.evaluations == 9  # counted on from the checkpoint's 8
    value = rec.evals[0]["acc"]
    assert plat.best == (value if value > saved["best"] else saved["best"])


def test_a_topkloss_the_plateau_reduced_keeps_its_k_on_a_new_model_and_warns():
    plat = plateau()
    loss = TopKLoss(ce(), ratio=1.0)
    fit_eval(build_eval(loss, lr=0.1), 8, [plat])
    left = loss.ratio
    assert left < 1.0
    rec = Evals(loss)
    with pytest.warns(UserWarning, match=rf"reduced to ratio={left:.4g} by TopKOnPlateau in another paddle\.Model"):
        fit_eval(build_eval(loss, seed=1), 1, [plat, rec])
    assert rec.ratios == [left] and plat.evaluations == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_eval(build_eval(TopKLoss(ce(), ratio=1.0)), 1, [plat])  # a new TopKLoss: nothing to say


def test_a_model_saved_after_its_scheduler_moved_on_keeps_its_own_position(tmp_path):
    """A's checkpoint held B's schedule (position 3 of 4): a model resumed from it trained at 0.1
    where A's position (1 of 4) gives 0.7."""
    scheduler = TopKScheduler(1.0, 0.1, by="epoch", total=4)
    first = build(RecordingTopK(ce()))
    fit(first, 1, [scheduler])
    fit(build(RecordingTopK(ce())), 3, [scheduler])
    first.save(str(tmp_path / "a"))
    assert hapi_autoloss._hapi.read_state(str(tmp_path / "a"))["callbacks"]["TopKScheduler"]["epochs_done"] == 1
    loss = RecordingTopK(ce())
    resumed = build(loss)
    resumed.load(str(tmp_path / "a"))
    hapi_autoloss.load_state(resumed, str(tmp_path / "a"))
    fit(resumed, 1, [TopKScheduler(1.0, 0.1, by="epoch", total=4)])
    want = schedules.value(schedules.progress(1, 4, 0), "linear", 1.0, 0.1)  # 0.7; B's position gave 0.1
    assert loss.used[0] == pytest.approx(want, abs=1e-6)


def test_a_plateau_state_given_by_hand_sets_k_on_the_next_fits_losses():
    """Its k went onto the previous model's TopKLoss (or nowhere, on a fresh callback)."""
    state = {"monitor": "acc", "best": 0.9, "wait": 1, "cooldown_counter": 0, "evaluations": 3,
             "reductions": 1, "ranges": [(0.3, 0.0)]}
    plateau = TopKOnPlateau(monitor="acc", patience=5)
    first = RecordingTopK(ce())
    fit_eval(build_eval(first), 1, [plateau])
    ratio = first.ratio
    for callback in (plateau, TopKOnPlateau(monitor="acc", patience=5)):
        callback.set_state_dict(state)
        loss = RecordingTopK(ce())
        fit_eval(build_eval(loss), 1, [callback])
        assert loss.used[0] == 0.3 and callback.best == 0.9
    assert first.ratio == ratio  # the earlier model's loss is left alone


def test_a_state_given_by_hand_between_two_models_leaves_the_first_its_own_position(tmp_path):
    """set_state_dict cleared the model the callback trained last, so nothing kept that model's
    position: its save after the other model's 5 epochs held 7 epochs done."""
    scheduler = TopKScheduler(1.0, 0.2)
    first = build(RecordingTopK(ce()))
    fit(first, 2, [scheduler])
    scheduler.set_state_dict(scheduler.state_dict())
    fit(build(RecordingTopK(ce())), 5, [scheduler])
    first.save(str(tmp_path / "a"))
    assert hapi_autoloss._hapi.read_state(str(tmp_path / "a"))["callbacks"]["TopKScheduler"]["epochs_done"] == 2


def test_a_plateau_state_for_another_number_of_losses_is_refused_before_any_step():
    """Its k were dropped without a word while best and reductions went on; state_dict() in
    between returned no k."""
    state = {"monitor": "acc", "best": 0.9, "wait": 1, "cooldown_counter": 0, "evaluations": 3,
             "reductions": 3, "ranges": [(0.125, 0.0)]}
    plateau = TopKOnPlateau(monitor="acc", patience=5)
    plateau.set_state_dict(state)
    assert plateau.state_dict()["ranges"] == [(0.125, 0.0)]
    two = hapi_autoloss.AutoWeight({"a": TopKLoss(ce()), "b": TopKLoss(ce())}, method="equal")

    class Twice(paddle.nn.Layer):  # the same output and label for both tasks
        def __init__(self):
            super().__init__()
            self.inner = two

        def forward(self, out, y):
            return self.inner(out, out, y, y)

    model = build_eval(Twice())
    before = [p.numpy().copy() for p in model.network.parameters()]
    with pytest.raises(ValueError, match=r"holds k for 1 TopKLoss layer\(s\), but this model's loss has 2\. Fix"):
        fit_eval(model, 1, [plateau])
    assert all((p.numpy() == b).all() for p, b in zip(model.network.parameters(), before))
