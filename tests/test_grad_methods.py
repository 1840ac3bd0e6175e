"""The gradient-level methods (mgda, pcgrad, cagrad, imtl, gradnorm, aligned_mtl, nash_mtl,
db_mtl) called directly, against float64 NumPy references of each paper's rule written
here independently (optimality conditions, literal vector projections, SVDs, scipy)."""

import itertools

import numpy as np
import paddle
import pytest
from scipy.optimize import minimize

from hapi_autoloss.weighting import METHODS
from hapi_autoloss.weighting.cagrad import cagrad_inner

NAMES = ["mgda", "pcgrad", "cagrad", "imtl", "gradnorm", "aligned_mtl", "nash_mtl", "db_mtl"]
RNG = np.random.default_rng(7)
CASES = {  # fixed gradient matrices [k, n]
    "conflicting": np.array([[1.0, 0.2, -0.3], [-0.6, 1.0, 0.4]]),
    "parallel": np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]]),
    "opposite": np.array([[1.0, 2.0, 0.0], [-2.0, -4.0, 0.0]]),
    "zero_row": np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [-0.3, 1.0, 0.0]]),
    "orthogonal": np.array([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0]]),
    "five": RNG.normal(size=(5, 8)),
    "five_rank3": RNG.normal(size=(5, 3)),
    "all_zero": np.zeros((3, 4)),
    # one task is refused at construction (tests/test_grad_edges.py): nothing to combine
}
REGULAR = ["conflicting", "orthogonal", "five"]  # full row rank: every rule has a unique answer
LOSSES = {k: np.linspace(0.5, 2.0, k) for k in (1, 2, 3, 5)}


def make(name, k, **options):
    m = METHODS[name](**options)
    m.bind([f"t{i}" for i in range(k)], [None] * k)
    return m


def combined(m, g, losses):
    out = m.combine_grads(paddle.to_tensor(g, dtype="float32"), paddle.to_tensor(losses, dtype="float32"))
    return out.numpy().astype(np.float64)


def simplex_grid(k, steps):
    for c in itertools.product(range(steps + 1), repeat=k - 1):
        if sum(c) <= steps:
            yield np.array([*c, steps - sum(c)], dtype=np.float64) / steps


# ------------------------------------------------------------------ every method


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", list(CASES))
def test_finite_on_every_case(name, case):
    g = CASES[case]
    m = make(name, len(g))
    m.last_shared = slice(0, 2)
    out = combined(m, g, LOSSES[len(g)])
    assert np.isfinite(out).all() and np.isfinite(m.weight(True)).all()
    if case == "all_zero":
        np.testing.assert_array_equal(out, 0.0)


def test_registered_and_rep_grad():
    allowed = {n for n in NAMES if METHODS[n].rep_grad}
    assert allowed == {"mgda", "imtl", "aligned_mtl"}


@pytest.mark.parametrize("name, options", [
    ("mgda", {"normalize": "max"}), ("pcgrad", {"seed": -1}), ("pcgrad", {"seed": 1.5}),
    ("cagrad", {"c": -0.1}), ("cagrad", {"c": float("nan")}), ("cagrad", {"rescale": 3}),
    ("gradnorm", {"alpha": -1.0}), ("gradnorm", {"alpha": float("inf")}), ("aligned_mtl", {"scale": "max"}),
    ("nash_mtl", {"max_norm": -1.0}), ("nash_mtl", {"update_weights_every": 0}),
    ("nash_mtl", {"update_weights_every": 1.5}), ("db_mtl", {"beta": 1.0}), ("db_mtl", {"beta_sigma": -0.5}),
    ("famo", {"w_lr": 0.0}), ("famo", {"w_lr": True}), ("famo", {"gamma": -1e-3}),
    ("stch", {"mu": 0.0}), ("stch", {"mu": True}), ("stch", {"warmup_epochs": -1}), ("stch", {"warmup_epochs": 1.5}),
])
def test_bad_options(name, options):
    (option,) = options
    with pytest.raises(ValueError, match=rf"^{option} must .*\. Fix: "):
        METHODS[name](**options)


# ------------------------------------------------------------------ mgda


def min_norm_kkt(g, w, tol):
    """w is the min-norm point of the hull iff g_j·g* >= ‖g*‖² for all j, with equality on w's support."""
    star = w @ g
    slack = g @ star - star @ star
    scale = max((g * g).sum(axis=1).max(), 1e-300)
    assert slack.min() >= -tol * scale
    assert np.abs(slack[w > 1e-9]).max(initial=0.0) <= tol * scale
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12


@pytest.mark.parametrize("case", ["conflicting", "parallel", "zero_row", "orthogonal", "five", "five_rank3"])
def test_mgda_is_the_min_norm_point(case):
    g = CASES[case]
    m = make("mgda", len(g))
    w = m.alphas(g @ g.T, LOSSES[len(g)])
    min_norm_kkt(g, w, 1e-10)
    if len(g) <= 3:  # brute force: no grid point of the simplex does better
        best = min(np.sum((p @ g) ** 2) for p in simplex_grid(len(g), 400))
        assert np.sum((w @ g) ** 2) <= best + 1e-12
    np.testing.assert_allclose(combined(m, g, LOSSES[len(g)]), w @ g, rtol=1e-5, atol=1e-6)


def test_mgda_two_tasks_closed_form_and_normalizations():
    g = CASES["conflicting"]
    g1, g2 = g
    w1 = (g2 @ g2 - g1 @ g2) / ((g1 - g2) @ (g1 - g2))
    np.testing.assert_allclose(make("mgda", 2).alphas(g @ g.T, LOSSES[2]), [w1, 1 - w1], rtol=1e-12)
    losses, length = np.array([0.4, 3.0]), np.linalg.norm(g, axis=1)
    for mode, n in (("l2", length), ("loss", losses), ("loss+", losses * length)):
        gn = g / n[:, None]
        alpha = make("mgda", 2, normalize=mode).alphas(g @ g.T, losses)
        min_norm_kkt(gn, alpha * n, 1e-10)  # α_i·n_i is the min-norm weight of the normalized g_i


# ------------------------------------------------------------------ pcgrad


def pcgrad_reference(g, rng):
    out = []
    for i in range(len(g)):
        pc = g[i].copy()
        for j in rng.permutation(len(g)):
            dot = pc @ g[j]
            if dot < 0:
                pc = pc - dot / (g[j] @ g[j]) * g[j]
        out.append(pc)
    return np.sum(out, axis=0)


@pytest.mark.parametrize("case", ["conflicting", "opposite", "zero_row", "five", "five_rank3"])
def test_pcgrad_projects_like_the_vectors(case):
    g = CASES[case]
    m, rng = make("pcgrad", len(g), seed=3), np.random.default_rng(3)
    for _ in range(3):  # three steps: three draws of the orders
        ref = pcgrad_reference(g, rng)
        np.testing.assert_allclose(combined(m, g, LOSSES[len(g)]), ref, rtol=1e-5, atol=1e-6)


def test_pcgrad_order_matters_and_resumes():
    g = CASES["five"]
    draws = {tuple(np.round(make("pcgrad", 5, seed=s).alphas(g @ g.T, LOSSES[5]), 9)) for s in range(6)}
    assert len(draws) > 1  # the seed's orders change the answer on these gradients
    m = make("pcgrad", 5, seed=11)
    m.alphas(g @ g.T, LOSSES[5])
    resumed = make("pcgrad", 5, seed=99)
    resumed.set_state_dict(m.state_dict())  # the stream is a buffer: a plain paddle.save resumes it
    old = make("pcgrad", 5, seed=99)  # a checkpoint from before the buffer kept it in checkpoint_state
    old.set_checkpoint_state({"rng": m._rng.bit_generator.state})
    for _ in range(3):
        want = m.alphas(g @ g.T, LOSSES[5])
        np.testing.assert_array_equal(want, resumed.alphas(g @ g.T, LOSSES[5]))
        np.testing.assert_array_equal(want, old.alphas(g @ g.T, LOSSES[5]))


# ------------------------------------------------------------------ cagrad


def cagrad_reference(g, c):
    k = len(g)
    g0 = g.mean(axis=0)

    def f(w):
        return (w @ g) @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(w @ g)

    starts = [np.full(k, 1.0 / k), *(np.eye(k) * 0.9 + 0.1 / k)]
    runs = [minimize(f, x, bounds=[(0, 1)] * k, constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
                     method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000}).x for x in starts]
    if k <= 3:
        runs.append(min(simplex_grid(k, 300), key=f))
    w = min((np.clip(x, 0, None) / np.clip(x, 0, None).sum() for x in runs), key=f)
    return w, f


@pytest.mark.parametrize("case", REGULAR)
@pytest.mark.parametrize("c, rescale", [(0.5, 1), (0.4, 0), (1.0, 2)])
def test_cagrad_matches_the_inner_problem(case, c, rescale):
    g = CASES[case]
    k = len(g)
    m = make("cagrad", k, c=c, rescale=rescale)
    alpha = m.alphas(g @ g.T, LOSSES[k])
    w_ref, f = cagrad_reference(g, c)
    assert f(cagrad_inner(g @ g.T, c)) <= f(w_ref) + 1e-12  # our inner solution is at least as good
    g0 = g.mean(axis=0)
    d = g0 + c * np.linalg.norm(g0) / np.linalg.norm(w_ref @ g) * (w_ref @ g)
    ref = k * d / (1.0, 1 + c**2, 1 + c)[rescale]
    np.testing.assert_allclose(alpha @ g, ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(combined(m, g, LOSSES[k]), ref, rtol=1e-5, atol=1e-6)
    # d stays in the ball ‖d − g0‖ ≤ c‖g0‖ of the primal problem
    d_mine = alpha @ g / k * (1.0, 1 + c**2, 1 + c)[rescale]
    assert np.linalg.norm(d_mine - g0) <= c * np.linalg.norm(g0) * (1 + 1e-9)


def test_cagrad_without_c_is_the_plain_sum():
    g = CASES["five"]
    np.testing.assert_allclose(make("cagrad", 5, c=0.0).alphas(g @ g.T, LOSSES[5]), np.ones(5), rtol=1e-12)


# ------------------------------------------------------------------ imtl


def imtl_reference(g):
    """The paper's eq. 6 on the vectors, as LibMTL writes it (with an inverse)."""
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    d, uu = g[:1] - g[1:], u[:1] - u[1:]
    rest = g[0] @ uu.T @ np.linalg.inv(d @ uu.T)
    return np.concatenate([[1 - rest.sum()], rest])


@pytest.mark.parametrize("case", REGULAR)
def test_imtl_g_on_the_scaled_gradients(case):
    g = CASES[case]
    k = len(g)
    s = np.linspace(-0.7, 0.9, k)
    m = make("imtl", k)
    m.s.set_value(s.astype("float32"))
    e = np.exp(s.astype("float32").astype(np.float64))
    gs = g * e[:, None]
    a = imtl_reference(gs)
    np.testing.assert_allclose(m.alphas(g @ g.T, LOSSES[k]), a * e, rtol=1e-9)
    np.testing.assert_allclose(combined(m, g, LOSSES[k]), a @ gs, rtol=1e-5, atol=1e-6)
    proj = (a @ gs) @ (gs / np.linalg.norm(gs, axis=1, keepdims=True)).T
    np.testing.assert_allclose(proj, proj[0], rtol=1e-9)  # impartial: equal projections
    np.testing.assert_allclose(m.task_scales(paddle.to_tensor(LOSSES[k], dtype="float32")).numpy(), e, rtol=1e-6)


def test_imtl_degenerate_rows_and_learned_scale_gradient():
    m = make("imtl", 3)
    g = CASES["zero_row"]
    a = m.alphas(g @ g.T, LOSSES[3])
    assert a[1] == 0.0 and abs(a.sum() - 1) < 1e-12  # the zero gradient takes no part
    np.testing.assert_allclose(a[[0, 2]], imtl_reference(g[[0, 2]]), rtol=1e-9)
    p = CASES["parallel"]
    assert abs(make("imtl", 2).alphas(p @ p.T, LOSSES[2]).sum() - 1) < 1e-12
    s, losses = np.array([0.3, -1.2, 0.8]), np.array([0.7, 2.5, 0.05])
    m.s.set_value(s.astype("float32"))
    loss = m.method_loss(paddle.to_tensor(g, dtype="float32"), paddle.to_tensor(losses, dtype="float32"))
    (grad,) = paddle.grad(loss, [m.s])
    np.testing.assert_allclose(float(loss), (np.exp(s) * losses - s).sum(), rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), np.exp(s) * losses - 1.0, rtol=1e-5)


# ------------------------------------------------------------------ gradnorm


def gradnorm_reference(p, g, losses, l0, alpha, cols):
    k = len(p)
    sm = np.exp(p - p.max()) / np.exp(p - p.max()).sum()
    w = k * sm
    n = np.linalg.norm(g[:, cols], axis=1)
    gi = w * n
    rate = (losses / l0) / (losses / l0).mean()
    target = gi.mean() * rate**alpha
    loss = np.abs(gi - target).sum()
    dw = np.sign(gi - target) * n  # the target is a constant
    dp = k * (np.diag(sm) - np.outer(sm, sm)) @ dw
    return w, loss, dp


def test_gradnorm_weights_loss_and_gradient():
    g, k, cols = CASES["five"], 5, slice(2, 6)
    p = np.array([0.2, -0.5, 0.9, 0.0, -1.1])
    l0, later = np.array([2.0, 1.0, 0.5, 3.0, 1.5]), np.array([1.0, 0.9, 0.1, 2.5, 0.6])
    m = make("gradnorm", k, alpha=1.5)
    m.last_shared = cols
    m.p.set_value(p.astype("float32"))
    for losses in (l0, later):  # the first step's losses become L(0)
        w, ref_loss, ref_dp = gradnorm_reference(p, g, losses, l0, 1.5, cols)
        np.testing.assert_allclose(combined(m, g, losses), w @ g, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.weight(True), w, rtol=1e-6)
        loss = m.method_loss(paddle.to_tensor(g, dtype="float32"), paddle.to_tensor(losses, dtype="float32"))
        (dp,) = paddle.grad(loss, [m.p])
        np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
        np.testing.assert_allclose(dp.numpy(), ref_dp, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m.initial_losses.numpy(), l0, rtol=1e-6)
    resumed = make("gradnorm", k)
    resumed.set_state_dict(m.state_dict())
    combined(resumed, g, later)  # a resumed run keeps its L(0)
    np.testing.assert_allclose(resumed.initial_losses.numpy(), l0, rtol=1e-6)


# ------------------------------------------------------------------ aligned_mtl


@pytest.mark.parametrize("case", [*REGULAR, "parallel", "zero_row", "five_rank3"])
def test_aligned_mtl_from_the_svd(case):
    g = CASES[case]
    k = len(g)
    u, sv, vt = np.linalg.svd(g, full_matrices=False)
    r = int((sv**2 > (sv**2).max() * k * np.finfo(np.float32).eps).sum())
    u, sv, vt = u[:, :r], sv[:r], vt[:r]
    # the aligned rows B·G = σ_min·U·Vᵀ: orthogonal, all of norm σ_min; their sum is the update
    ref = sv.min() * np.ones(k) @ u @ vt
    m = make("aligned_mtl", k)
    alpha = m.alphas(g @ g.T, LOSSES[k])
    np.testing.assert_allclose(alpha @ g, ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(combined(m, g, LOSSES[k]), ref, rtol=1e-5, atol=1e-6)
    if r == k:
        b = sv.min() * u @ np.diag(1 / sv) @ u.T
        np.testing.assert_allclose((b @ g) @ (b @ g).T, sv.min() ** 2 * np.eye(k), atol=1e-12)
    median = np.sort(sv**2)[(r - 1) // 2]
    np.testing.assert_allclose(make("aligned_mtl", k, scale="median").alphas(g @ g.T, LOSSES[k]) @ g,
                               np.sqrt(median) * np.ones(k) @ u @ vt, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ nash_mtl


@pytest.mark.parametrize("case", [*REGULAR, "five_rank3"])
def test_nash_mtl_solves_the_bargaining_condition(case):
    g = CASES[case]
    k = len(g)
    gram = g @ g.T
    m = make("nash_mtl", k, max_norm=0.0)
    alpha = m.alphas(gram, LOSSES[k])
    np.testing.assert_allclose(gram @ alpha, 1 / alpha, rtol=1e-9)  # the raw Gram, as the paper
    assert (alpha > 0).all()
    np.testing.assert_allclose(combined(m, g, LOSSES[k]), alpha @ g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.task_scales(paddle.to_tensor(LOSSES[k])).numpy(), alpha, rtol=1e-6)


def test_nash_mtl_clips_and_reuses_weights():
    g = CASES["five"] * 10.0
    gram = g @ g.T
    m = make("nash_mtl", 5, max_norm=1.0, update_weights_every=2)
    clipped = m.alphas(gram, LOSSES[5])
    raw = make("nash_mtl", 5, max_norm=0.0).alphas(gram, LOSSES[5])
    norm = np.linalg.norm(raw @ g)
    assert norm > 1.0
    np.testing.assert_allclose(clipped, raw * 1.0 / (norm + 1e-6), rtol=1e-9)
    other = CASES["conflicting"][:, :2]
    g2 = np.vstack([other, other @ np.array([[0.0, 1.0], [1.0, 0.0]]), [[0.3, 0.3]]])
    second = m.alphas(g2 @ g2.T, LOSSES[5])  # step 2: α of step 1, clipped for these gradients
    scale = min(1.0, 1.0 / (np.linalg.norm(raw @ g2) + 1e-6))
    np.testing.assert_allclose(second, raw * scale, rtol=1e-9)
    resumed = make("nash_mtl", 5, update_weights_every=2)
    resumed.set_state_dict(m.state_dict())  # α and the step are buffers
    old = make("nash_mtl", 5, update_weights_every=2)  # a checkpoint from before them
    old.set_checkpoint_state({"alphas": [1.0] * 5, "step": 1, "alpha": list(raw)})
    np.testing.assert_array_equal(old.alphas(g2 @ g2.T, LOSSES[5]), second)  # step 2 of m
    np.testing.assert_array_equal(resumed.alphas(gram, LOSSES[5]), m.alphas(gram, LOSSES[5]))


# ------------------------------------------------------------------ db_mtl


def test_db_mtl_buffer_and_balance_resume_exactly():
    k, beta, sigma = 3, 0.9, 0.5
    rng = np.random.default_rng(1)
    steps = [(rng.normal(size=(k, 6)), rng.uniform(0.2, 3.0, size=k)) for _ in range(4)]
    m = make("db_mtl", k, beta=beta, beta_sigma=sigma)
    buf = np.zeros((k, 6))
    outs, refs = [], []
    for t, (g, losses) in enumerate(steps, start=1):
        lg = g / (losses + 1e-8)[:, None]
        bt = beta / t**sigma
        buf = lg + bt * (buf - lg)
        n = np.linalg.norm(buf, axis=1)
        alpha = n.max() / (n + 1e-8)
        refs.append(alpha @ buf)
        outs.append(combined(m, g, losses))
        np.testing.assert_allclose(m.weight(True), alpha, rtol=1e-5)
        np.testing.assert_allclose(m.task_scales(paddle.to_tensor(losses, dtype="float32")).numpy(),
                                   1 / (losses + 1e-8), rtol=1e-6)
        if t == 2:
            resumed = make("db_mtl", k, beta=beta, beta_sigma=sigma)
            resumed.set_state_dict(m.state_dict())  # ĝ and t are buffers
            old = make("db_mtl", k, beta=beta, beta_sigma=sigma)  # a checkpoint from before them
            old.set_checkpoint_state({"alphas": [1.0] * k, "step": 2, "buffer": m.db_grads.numpy()})
    np.testing.assert_allclose(outs, refs, rtol=1e-5, atol=1e-6)
    for g, losses in steps[2:]:
        for other in (resumed, old):
            combined(other, g, losses)
    for other in (resumed, old):
        for key, value in m.state_dict().items():
            np.testing.assert_array_equal(other.state_dict()[key].numpy(), value.numpy())
