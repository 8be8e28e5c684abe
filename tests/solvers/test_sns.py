"""sns: Sinkhorn-Newton-Sparse (solvers.ot.sns) on OTProblem.

Checked here: the dual derivatives against finite differences; the sparsified Hessian (exact
diagonal, at most the target number of kept entries); the Newton direction against a direct
solve of the same system; the Armijo bookkeeping; agreement with a long log-domain Sinkhorn
(POT); fast convergence at eta = 1200; the failure paths (CG breakdown and others) as
statuses and fallbacks; numpy/torch parity; option validation; the driver's limits.
"""

import itertools
import math

import mpmath
import numpy as np
import pytest

import optkit
from optkit import OTProblem, Status
from optkit.krylov import KrylovResult
from optkit.linop import materialize
from optkit.ot_problem import dual_objective
from solvers.ot import _dual
from solvers.ot import sns as sns_module
from solvers.ot.sns import (
    SNS,
    dual_gradient,
    dual_hessian,
    keep_count,
    select_entries,
    sparsified_hessian,
    top_entries,
)

ot = pytest.importorskip("ot")


def instance(n=7, m=5, seed=0, reg=0.1, spread=0.05):
    """Non-uniform weights, C ~ U[0, 1], and potentials near (not at) the optimum."""
    rng = np.random.default_rng(seed)
    a = rng.random(n) + 0.2
    b = rng.random(m) + 0.2
    a, b = a / a.sum(), b / b.sum()
    C = rng.random((n, m))
    f = reg * np.log(a) + spread * rng.standard_normal(n)
    g = reg * np.log(b) + spread * rng.standard_normal(m)
    return a, b, C, f, g, reg


def random_assignment(n, eta, seed=0):
    return optkit.get_problem("ot/random-assignment", n=n, eta=eta, seed=seed, emd=False)


# ----------------------------------------------------------------------------- derivatives
def test_gradient_matches_finite_differences():
    a, b, C, f, g, reg = instance()
    gf, gg = dual_gradient(f, g, a, b, C, reg)
    h = 1e-6
    z = np.concatenate([f, g])
    n = f.shape[0]

    def D(v):
        return dual_objective(v[:n], v[n:], a, b, C, reg)

    fd = np.array([(D(z + h * e) - D(z - h * e)) / (2 * h) for e in np.eye(z.size)])
    np.testing.assert_allclose(np.concatenate([gf, gg]), fd, rtol=1e-6, atol=1e-9)


def test_hessian_matches_finite_differences_of_the_gradient():
    a, b, C, f, g, reg = instance()
    H = dual_hessian(f, g, C, reg)
    n, m = C.shape
    assert H.shape == (n + m, n + m)
    np.testing.assert_allclose(H, H.T, rtol=0, atol=0)
    h = 1e-7
    z = np.concatenate([f, g])

    def grad(v):
        return np.concatenate(dual_gradient(v[:n], v[n:], a, b, C, reg))

    fd = np.stack([(grad(z + h * e) - grad(z - h * e)) / (2 * h) for e in np.eye(z.size)], axis=1)
    np.testing.assert_allclose(H, fd, rtol=1e-5, atol=1e-7 * np.abs(H).max())
    # concave with the null vector (1, -1)
    np.testing.assert_allclose(H @ np.concatenate([np.ones(n), -np.ones(m)]), 0.0, atol=1e-12 * np.abs(H).max())
    assert np.linalg.eigvalsh(H).max() < 1e-10 * np.abs(H).max()


# ----------------------------------------------------------------------------- sparsification
def test_top_entries_are_the_largest_and_skip_zeros():
    rng = np.random.default_rng(3)
    P = rng.random((6, 9))
    rows, cols, vals = top_entries(P, 10)
    np.testing.assert_array_equal(np.sort(vals), np.sort(P.ravel())[-10:])
    np.testing.assert_array_equal(P[rows, cols], vals)
    P[:, :7] = 0.0  # only 12 positive entries left
    rows, cols, vals = top_entries(P, 20)
    assert vals.size == 12 and np.all(vals > 0)


@pytest.mark.parametrize("density", [0.1, 0.25, 1.0])
def test_sparsified_hessian_keeps_exact_diagonal_and_at_most_k_entries(density):
    _, _, C, f, g, reg = instance(n=12, m=9, reg=0.05)
    P = _dual.plan(f, g, C, reg)
    n, m = P.shape
    k = keep_count(n, m, density)
    assert k == min(n * m, math.ceil(density * n * m))
    H = materialize(sparsified_hessian(P, reg, density=density))
    dense = dual_hessian(f, g, C, reg)
    # the diagonal is exact: row and column sums of the full plan
    np.testing.assert_allclose(np.diag(H), np.diag(dense), rtol=1e-14)
    np.testing.assert_allclose(np.diag(H)[:n], -P.sum(1) / reg, rtol=1e-14)
    off = H - np.diag(np.diag(H))
    block = off[:n, n:]
    assert np.count_nonzero(off[:n, :n]) == 0 and np.count_nonzero(off[n:, n:]) == 0
    assert np.count_nonzero(block) <= k
    np.testing.assert_array_equal(off[n:, :n], block.T)
    # the kept entries are the largest entries of P, unchanged
    kept = block != 0
    np.testing.assert_allclose(block[kept], dense[:n, n:][kept], rtol=1e-14)
    if kept.sum() < n * m:
        assert P[kept].min() >= P[~kept].max()
    # negative semidefinite: the exact diagonal dominates the kept entries
    assert np.linalg.eigvalsh(H).max() <= 1e-12 * np.abs(H).max()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_adaptive_selection_keeps_a_binade_minimal_set_above_a_threshold(backend, dtype):
    _, _, C, f, g, reg = instance(n=40, m=30, reg=0.02, seed=5)
    P64 = _dual.plan(f, g, C, reg)
    P64[3, :5] = 0.0  # zeros are never kept
    P = P64.astype(dtype)
    mass = float(P.sum(dtype=np.float64))
    for drop_tol, floor in ((1e-2, 80), (1e-4, 80), (1e-8, 80), (1e-2, 600)):
        if backend == "torch":
            torch = pytest.importorskip("torch")
            rows, cols, vals, count = (
                np.asarray(t) for t in select_entries(torch.from_numpy(P), mass, floor, drop_tol)
            )
        else:
            rows, cols, vals, count = select_entries(P, mass, floor, drop_tol)
        kept = np.zeros(P.shape, dtype=bool)
        kept[rows, cols] = True
        assert vals.size == count == kept.sum() and vals.dtype == P.dtype
        np.testing.assert_array_equal(vals, P[rows, cols])
        assert (vals > 0).all() and count >= min(floor, np.count_nonzero(P))
        # a threshold: every positive entry left out is below every kept one
        left = P[~kept & (P > 0)]
        assert left.size == 0 or left.max() < vals.min()
        assert mass - vals.sum(dtype=np.float64) <= drop_tol * mass
        # minimal up to one binade: leaving out the lowest kept binade breaks a condition
        lowest = vals < 2.0 ** (np.floor(np.log2(vals.min())) + 1)
        rest = vals[~lowest]
        assert mass - rest.sum(dtype=np.float64) > drop_tol * mass or rest.size < floor
    # everything (but the zeros) when the floor asks for more entries than there are
    assert select_entries(P, mass, 10**6, 1e-2)[3] == np.count_nonzero(P)
    # the adaptive Hessian has the same exact diagonal
    H = materialize(sparsified_hessian(P, reg, drop_tol=1e-4))
    np.testing.assert_allclose(np.diag(H)[40:], -P.sum(0) / reg, rtol=1e-14)


@pytest.mark.parametrize("shape", [(9, 6), (6, 9)])
def test_newton_direction_solves_the_sparsified_system(shape):
    """The Schur-complement CG gives the solution of the full sparsified (shifted) system with
    the heaviest kept-side variable fixed at 0; every other equation holds."""
    n, m = shape
    a, b, C, f, g, reg = instance(n=n, m=m, reg=0.05, seed=2)
    P1, PT1, P = _dual.marginals(f, g, C, reg)
    gf, gg = a - P1, b - PT1
    k = keep_count(n, m, 0.3)
    sel = top_entries(P, k)
    shift = 0.2
    d = sns_module._newton_direction(P1, PT1, gf, gg, reg, sel, rtol=1e-13, max_iter=1000, jacobi=True, shift=shift)
    assert d.status is Status.CONVERGED
    Hs = -materialize(sparsified_hessian(P, reg, density=0.3, shift=shift)) * reg
    z = np.concatenate([d.df, d.dg]) / reg
    resid = Hs @ z - np.concatenate([gf, gg])
    j0 = (n + int(np.argmax(PT1))) if n >= m else int(np.argmax(P1))
    assert z[j0] == 0.0
    np.testing.assert_allclose(np.delete(resid, j0), 0.0, atol=1e-11 * np.abs(np.concatenate([gf, gg])).max())
    np.testing.assert_allclose(d.slope, gf @ d.df + gg @ d.dg, rtol=1e-12)
    assert d.slope > 0


def test_curvature_term_gives_the_exact_dual_change():
    """D(z + alpha d) - D(z) = alpha grad^T d - reg * curvature, in both branches, against
    50-digit arithmetic."""
    a, b, C, f, g, reg = instance(n=5, m=4, reg=0.1)
    P1, PT1, P = _dual.marginals(f, g, C, reg)
    rng = np.random.default_rng(0)
    df, dg = 1e-2 * rng.standard_normal(5), 1e-2 * rng.standard_normal(4)
    mpmath.mp.dps = 50

    def exact_curvature(alpha):
        total = mpmath.mpf(0)
        for i in range(5):
            for j in range(4):
                t = mpmath.mpf(alpha) * (mpmath.mpf(df[i]) + mpmath.mpf(dg[j])) / mpmath.mpf(reg)
                total += mpmath.mpf(P[i, j]) * (mpmath.exp(t) - 1 - t)
        return float(total)

    for alpha in (1.0, 1e-2, 1e-5, 1e-9):  # large t (sums) down to tiny t (series)
        new_mass = _dual.plan(f + alpha * df, g + alpha * dg, C, reg).sum()
        curv = sns_module._curvature_term(P, P1, PT1, P.sum(), new_mass, df, dg, alpha, reg)
        rtol = 1e-6 if alpha == 1.0 else 1e-9
        np.testing.assert_allclose(curv, exact_curvature(alpha), rtol=rtol)
        if alpha == 1.0:
            slope = (a - P1) @ df + (b - PT1) @ dg
            change = dual_objective(f + df, g + dg, a, b, C, reg) - dual_objective(f, g, a, b, C, reg)
            np.testing.assert_allclose(slope - reg * curv, change, rtol=1e-8)


# ----------------------------------------------------------------------------- accuracy
def test_same_plan_as_a_long_log_domain_sinkhorn():
    p = random_assignment(60, 50.0, seed=1)
    res = optkit.solve(p, "sns", tol=1e-13)
    assert res.status is Status.CONVERGED
    assert res.counters["newton_steps"] <= 6
    P_ref, log = ot.sinkhorn(p.a, p.b, p.C, p.reg, method="sinkhorn_log", stopThr=1e-13, numItermax=100_000, log=True)
    np.testing.assert_allclose(res.x, P_ref, rtol=1e-8, atol=0)
    # potentials: equal up to the gauge (c, -c)
    f, g = res.extras["potentials"]
    f_ref, g_ref = p.reg * log["log_u"], p.reg * log["log_v"]
    shift = np.mean(f - f_ref)
    np.testing.assert_allclose(f - shift, f_ref, atol=1e-11)
    np.testing.assert_allclose(g + shift, g_ref, atol=1e-11)
    # the plan is the one of the potentials, and the metrics match the problem's measures
    np.testing.assert_allclose(res.x, np.exp((f[:, None] + g[None, :] - p.C) / p.reg), rtol=1e-13)
    measures = p.evaluate(res.x, res.extras)
    np.testing.assert_allclose(res.metrics["marginal_error"], measures["marginal_error"], rtol=1e-12)
    np.testing.assert_allclose(res.metrics["dual"], measures["dual"], rtol=1e-12)
    assert measures["marginal_error"] <= 1e-13


def test_same_plan_as_our_sinkhorn():
    p = random_assignment(60, 50.0, seed=2)
    ours = optkit.solve(p, "sinkhorn", tol=1e-13)
    res = optkit.solve(p, "sns", tol=1e-13)
    assert ours.status is Status.CONVERGED and res.status is Status.CONVERGED
    np.testing.assert_allclose(res.x, ours.x, rtol=1e-8, atol=0)


def test_eta_1200_random_assignment_converges_in_few_newton_steps():
    p = random_assignment(100, 1200.0)
    res = optkit.solve(p, "sns")
    assert res.status is Status.CONVERGED
    assert res.metrics["marginal_error"] <= 1e-9
    assert p.evaluate(res.x)["marginal_error"] <= 1e-9
    assert res.counters["sinkhorn_sweeps"] == 20
    # log-domain Sinkhorn has not converged after 100 000 sweeps here
    assert res.counters["newton_steps"] <= 30
    assert res.nit == 20 + res.counters["newton_steps"]
    assert res.counters["newton_fallbacks"] == 0
    for key in ("cg_matvecs", "line_search_evals"):
        assert res.counters[key] > 0
    # the trace: one row per sweep and per Newton step; the dual increases in the Newton stage
    assert [row["iter"] for row in res.trace] == list(range(res.nit + 1))
    duals = [row["dual"] for row in res.trace[20:]]
    assert all(d1 >= d0 - 1e-15 for d0, d1 in itertools.pairwise(duals))


def test_rectangular_problem_and_zero_weights():
    rng = np.random.default_rng(4)
    n, m = 30, 18
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    a[[3, 17]] = 0.0
    b[5] = 0.0
    a, b = a / a.sum(), b / b.sum()
    C = rng.random((n, m))
    p = OTProblem(a, b, C, 1 / 300)
    for problem in (p, OTProblem(b, a, C.T.copy(), 1 / 300)):  # eliminate rows, then columns
        res = optkit.solve(problem, "sns", tol=1e-11)
        assert res.status is Status.CONVERGED
        P = res.x
        assert np.abs(P.sum(1) - problem.a).sum() + np.abs(P.sum(0) - problem.b).sum() <= 1e-11
        f, g = res.extras["potentials"]
        assert np.all(np.isneginf(f[problem.a == 0])) and np.all(np.isneginf(g[problem.b == 0]))
        assert np.all(np.isfinite(f[problem.a > 0])) and np.all(np.isfinite(g[problem.b > 0]))
        assert np.all(P[problem.a == 0] == 0) and np.all(P[:, problem.b == 0] == 0)


def test_warm_start_from_converged_potentials_stops_at_once():
    p = random_assignment(40, 100.0)
    first = optkit.solve(p, "sns", tol=1e-12)
    again = optkit.solve(p, "sns", tol=1e-11, x0=first.extras["potentials"])
    assert again.status is Status.CONVERGED and again.nit == 0


# ----------------------------------------------------------------------------- failures
def _broken_cg(status):
    def fake(A, b, x0=None, **kwargs):
        return KrylovResult(np.zeros_like(b), status, f"forced {status.name}", 0, float("nan"), 1)

    return fake


@pytest.mark.parametrize("status", [Status.BREAKDOWN, Status.NONFINITE])
def test_cg_failure_falls_back_to_sinkhorn_sweeps(monkeypatch, status):
    monkeypatch.setattr(sns_module, "cg", _broken_cg(status))
    p = random_assignment(30, 50.0)
    res = optkit.solve(p, "sns", sinkhorn_steps=2, fallback_sweeps=25)
    assert res.status is Status.CONVERGED
    assert res.counters["newton_steps"] == 0
    assert res.counters["newton_fallbacks"] == res.nit - 2 >= 1
    assert res.counters["sinkhorn_sweeps"] == 2 + 25 * res.counters["newton_fallbacks"]
    it, reason = res.extras["fallbacks"][0]
    assert it == 3 and f"CG {status.name}" in reason and "forced" in reason
    assert p.evaluate(res.x)["marginal_error"] <= 1e-9


def test_cg_breakdown_with_on_failure_stop_returns_the_last_good_iterate(monkeypatch):
    monkeypatch.setattr(sns_module, "cg", _broken_cg(Status.BREAKDOWN))
    p = random_assignment(30, 50.0)
    res = optkit.solve(p, "sns", sinkhorn_steps=5, on_failure="stop")
    assert res.status is Status.BREAKDOWN
    assert "Newton step failed at iteration 6" in res.message and "BREAKDOWN" in res.message
    assert res.nit == 6 and res.counters["sinkhorn_sweeps"] == 5
    # the iterate after the 5 sweeps, untouched
    f, g = res.extras["potentials"]
    assert np.all(np.isfinite(res.x))
    np.testing.assert_allclose(res.metrics["marginal_error"], res.trace[-1]["marginal_error"], rtol=1e-10)
    np.testing.assert_allclose(res.x, np.exp((f[:, None] + g[None, :] - p.C) / p.reg), rtol=1e-13)


def test_line_search_failure_falls_back(monkeypatch):
    monkeypatch.setattr(sns_module, "_curvature_term", lambda *args: math.inf)
    p = random_assignment(20, 50.0)
    res = optkit.solve(p, "sns", sinkhorn_steps=1, max_backtracks=3)
    assert res.status is Status.CONVERGED
    assert res.counters["newton_steps"] == 0 and res.counters["newton_fallbacks"] >= 1
    assert res.counters["line_search_evals"] == 4 * res.counters["newton_fallbacks"]
    assert "line search" in res.extras["fallbacks"][0][1]


# ----------------------------------------------------------------------------- backends
def test_numpy_and_torch_give_the_same_result():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    a, b = rng.random(30) + 0.1, rng.random(20) + 0.1
    p = OTProblem(a / a.sum(), b / b.sum(), rng.random((30, 20)), 1 / 400)
    res = optkit.solve(p, "sns", tol=1e-12)
    res_t = optkit.solve(p.to("torch"), "sns", tol=1e-12)
    assert res.status is res_t.status is Status.CONVERGED
    assert isinstance(res_t.x, torch.Tensor) and res_t.x.dtype == torch.float64
    np.testing.assert_allclose(res_t.x.numpy(), res.x, rtol=1e-8, atol=1e-15)
    f, g = res_t.extras["potentials"]
    assert isinstance(f, torch.Tensor) and isinstance(g, torch.Tensor)
    assert res_t.counters["newton_steps"] == res.counters["newton_steps"]
    # the torch helpers agree with numpy ones
    P = _dual.plan(
        *(torch.as_tensor(v) for v in (res.extras["potentials"][0], res.extras["potentials"][1], p.C)), p.reg
    )
    np.testing.assert_allclose(
        materialize(sparsified_hessian(P, p.reg, density=0.2)).numpy(),
        materialize(sparsified_hessian(P.numpy(), p.reg, density=0.2)),
        rtol=1e-14,
    )


# ----------------------------------------------------------------------------- options and limits
@pytest.mark.parametrize(
    "option, value",
    [
        ("density", 0.0),
        ("density", 1.5),
        ("drop_tol", 0.0),
        ("drop_tol", 1.0),
        ("sinkhorn_steps", -1),
        ("sinkhorn_steps", 2.5),
        ("shift", -0.1),
        ("cg_rtol", 0.0),
        ("cg_rtol", 1.0),
        ("cg_max_iter", 0),
        ("preconditioner", "ilu"),
        ("armijo", 0.0),
        ("armijo", 0.5),
        ("max_backtracks", -1),
        ("max_log_step", 0.0),
        ("on_failure", "ignore"),
        ("fallback_sweeps", 0),
        ("tol", 0.0),
        ("max_iter", -1),
    ],
)
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        SNS(**{option: value})


def test_unknown_option_and_wrong_problem_kind():
    with pytest.raises(TypeError, match="'densty'"):
        optkit.get_solver("sns", densty=0.1)
    solver = SNS()
    assert solver.options()["density"] is None
    assert "accepts OTProblem" in solver.check(optkit.get_problem("linear/poisson-2d", n=4))


def test_max_iter_and_time_limit_statuses():
    p = random_assignment(50, 1200.0)
    res = optkit.solve(p, "sns", max_iter=25)
    assert res.status is Status.MAX_ITER and res.nit == 25
    assert res.counters["sinkhorn_sweeps"] == 20 and res.counters["newton_steps"] <= 5
    assert len(res.trace) == 26
    res = optkit.solve(p, "sns", time_limit=1e-9)
    assert res.status is Status.TIME_LIMIT and res.nit == 0
    assert np.all(np.isfinite(res.x)) and res.x.shape == (50, 50)
