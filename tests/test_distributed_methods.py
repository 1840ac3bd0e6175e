"""Real 2-process `paddle.distributed.launch` runs (CPU, gloo): dwa, rlw and stch agree across ranks."""

import os

import numpy as np
import pytest
from helpers import launch_two_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "dist_methods.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_methods")
    proc, logs = launch_two_ranks(SCRIPT, str(out), log_dir=out / "log", cwd=out, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-4000:]
    return [np.load(out / f"rank{r}.npz") for r in (0, 1)]


def dwa_weights(averages, temperature=2.0):
    """DWA's formula in float64: weights after each epoch from the epoch averages."""
    out = [np.ones(averages.shape[1])]
    for e in range(1, len(averages)):
        z = (averages[e] / averages[e - 1]) / temperature
        out.append(len(z) * np.exp(z - z.max()) / np.exp(z - z.max()).sum())
    return np.array(out)


@pytest.mark.distributed
def test_dwa_averages_over_every_ranks_batches(ranks):
    np.testing.assert_array_equal(ranks[0]["dwa_epoch_weights"], ranks[1]["dwa_epoch_weights"])
    np.testing.assert_array_equal(ranks[0]["dwa_used"], ranks[1]["dwa_used"])
    # The average over the whole data: both ranks' batches (epochs, batches, tasks).
    losses = np.concatenate([r["dwa_losses"].astype(np.float64) for r in ranks], axis=1)
    assert losses.shape == (4, 14, 2)
    sizes = np.array([16] * 6 + [4])  # each rank's 7 batches: an epoch's average is weighted by batch size
    expected = dwa_weights(np.average(losses, axis=1, weights=np.tile(sizes, 2)))
    np.testing.assert_allclose(ranks[0]["dwa_epoch_weights"], expected, rtol=1e-6)
    unweighted = dwa_weights(losses.mean(axis=1))  # the plain mean of batch losses differs
    assert np.abs(unweighted - expected).max() > 1e-4
    # What a rank alone would compute is measurably different: the reduction matters.
    for r in ranks:
        alone = dwa_weights(np.average(r["dwa_losses"].astype(np.float64), axis=1, weights=sizes))
        assert np.abs(alone - expected).max() > 1e-2
    # Each step trained with its epoch's weights, the ones hapi's logs showed.
    per_step = np.repeat(expected, 7, axis=0)
    np.testing.assert_allclose(ranks[0]["dwa_used"][7:], per_step[:-7], rtol=1e-6)
    np.testing.assert_array_equal(ranks[0]["dwa_logged"], ranks[0]["dwa_used"])


@pytest.mark.distributed
def test_dwa_rank_without_batches_joins_the_reduction(ranks):
    # Epoch 1: only rank 0 trains, (1, 4) and (3, 2); epoch 2: only rank 1, (0.5, 6);
    # epoch 3: nobody, so it is not counted.
    for r in ranks:
        np.testing.assert_allclose(r["bare_history"], [[2.0, 3.0], [0.5, 6.0]], rtol=1e-7)
        assert int(r["bare_epochs"]) == 2
        np.testing.assert_allclose(r["bare_weights"], dwa_weights(np.array([[2.0, 3.0], [0.5, 6.0]]))[1], rtol=1e-6)


@pytest.mark.distributed
def test_rlw_without_seed_draws_the_same_weights_on_every_rank(ranks):
    used = [r["rlw_used"] for r in ranks]
    assert used[0].shape == (14, 2)
    np.testing.assert_array_equal(used[0], used[1])
    np.testing.assert_allclose(used[0].sum(axis=1), 1.0, rtol=1e-12)
    assert len({tuple(np.round(w, 12)) for w in used[0]}) == 14  # a fresh draw every step
    # hapi's logs carry the draw each step trained with, step 0 included.
    for r in ranks:
        np.testing.assert_array_equal(r["rlw_logged"], r["rlw_used"])


@pytest.mark.distributed
def test_stch_nadir_is_both_ranks_average_and_its_epochs_agree(ranks):
    """stch's empty-epoch check is a collective: its flag was a [1] tensor that int() refused, so stch
    failed at its first epoch end on 2 ranks."""
    for r in ranks:
        assert int(r["stch_epochs"]) == 3
    np.testing.assert_array_equal(ranks[0]["stch_nadir"], ranks[1]["stch_nadir"])
    nadir_epoch = np.concatenate([r["stch_losses"][1].astype(np.float64) for r in ranks])  # every batch of epoch 1
    np.testing.assert_allclose(ranks[0]["stch_nadir"], nadir_epoch.mean(axis=0), rtol=1e-6)
    # Bare: epoch 0 on both ranks (the nadir), an end_epoch nobody trained before (not an epoch), then
    # an epoch only rank 1 trained (an epoch for both).
    for r in ranks:
        assert int(r["bare_stch_epochs"]) == 2
        np.testing.assert_allclose(r["bare_stch_nadir"], [2.0, 3.0], rtol=1e-7)
