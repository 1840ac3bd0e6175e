"""The README's code blocks that define things run as written."""

import os
import re

import numpy as np
import paddle
from helpers import ROOT, TwoTaskData, build_model

from hapi_autoloss.callbacks import AutoWeightCallback

README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def block_after(heading: str) -> str:
    return README.split(heading, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_user_written_method_runs_as_written_and_trains_through_fit():
    code = block_after("**Your own method**")
    assert len(code.strip().splitlines()) < 20
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    loss = scope["loss"]
    model = build_model(loss)
    model.fit(TwoTaskData(96), epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
    last = np.array(list(loss.last_losses().values()), dtype=np.float64)
    inverse = 1.0 / last
    np.testing.assert_allclose(list(loss.weights().values()), inverse / inverse.sum(), rtol=1e-5)
    assert re.search(r"method=InverseLoss\(\)", code)
    # The instance's name registers it: method="inverse" builds the same kind of loss.
    from hapi_autoloss import AutoWeight

    again = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method="inverse")
    assert type(again.weighting).__name__ == "InverseLoss"


def test_the_gradient_level_examples_run_as_written():
    scope: dict = {}
    exec(block_after("### Gradient-level methods"), scope)  # trains through fit
    weights = scope["loss"].weights()
    assert set(weights) == {"cls", "reg"} and all(np.isfinite(list(weights.values())))
    assert weights != {"cls": 1.0, "reg": 1.0}  # α came from a step
    exec(block_after("Your own gradient-level method"), scope)  # builds on the first block's losses
    assert type(scope["loss"].weighting).__name__ == "UnitGrad"


def test_the_hard_example_lines_build_what_they_say():
    """Each line of the TopKLoss block constructs (bad arguments raise at construction)."""
    from hapi_autoloss import TopKLoss
    from hapi_autoloss.callbacks import TopKOnPlateau, TopKScheduler

    code = block_after("## Hard examples: `TopKLoss`, `TopKScheduler` and `TopKOnPlateau`")
    scope = {"paddle": paddle, "TopKLoss": TopKLoss, "TopKScheduler": TopKScheduler, "TopKOnPlateau": TopKOnPlateau}
    built = [eval(compile(line.split("#")[0].strip() or "None", "README.md", "eval"), scope) for line in
             code.replace(",\n", ", ").splitlines()]  # fmt: skip
    losses = [b for b in built if isinstance(b, TopKLoss)]
    assert [loss.per for loss in losses] == ["sample", "pixel", "sample", "sample", "class"]
    assert losses[-1].ratio == 1.0 and losses[2].drop == 0.1 and losses[3].band == (1.0, 2.0)
    assert sum(isinstance(b, TopKScheduler) for b in built) == 3 and isinstance(built[-1], TopKOnPlateau)


def test_the_manual_resume_recipe_runs_as_written_on_a_finished_run(tmp_path, monkeypatch):
    """latest_checkpoint finds 'final' after a finished run: the recipe must train nothing there
    (hapi's fit fails on epochs=0) and train the epochs left on an earlier one."""
    from helpers import kendall_loss

    import hapi_autoloss

    monkeypatch.chdir(tmp_path)
    code = block_after("By hand: ").replace("callbacks=[...]", "callbacks=[AutoWeightCallback()]")
    data = TwoTaskData(32)
    with paddle.utils.unique_name.guard():
        build_model(kendall_loss()).fit(data, epochs=2, batch_size=16, verbose=0, save_dir="ckpt",
                                        callbacks=[AutoWeightCallback()])
    for epochs, want in ((2, 2), (3, 3)):  # finished; one epoch left
        with paddle.utils.unique_name.guard():
            loss = kendall_loss()
            scope = {"model": build_model(loss), "train_data": data, "EPOCHS": epochs,
                     "AutoWeightCallback": AutoWeightCallback}
            exec(compile(code, "README.md", "exec"), scope)
        assert scope["done"] == 2
        assert hapi_autoloss.checkpoint_info("ckpt/final")["epoch"] == want
