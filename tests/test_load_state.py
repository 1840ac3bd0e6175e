"""load_state is complete (k is back before any fit) and refuses a checkpoint of another loss;
the README's manual resume recipe works on every checkpoint hapi writes."""

import os

import numpy as np
import paddle
import pytest
from helpers import TwoTaskData, build_model, kendall_loss

import hapi_autoloss
from hapi_autoloss import AutoWeight, TopKLoss
from hapi_autoloss.callbacks import AutoWeightCallback, TopKScheduler

DATA = TwoTaskData(96)
EVAL = TwoTaskData(48, seed=1)


def topk_loss(ratio=1.0):
    return AutoWeight({"y1": TopKLoss(paddle.nn.MSELoss(reduction="none"), ratio=ratio), "y2": paddle.nn.MSELoss()},
                      method="kendall", task_types=["regression", "regression"])


def test_evaluate_after_load_state_uses_the_restored_k(tmp_path):
    loss = topk_loss()
    model = build_model(loss)
    model.fit(DATA, epochs=3, batch_size=16, verbose=0,
              callbacks=[AutoWeightCallback(), TopKScheduler(start=1.0, end=0.25)])
    assert loss.losses[0].ratio == 0.25
    model.save(str(tmp_path / "m"))
    want = model.evaluate(EVAL, batch_size=48, verbose=0)["loss"]

    fresh = topk_loss()  # constructed at ratio 1.0
    other = build_model(fresh)
    other.load(str(tmp_path / "m"))
    naive = other.evaluate(EVAL, batch_size=48, verbose=0)["loss"]
    hapi_autoloss.load_state(other, str(tmp_path / "m"))
    assert fresh.losses[0].ratio == 0.25
    got = other.evaluate(EVAL, batch_size=48, verbose=0)["loss"]
    np.testing.assert_array_equal(got, want)
    assert abs(float(naive[0]) - float(want[0])) > 1e-3  # the wrong k gives another loss


@pytest.mark.parametrize("other", [
    dict(method="liebel"),
    dict(method="kendall", names=("y2", "y1")),
    dict(method="kendall", names=("depth", "seg")),
], ids=["method", "task-order", "task-names"])
def test_a_checkpoint_of_another_loss_is_refused_naming_both(tmp_path, other):
    loss = kendall_loss()
    model = build_model(loss)
    model.fit(DATA, epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback()])
    model.save(str(tmp_path / "m"))
    names = other.get("names", ("y1", "y2"))
    kwargs = {"task_types": ["regression"] * 2} if other["method"] == "kendall" else {}
    wrong = AutoWeight({n: paddle.nn.MSELoss() for n in names}, method=other["method"], **kwargs)
    target = build_model(wrong)
    before = wrong.s.numpy().copy()
    with pytest.raises(ValueError) as err:
        hapi_autoloss.load_state(target, str(tmp_path / "m"))
    message = str(err.value)
    assert "AutoWeight(method='kendall', tasks=['y1', 'y2'])" in message
    assert f"AutoWeight(method={other['method']!r}, tasks={list(names)})" in message
    assert "Fix: build the same loss" in message
    np.testing.assert_array_equal(wrong.s.numpy(), before)  # nothing was loaded


def test_manual_recipe_on_final_and_best_model(tmp_path):
    """latest_checkpoint may return hapi's 'final' or EarlyStopping's 'best_model':
    the README recipe reads the epochs done from the file, never from its name."""
    # Both models under fresh names, as two processes would build them (the same process
    # without the guard: test_the_recipe_in_the_same_process_continues_exactly).
    with paddle.utils.unique_name.guard():
        loss = kendall_loss()
        model = build_model(loss)
        stop = paddle.callbacks.EarlyStopping("loss", mode="min", patience=10, save_best_model=True)
        model.fit(DATA, eval_data=EVAL, epochs=3, batch_size=16, verbose=0, save_dir=str(tmp_path / "ck"),
                  callbacks=[AutoWeightCallback(), stop])
    files = set(os.listdir(tmp_path / "ck"))
    assert {"final.autoloss", "best_model.autoloss", "2.autoloss"} <= files
    path = hapi_autoloss.latest_checkpoint(str(tmp_path / "ck"))
    assert os.path.basename(path) in ("final", "2")  # furthest into training
    for name, epoch in (("final", 3), ("2", 3), ("0", 1)):
        assert hapi_autoloss.checkpoint_info(str(tmp_path / "ck" / name)) == {"epoch": epoch, "step": 6 * epoch}
    assert hapi_autoloss.checkpoint_info(str(tmp_path / "ck" / "best_model"))["epoch"] in (1, 2, 3)

    # The README's steps, verbatim but for the names.
    EPOCHS = 5
    with paddle.utils.unique_name.guard():  # accumulator names too, created in fit
        fresh = kendall_loss()
        resumed = build_model(fresh)
        path = hapi_autoloss.latest_checkpoint(str(tmp_path / "ck"))
        resumed.load(path)
        hapi_autoloss.load_state(resumed, path)
        done = hapi_autoloss.checkpoint_info(path)["epoch"]
        resumed.fit(DATA, epochs=EPOCHS - done, batch_size=16, verbose=0, save_dir=str(tmp_path / "ck"),
                    callbacks=[AutoWeightCallback()])
    # The resumed run's checkpoints overwrite "0", "1" and "final" with its own progress,
    # so the recipe repeated after a second crash finds them.
    assert hapi_autoloss.checkpoint_info(str(tmp_path / "ck" / "final")) == {"epoch": 5, "step": 30}
    assert hapi_autoloss.checkpoint_info(str(tmp_path / "ck" / "0")) == {"epoch": 4, "step": 24}
    assert hapi_autoloss.latest_checkpoint(str(tmp_path / "ck")) in (str(tmp_path / "ck" / "final"),
                                                                    str(tmp_path / "ck" / "1"))


def test_the_recipe_in_the_same_process_continues_exactly(tmp_path):
    """No unique_name guard: the resumed model's parameters are linear_4.. where the file has
    linear_0.., so hapi's load left the network's Adam moments under the old names and the
    first update failed ("Optimizer set error ... should in state dict"). load_state renames them."""

    def run(epochs, save_dir=None, model=None):
        if model is None:
            paddle.seed(0)
            model = build_model(kendall_loss())
        model.fit(DATA, epochs=epochs, batch_size=16, verbose=0, shuffle=False, save_dir=save_dir,
                  callbacks=[AutoWeightCallback()])
        return model

    straight = run(4)
    run(2, str(tmp_path / "ck"))
    paddle.seed(0)
    resumed = build_model(kendall_loss())
    path = hapi_autoloss.latest_checkpoint(str(tmp_path / "ck"))
    resumed.load(path)
    hapi_autoloss.load_state(resumed, path)
    run(2, model=resumed)
    assert resumed._loss.sigmas() == straight._loss.sigmas()
    for got, want in zip(resumed.network.parameters(), straight.network.parameters()):
        assert got.name != want.name
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_new_optimizer_for_the_same_network_and_a_save_before_any_step_continue_exactly(tmp_path):
    """The same network re-prepared with a new Adam: its accumulators are named ..._moment1_1,
    the checkpoint's ..._0 (σ's too), and the first update failed. And a checkpoint saved right
    after load_state, before any update, lost σ's moments (they still waited in the optimizer)."""

    def fit(model, epochs, save_dir=None):
        model.fit(DATA, epochs=epochs, batch_size=16, verbose=0, shuffle=False, save_dir=save_dir,
                  callbacks=[AutoWeightCallback()])

    paddle.seed(0)
    straight = build_model(kendall_loss())
    fit(straight, 4)
    paddle.seed(0)
    model = build_model(kendall_loss())
    fit(model, 2, str(tmp_path / "ck"))
    model.prepare(paddle.optimizer.Adam(0.05, parameters=model.parameters()), model._loss)
    path = str(tmp_path / "ck" / "final")
    model.load(path)
    hapi_autoloss.load_state(model, path)
    hapi_autoloss.attach(model)
    model.save(str(tmp_path / "again"))  # before any update
    fit(model, 2)
    copy = build_model(kendall_loss())
    copy.load(str(tmp_path / "again"))
    hapi_autoloss.load_state(copy, str(tmp_path / "again"))
    fit(copy, 2)
    for resumed in (model, copy):
        assert resumed._loss.sigmas() == straight._loss.sigmas()
        for got, want in zip(resumed.network.parameters(), straight.network.parameters()):
            np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_latest_checkpoint_leaves_an_earlier_runs_leftovers_out(tmp_path):
    """The folder reused by a new, shorter run (a notebook cell run again with epochs=2): its
    '2' and '3' were the earlier run's and were returned, 4 epochs done, instead of its 'final'."""
    ck = str(tmp_path / "ck")
    for epochs in (4, 2):
        paddle.seed(0)
        build_model(kendall_loss()).fit(DATA, epochs=epochs, batch_size=16, verbose=0, save_dir=ck,
                                        callbacks=[AutoWeightCallback()])
    assert hapi_autoloss.checkpoint_info(os.path.join(ck, "3"))["epoch"] == 4  # still there
    assert hapi_autoloss.latest_checkpoint(ck) == os.path.join(ck, "final")
    paddle.seed(0)
    resumed = build_model(kendall_loss())  # the second run resumed goes on in its own files
    resumed.load(os.path.join(ck, "final"))
    hapi_autoloss.load_state(resumed, os.path.join(ck, "final"))
    resumed.fit(DATA, epochs=1, batch_size=16, verbose=0, save_dir=ck, callbacks=[AutoWeightCallback()])
    assert hapi_autoloss.checkpoint_info(hapi_autoloss.latest_checkpoint(ck)) == {"epoch": 3, "step": 18}

    # two fine-tunes started from one checkpoint into one folder: one run had been made of them
    tuned = str(tmp_path / "tuned")
    for epochs in (4, 2):
        paddle.seed(0)
        model = build_model(kendall_loss())
        model.load(os.path.join(ck, "final"))
        hapi_autoloss.load_state(model, os.path.join(ck, "final"))
        model.fit(DATA, epochs=epochs, batch_size=16, verbose=0, save_dir=tuned, callbacks=[AutoWeightCallback()])
    assert hapi_autoloss.checkpoint_info(os.path.join(tuned, "3"))["epoch"] == 7
    assert hapi_autoloss.latest_checkpoint(tuned) == os.path.join(tuned, "final")
    assert hapi_autoloss.checkpoint_info(os.path.join(tuned, "final"))["epoch"] == 5


def test_a_model_is_freed_after_fit_with_every_callback(tmp_path):
    """Nothing of ours keeps a model (and its network, optimizer, GPU memory) alive."""
    import gc
    import weakref

    from hapi_autoloss.callbacks import BackupAndRestore, TensorBoardExport

    model = build_model(topk_loss())
    model.fit(DATA, epochs=1, batch_size=16, verbose=0, save_dir=str(tmp_path / "ck"),
              callbacks=[AutoWeightCallback(), TopKScheduler(), TensorBoardExport(tmp_path / "tb"),
                         BackupAndRestore(tmp_path / "backup")])
    hapi_autoloss.load_state(model, str(tmp_path / "ck" / "final"))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_load_state_between_fits_gives_the_states_to_the_next_fit_callbacks(tmp_path):
    """A finished fit's exporter must not take the loaded step: the next fit's does."""
    from hapi_autoloss.callbacks import TensorBoardExport

    model = build_model(kendall_loss())
    first = TensorBoardExport(tmp_path / "a")
    model.fit(DATA, epochs=2, batch_size=16, verbose=0, save_dir=str(tmp_path / "ck"),
              callbacks=[AutoWeightCallback(), first])
    assert first.global_step == 12
    model.load(str(tmp_path / "ck" / "0"))
    hapi_autoloss.load_state(model, str(tmp_path / "ck" / "0"))  # after epoch 1: step 6
    second = TensorBoardExport(tmp_path / "b")
    model.fit(DATA, epochs=1, batch_size=16, verbose=0, callbacks=[AutoWeightCallback(), second])
    assert first.global_step == 12
    assert second.global_step == 6 + 6


def test_a_run_branched_from_an_earlier_checkpoint_leaves_the_abandoned_branch_out(tmp_path):
    """Back to ck/0 (1 epoch) and 1 epoch more into the same folder: the first run's '3' (epoch 4)
    was returned, past the point the new run branched from."""
    ck = str(tmp_path / "ck")
    paddle.seed(0)
    build_model(kendall_loss()).fit(DATA, epochs=4, batch_size=16, verbose=0, save_dir=ck,
                                    callbacks=[AutoWeightCallback()])
    paddle.seed(0)
    branch = build_model(kendall_loss())
    branch.load(os.path.join(ck, "0"))
    hapi_autoloss.load_state(branch, os.path.join(ck, "0"))
    branch.fit(DATA, epochs=1, batch_size=16, verbose=0, save_dir=ck, callbacks=[AutoWeightCallback()])
    assert hapi_autoloss.checkpoint_info(os.path.join(ck, "3"))["epoch"] == 4
    assert hapi_autoloss.latest_checkpoint(ck) == os.path.join(ck, "final")
    assert hapi_autoloss.checkpoint_info(os.path.join(ck, "final"))["epoch"] == 2


def test_load_state_of_another_checkpoint_than_model_load_is_refused(tmp_path):
    """The network at epoch 1 with σ, k and the progress at epoch 3 trained on without a word."""
    ck = str(tmp_path / "ck")
    paddle.seed(0)
    build_model(kendall_loss()).fit(DATA, epochs=3, batch_size=16, verbose=0, save_dir=ck,
                                    callbacks=[AutoWeightCallback()])
    model = build_model(kendall_loss())
    model.load(os.path.join(ck, "0"))
    sigma = model._loss.sigmas()
    with pytest.raises(ValueError, match=r"does not hold the weights saved in .*final\.pdparams \(6 of 6 parameters "
                                         r"differ\).*Fix: call model\.load\('.*final'\) right before load_state"):
        hapi_autoloss.load_state(model, os.path.join(ck, "final"))
    assert model._loss.sigmas() == sigma and hapi_autoloss._hapi.progress(model)["step"] == 0
    hapi_autoloss.load_state(model, os.path.join(ck, "0"))  # the same path: fine


def test_a_save_right_after_load_state_keeps_the_callbacks_positions(tmp_path):
    """Their states wait in the model for the next fit's callbacks; the save wrote {}."""
    from test_topk_scheduler import RecordingTopK, build, ce, fit

    first = build(RecordingTopK(ce()))
    fit(first, 2, [TopKScheduler(1.0, 0.2, total=4)])
    first.save(str(tmp_path / "a"))
    model = build(RecordingTopK(ce()))
    model.load(str(tmp_path / "a"))
    hapi_autoloss.load_state(model, str(tmp_path / "a"))
    hapi_autoloss.attach(model)
    model.save(str(tmp_path / "b"))
    saved = hapi_autoloss._hapi.read_state(str(tmp_path / "b"))["callbacks"]
    assert saved["TopKScheduler"]["epochs_done"] == 2


def test_multi_precision_moments_are_named_for_the_loaded_master_weights():
    """AMP O2 (emulated on the CPU by the first update's naming step): the master weights keep
    their saved names (linear_0.w_0_fp32_master_0), and their moments are named after them."""
    from hapi_autoloss._hapi.moments import rename_network_moments

    block = paddle.static.default_main_program().global_block()

    def build():
        net = paddle.nn.Linear(2, 2)
        net.to(dtype="float16")
        return net, paddle.optimizer.Adam(0.1, parameters=net.parameters(), multi_precision=True)

    net, opt = build()
    opt._create_accumulators(block, net.parameters())  # the first update names them
    saved, old = opt.state_dict(), {k: v.name for k, v in net.named_parameters()}
    for net2, opt2 in (build(), (net, paddle.optimizer.Adam(0.1, parameters=net.parameters(), multi_precision=True))):
        opt2.set_state_dict(dict(saved))  # what hapi's Model.load does
        rename_network_moments(opt2, {k: v.name for k, v in net2.named_parameters()}, old, set())
        opt2._create_accumulators(block, net2.parameters())  # raised "... should in state dict"
        assert not opt2._accumulators_holder or all("fp32_master" not in k for k in opt2._accumulators_holder)


def test_the_probe_takes_a_nan_placeholder_as_equal_and_older_run_formats_load(tmp_path):
    """NaN != NaN refused the right checkpoint; a `run` of plain ids (written before the step
    cut-offs) made latest_checkpoint compare an int with a str."""

    class WithNaN(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.net = __import__("helpers").TwoTaskNet()
            self.unused = self.create_parameter([4], default_initializer=paddle.nn.initializer.Constant(float("nan")))
            self.unused.stop_gradient = True

        def forward(self, x):
            return self.net(x)

    ck = str(tmp_path / "ck")
    paddle.seed(0)
    model = paddle.Model(WithNaN())
    model.prepare(paddle.optimizer.Adam(0.05, parameters=model.parameters()), kendall_loss())
    model.fit(DATA, epochs=1, batch_size=16, verbose=0, save_dir=ck, callbacks=[AutoWeightCallback()])
    again = paddle.Model(WithNaN())
    again.prepare(paddle.optimizer.Adam(0.05, parameters=again.parameters()), kendall_loss())
    again.load(os.path.join(ck, "final"))
    hapi_autoloss.load_state(again, os.path.join(ck, "final"))
    state = paddle.load(os.path.join(ck, "0.autoloss"))
    state["run"] = [state["run"][0][0], "an-older-run"]
    paddle.save(state, os.path.join(ck, "0.autoloss"))
    assert hapi_autoloss.latest_checkpoint(ck) in (os.path.join(ck, "0"), os.path.join(ck, "final"))
