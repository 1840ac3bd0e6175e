"""The exporters' ``lr`` point of a step is the rate that step's update used, whatever the order
of the callbacks that change it: paddle's ``LRScheduler(by_step=True)`` before or after the
exporters (or hapi's own, appended last), a warmup that calls ``set_lr`` at batch begin (or
at batch end, for the next step) before or after them, a float lr, gradient accumulation.
The reference is the lr read inside the optimizer's ``minimize`` (the update itself); files
read back by TensorBoard's and VisualDL's own readers."""

from __future__ import annotations

import paddle
import pytest
from helpers import TwoTaskData, build_model, kendall_loss, tb_read, vdl_read

from hapi_autoloss.callbacks import AutoWeightCallback, TensorBoardExport, VisualDLExport

STEPS = 6  # TwoTaskData(96) in batches of 16


class Warmup(paddle.callbacks.Callback):
    """A user's warmup: lr = 0.01·i for the i-th step, set at that batch's begin (or at the
    previous batch's end)."""

    def __init__(self, at_end: bool = False) -> None:
        super().__init__()
        self.at_end, self.i = at_end, 0

    def _set(self) -> None:
        self.i += 1
        self.model._optimizer.set_lr(0.01 * self.i)

    def on_train_begin(self, logs=None):
        if self.at_end:
            self._set()

    def on_train_batch_begin(self, step, logs=None):
        if not self.at_end:
            self._set()

    def on_train_batch_end(self, step, logs=None):
        if self.at_end:
            self._set()


def scheduler():
    return paddle.callbacks.LRScheduler(by_step=True)


def decay():
    return paddle.optimizer.lr.ExponentialDecay(0.1, gamma=0.5)


CASES = {  # name: (lr, callbacks before the exporters, callbacks after them)
    "scheduler_first": (decay, [scheduler], []),
    "scheduler_last": (decay, [], [scheduler]),
    "hapi_scheduler": (decay, [], []),
    "warmup_first": (lambda: 0.1, [Warmup], []),
    "warmup_last": (lambda: 0.1, [], [Warmup]),
    "warmup_at_end_first": (lambda: 0.1, [lambda: Warmup(at_end=True)], []),
    "float": (lambda: 0.03, [], []),
}


class Unhook(paddle.callbacks.Callback):
    """Makes the exporters ignore the lr kept at the update: their fallback (batch begin and end) reads."""

    def __init__(self, exporters) -> None:
        super().__init__()
        self.exporters = exporters

    def on_train_begin(self, logs=None):
        for ex in self.exporters:
            ex._readout.unwatch_lr()


def run(tmp_path, case, accumulate=1, hooked=True, optimizer="SGD", grouped=False):
    lr, before, after = CASES[case]
    model = build_model(kendall_loss())
    net = model.network
    params = ([{"params": net.trunk.parameters(), "learning_rate": 0.5},
               {"params": net.h1.parameters() + net.h2.parameters()}] if grouped else model.parameters())
    model._optimizer = opt = getattr(paddle.optimizer, optimizer)(lr(), parameters=params)
    at_update, at_forward = [], []

    def recorded(update):  # a flat optimizer updates in minimize, a grouped one in step (attach's choice)
        def call(*args, **kwargs):
            at_update.append(float(opt.get_lr()))
            return update(*args, **kwargs)
        return call

    opt.minimize, opt.step = recorded(opt.minimize), recorded(opt.step)
    model.network.register_forward_pre_hook(lambda layer, inputs: at_forward.append(float(opt.get_lr())))
    exporters = [TensorBoardExport(tmp_path), VisualDLExport(tmp_path)]
    unhook = [] if hooked else [Unhook(exporters)]
    model.fit(TwoTaskData(96), epochs=1, batch_size=16, verbose=0, accumulate_grad_batches=accumulate,
              callbacks=[*(make() for make in before), AutoWeightCallback(), *exporters, *unhook,
                         *(make() for make in after)])
    return at_update, at_forward


@pytest.mark.parametrize("case", list(CASES))
def test_lr_is_the_one_each_update_used(tmp_path, case):
    at_update, _ = run(tmp_path, case)
    assert len(at_update) == STEPS
    for read in (tb_read, vdl_read):
        points = read(tmp_path)["lr"]
        assert [s for s, _ in points] == list(range(1, STEPS + 1)), read.__name__
        assert [v for _, v in points] == pytest.approx(at_update, rel=1e-6), (read.__name__, at_update)


@pytest.mark.parametrize("case", ["scheduler_first", "hapi_scheduler", "warmup_last"])
def test_lr_with_gradient_accumulation(tmp_path, case):
    """accumulate_grad_batches=2: every second batch updates, with the lr each point shows; the
    batches between show the lr in effect at their forward."""
    at_update, at_forward = run(tmp_path, case, accumulate=2)
    assert len(at_update) == STEPS // 2 and len(at_forward) == STEPS
    for read in (tb_read, vdl_read):
        logged = [v for _, v in read(tmp_path)["lr"]]
        assert logged == pytest.approx(at_forward, rel=1e-6), read.__name__
        assert logged[1::2] == pytest.approx(at_update, rel=1e-6), read.__name__


@pytest.mark.parametrize("case", ["scheduler_first", "scheduler_last", "hapi_scheduler", "warmup_last"])
def test_lr_without_the_update_record(tmp_path, case):
    """Where no update was seen (accumulation) or kept, the batch's begin and end decide:
    the end's value unless the schedule stepped in between."""
    at_update, _ = run(tmp_path, case, hooked=False)
    for read in (tb_read, vdl_read):
        assert [v for _, v in read(tmp_path)["lr"]] == pytest.approx(at_update, rel=1e-6), read.__name__


def test_no_hook_is_left_on_the_network_after_a_fit_that_raised(tmp_path):
    """A forward hook read the lr and stayed after a fit that raised: every later forward
    (predict, a plain call) left Paddle's hook-free path, one more hook per such exporter."""

    class Boom(paddle.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            raise RuntimeError("boom")

    model = build_model(kendall_loss())
    for _ in range(2):
        with pytest.raises(RuntimeError, match="boom"):
            model.fit(TwoTaskData(32), epochs=1, batch_size=16, verbose=0,
                      callbacks=[AutoWeightCallback(), TensorBoardExport(tmp_path), Boom()])
    assert len(model.network._forward_pre_hooks) == 0
    assert len(tb_read(tmp_path)["lr"]) >= 1  # the lr was logged all the same


@pytest.mark.parametrize("grouped", [False, True], ids=["flat", "grouped"])
@pytest.mark.parametrize("optimizer", ["SGD", "Momentum", "Adam", "AdamW", "Adamax", "Adagrad", "Adadelta",
                                       "RMSProp", "Lamb"])
def test_the_kept_lr_holds_for_the_optimizer_family(tmp_path, optimizer, grouped):
    """The lr is kept by the optimizer's own minimize (which attach wraps too, and which a grouped
    optimizer answers with step): every optimizer, flat and with param groups, under a schedule."""
    at_update, _ = run(tmp_path, "scheduler_first", optimizer=optimizer, grouped=grouped)
    assert len(at_update) == STEPS and len(set(at_update)) == STEPS  # the schedule moved every step
    for read in (tb_read, vdl_read):
        assert [v for _, v in read(tmp_path)["lr"]] == pytest.approx(at_update, rel=1e-6), read.__name__
