"""The shared dual math (solvers.ot._dual) and the log-domain ``sinkhorn`` solver."""

import numpy as np
import pytest
from scipy.special import logsumexp

import optkit
from optkit import Status
from optkit.backend import backend_name
from optkit.ot_problem import OTProblem
from solvers.ot import _dual

torch = pytest.importorskip("torch")
ot = pytest.importorskip("ot")


def _random_instance(n=7, m=5, seed=0, reg=0.05):
    rng = np.random.default_rng(seed)
    a = rng.random(n) + 0.1
    a /= a.sum()
    b = rng.random(m) + 0.1
    b /= b.sum()
    C = rng.random((n, m))
    f = rng.standard_normal(n) * 0.1
    g = rng.standard_normal(m) * 0.1
    return a, b, C, f, g, reg


def _one_d(n=20, eta=1e4):
    """1-D Gaussians on [0, 1] with the L1 cost: Sinkhorn converges at eta = 1e4 in ~1300 sweeps."""
    x = np.linspace(0, 1, n)
    a = np.exp(-((x - 0.3) ** 2) / 0.02)
    b = np.exp(-((x - 0.6) ** 2) / 0.05)
    C = np.abs(x[:, None] - x[None, :])
    return OTProblem(a / a.sum(), b / b.sum(), C, 1.0 / eta, name="one-d")


# ----------------------------------------------------------------------------- _dual


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_dual_functions_match_dense_formulas(backend):
    a, b, C, f, g, reg = _random_instance()
    P = np.array([[np.exp((f[i] + g[j] - C[i, j]) / reg) for j in range(C.shape[1])] for i in range(C.shape[0])])
    conv = (lambda v: v) if backend == "numpy" else (lambda v: torch.as_tensor(v))
    A = [conv(v) for v in (f, g, C)]
    np.testing.assert_allclose(np.asarray(_dual.log_plan(*A, reg)), np.log(P), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(_dual.plan(*A, reg)), P, rtol=1e-13)
    rows, cols, P2 = _dual.marginals(*A, reg)
    np.testing.assert_allclose(np.asarray(rows), P.sum(1), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(cols), P.sum(0), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(P2), P, rtol=1e-13)
    viol = _dual.marginal_violation(rows, cols, conv(a), conv(b))
    assert isinstance(viol, float)
    np.testing.assert_allclose(viol, np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum(), rtol=1e-12)
    # the exact block updates, against scipy's logsumexp
    la, lb = np.log(a), np.log(b)
    f_new = _dual.update_f(conv(g), conv(la), conv(C), reg)
    np.testing.assert_allclose(np.asarray(f_new), reg * (la - logsumexp((g[None, :] - C) / reg, axis=1)), rtol=1e-13)
    g_new = _dual.update_g(conv(f), conv(lb), conv(C), reg)
    np.testing.assert_allclose(np.asarray(g_new), reg * (lb - logsumexp((f[:, None] - C) / reg, axis=0)), rtol=1e-13)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("reg", [0.5, 1e-2, 1e-4])
def test_one_sweep_makes_rows_then_columns_exact(backend, reg):
    a, b, C, f, g, _ = _random_instance(n=9, m=6, seed=3)
    conv = (lambda v: v) if backend == "numpy" else (lambda v: torch.as_tensor(v))
    f1, g1 = _dual.sinkhorn_sweep(conv(f), conv(g), conv(np.log(a)), conv(np.log(b)), conv(C), reg)
    assert type(f1) is type(conv(f)) and tuple(f1.shape) == (9,) and tuple(g1.shape) == (6,)
    # after the first half the rows are exact for the old g, after the second the columns
    rows_half = np.asarray(_dual.plan(f1, conv(g), conv(C), reg)).sum(1)
    np.testing.assert_allclose(rows_half, a, rtol=1e-12)
    P1 = np.asarray(_dual.plan(f1, g1, conv(C), reg))
    np.testing.assert_allclose(P1.sum(0), b, rtol=1e-12)
    assert np.all(np.isfinite(P1))
    # the documented free row marginal of the input point
    f2, _ = _dual.sinkhorn_sweep(f1, g1, conv(np.log(a)), conv(np.log(b)), conv(C), reg)
    np.testing.assert_allclose(a * np.exp((np.asarray(f1) - np.asarray(f2)) / reg), P1.sum(1), rtol=1e-9)


def test_sweep_uses_the_scratch_array_and_leaves_inputs_alone():
    a, b, C, f, g, reg = _random_instance(n=30, m=20, seed=1, reg=1e-3)
    C0, g0 = C.copy(), g.copy()
    work = np.empty_like(C)
    with_work = _dual.sinkhorn_sweep(f, g, np.log(a), np.log(b), C, reg, work=work)
    without = _dual.sinkhorn_sweep(f, g, np.log(a), np.log(b), C, reg)
    np.testing.assert_array_equal(with_work[0], without[0])
    np.testing.assert_array_equal(with_work[1], without[1])
    np.testing.assert_array_equal(C, C0)
    np.testing.assert_array_equal(g, g0)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_sweep_with_zero_weights_gives_zero_rows_without_nan(backend):
    a, b, C, f, g, reg = _random_instance(n=6, m=5, seed=2)
    a[2] = 0.0
    a /= a.sum()
    with np.errstate(divide="ignore"):
        la = np.log(a)
    conv = (lambda v: v) if backend == "numpy" else (lambda v: torch.as_tensor(v))
    f1, g1 = _dual.sinkhorn_sweep(conv(f), conv(g), conv(la), conv(np.log(b)), conv(C), reg)
    f1, g1 = np.asarray(f1), np.asarray(g1)
    assert f1[2] == -np.inf and np.all(np.isfinite(np.delete(f1, 2))) and np.all(np.isfinite(g1))
    # a whole column at -inf stays at -inf too
    g2 = np.asarray(_dual.update_g(conv(np.full(6, -np.inf)), conv(np.log(b)), conv(C), reg))
    assert np.all(g2 == np.inf)
    P = _dual.plan(f1, g1, C, reg)
    assert np.all(P[2] == 0) and not np.any(np.isnan(P))
    np.testing.assert_allclose(P.sum(0), b, rtol=1e-12)


def test_sweep_at_tiny_reg_matches_the_far_away_logsumexp():
    # exponents down to -1e5: every kernel entry but the row/column minimum underflows
    a, b, C, f, g, _ = _random_instance(n=12, m=10, seed=5)
    reg = 1e-5
    f1, g1 = _dual.sinkhorn_sweep(f, g, np.log(a), np.log(b), C, reg)
    np.testing.assert_allclose(f1, reg * (np.log(a) - logsumexp((g[None, :] - C) / reg, axis=1)), rtol=1e-13)
    np.testing.assert_allclose(g1, reg * (np.log(b) - logsumexp((f1[:, None] - C) / reg, axis=0)), rtol=1e-13)


# ----------------------------------------------------------------------------- the solver


def test_matches_pot_sinkhorn_log_plan_and_potentials():
    p = optkit.get_problem("ot/point-clouds", n=40, m=30, eta=50, seed=2)
    res = optkit.solve(p, "sinkhorn", tol=1e-13, max_iter=5000)
    assert res.status is Status.CONVERGED, res.message
    P_ref, log = ot.sinkhorn(p.a, p.b, p.C, p.reg, method="sinkhorn_log", numItermax=5000, stopThr=1e-15, log=True)
    np.testing.assert_allclose(res.x, P_ref, atol=1e-8 * P_ref.max(), rtol=0)
    np.testing.assert_allclose(res.x, P_ref, rtol=1e-8, atol=1e-300)
    f, g = res.extras["potentials"]
    f_ref, g_ref = p.reg * log["log_u"], p.reg * log["log_v"]
    c = np.mean(f - f_ref)  # the (c, -c) gauge
    np.testing.assert_allclose(f - c, f_ref, atol=1e-9)
    np.testing.assert_allclose(g + c, g_ref, atol=1e-9)
    # the result's plan is the plan of its potentials, and its metric is problem.evaluate's
    np.testing.assert_allclose(res.x, np.exp((f[:, None] + g[None, :] - p.C) / p.reg), rtol=1e-14)
    assert res.metrics["marginal_error"] <= 1e-13
    np.testing.assert_allclose(res.metrics["marginal_error"], p.evaluate(res.x)["marginal_error"], rtol=1e-12)
    assert res.counters["sinkhorn_sweeps"] == res.nit == res.trace[-1]["iter"]


def test_converges_at_eta_1e4_without_nan():
    p = _one_d(eta=1e4)
    # the kernel exp(-C / reg) underflows here: a scaling-domain Sinkhorn breaks down
    assert np.mean(np.exp(-p.C / p.reg) == 0) > 0.5
    res = optkit.solve(p, "sinkhorn", tol=1e-9, max_iter=5000)
    assert res.status is Status.CONVERGED, res.message
    assert np.all(np.isfinite(res.x)) and all(np.all(np.isfinite(v)) for v in res.extras["potentials"])
    assert all(np.isfinite(row["marginal_error"]) for row in res.trace)
    assert p.evaluate(res.x)["marginal_error"] <= 1e-9
    # at eta = 1e4 the entropic cost is within a few 1/eta of the exact one
    exact = ot.emd2(p.a, p.b, p.C)
    assert abs(float((res.x * p.C).sum()) - exact) < 1e-3


@pytest.mark.parametrize("stages", [1, 3])
def test_eps_scaling_gives_the_same_answer(stages):
    p = optkit.get_problem("ot/digits", cost="l2", eta=400)
    plain = optkit.solve(p, "sinkhorn", tol=1e-11)
    scaled = optkit.solve(p, "sinkhorn", tol=1e-11, eps_scaling=stages, eps_scaling_factor=4.0)
    assert plain.status is scaled.status is Status.CONVERGED
    np.testing.assert_allclose(scaled.x, plain.x, atol=1e-9 * plain.x.max(), rtol=0)
    assert scaled.extras["regs"] == tuple(p.reg * 4.0**k for k in range(stages, -1, -1))
    stage = [row["stage"] for row in scaled.trace]
    assert stage == sorted(stage) and stage[0] == 0 and stage[-1] == stages
    assert scaled.metrics["stage"] == stages


def test_numpy_torch_parity_float64():
    p = optkit.get_problem("ot/point-clouds", n=30, eta=200, seed=1)
    ref = optkit.solve(p, "sinkhorn", tol=1e-10)
    pt = p.to("torch")
    res = optkit.solve(pt, "sinkhorn", tol=1e-10)
    assert isinstance(res.x, torch.Tensor) and res.x.dtype == torch.float64
    assert res.status is ref.status is Status.CONVERGED and res.nit == ref.nit
    np.testing.assert_allclose(res.x.numpy(), ref.x, rtol=1e-10, atol=1e-18)
    for got, want in zip(res.extras["potentials"], ref.extras["potentials"]):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(res.metrics["marginal_error"], ref.metrics["marginal_error"], rtol=1e-3)


def test_check_every_and_the_trace():
    p = optkit.get_problem("ot/random-assignment", n=50, eta=100)
    every = optkit.solve(p, "sinkhorn", tol=1e-10)
    sparse = optkit.solve(p, "sinkhorn", tol=1e-10, check_every=7)
    assert every.status is sparse.status is Status.CONVERGED
    assert sparse.nit % 7 == 0 and every.nit <= sparse.nit < every.nit + 7
    errors = [row["marginal_error"] for row in sparse.trace]
    # between checks the trace repeats the last measured error
    assert all(errors[k] == errors[k - 1] for k in range(1, len(errors)) if k % 7)
    # the measured trace error is the true one of the iterate at that sweep
    seen = {}
    optkit.solve(p, "sinkhorn", tol=1e-10, max_iter=12, callback=lambda info: seen.update({info["iter"]: info}))
    f, g = seen[12]["x"]
    np.testing.assert_allclose(
        seen[12]["marginal_error"], p.evaluate(_dual.plan(f, g, p.C, p.reg))["marginal_error"], rtol=1e-6
    )


def test_start_point_limits_and_failures():
    p = optkit.get_problem("ot/random-assignment", n=40, eta=100)
    full = optkit.solve(p, "sinkhorn", tol=1e-12)
    # a warm start at the solution (as a pair, or in the x0 layout) is converged at iteration 0
    for x0 in (full.extras["potentials"], np.concatenate(full.extras["potentials"])):
        again = optkit.solve(p, "sinkhorn", tol=1e-10, x0=x0)
        assert again.status is Status.CONVERGED and again.nit == 0
    capped = optkit.solve(p, "sinkhorn", tol=1e-12, max_iter=5)
    assert capped.status is Status.MAX_ITER and capped.nit == 5 and capped.metrics["marginal_error"] > 1e-12
    bad = optkit.solve(p, "sinkhorn", x0=np.full(80, np.nan))
    assert bad.status is Status.NONFINITE
    with pytest.raises(ValueError, match="x0"):
        optkit.solve(p, "sinkhorn", x0=np.zeros(7))
    for option, value in [("check_every", 0), ("eps_scaling", -1), ("eps_scaling_factor", 1.0), ("eps_scaling_tol", 0)]:
        with pytest.raises(ValueError, match=option):
            optkit.get_solver("sinkhorn", **{option: value})


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_zero_weights(backend):
    p = optkit.get_problem("ot/point-clouds", n=20, m=15, eta=100, seed=5)
    a, b = p.a.copy(), p.b.copy()
    a[[3, 7]] = 0.0
    b[0] = 0.0
    q = OTProblem(a / a.sum(), b / b.sum(), p.C, p.reg, name="zeros")
    q = q.to(backend)
    res = optkit.solve(q, "sinkhorn", tol=1e-11)
    assert res.status is Status.CONVERGED, res.message
    P = np.asarray(res.x)
    assert np.all(P[[3, 7]] == 0) and np.all(P[:, 0] == 0) and not np.any(np.isnan(P))
    with np.errstate(divide="ignore"):  # POT takes log(0)
        ref = ot.sinkhorn(a / a.sum(), b / b.sum(), p.C, p.reg, method="sinkhorn_log", stopThr=1e-14, numItermax=10**4)
    np.testing.assert_allclose(P, ref, atol=1e-9 * ref.max(), rtol=0)


def test_time_limit():
    p = optkit.get_problem("ot/random-assignment", n=60, eta=2000)
    res = optkit.solve(p, "sinkhorn", tol=1e-14, time_limit=0.05)
    assert res.status is Status.TIME_LIMIT and 0 < res.nit
    assert np.isfinite(res.metrics["marginal_error"]) and res.metrics["marginal_error"] > 1e-14


# ----------------------------------------------------------------------------- dtypes (both OT solvers)
OT_SOLVERS = ["sinkhorn", "sns"]


def _float_dtype(x):
    return str(x.dtype).removeprefix("torch.")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("solver", OT_SOLVERS)
def test_float32_tolerance_below_reach_ends_stalled(solver, backend):
    p = optkit.get_problem("ot/point-clouds", n=40, m=30, eta=50, seed=2)
    ref = optkit.solve(p, "sinkhorn", tol=1e-13)
    q = p.to(backend, dtype="float32")
    res = optkit.solve(q, solver, tol=1e-9)
    assert res.status is Status.STALLED, res.message
    assert "float32" in res.message and "attainable accuracy" in res.message
    measured = q.evaluate(res.x)["marginal_error"]
    # the result's error is the one of the returned plan (two float32 summation orders)
    np.testing.assert_allclose(res.metrics["marginal_error"], measured, rtol=1e-5)
    # float32's level here is ~1e-6 (about 8 eps); the bound leaves a factor 10
    assert 1e-9 < measured < 1e-5
    f, g = res.extras["potentials"]
    assert {_float_dtype(v) for v in (res.x, f, g)} == {"float32"}
    # rounding moves the plan by ~7e-6 relative (measured); 1e-4 leaves a wide margin
    np.testing.assert_allclose(np.asarray(res.x, dtype=np.float64), ref.x, rtol=1e-4)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("solver", OT_SOLVERS)
def test_float32_reachable_tolerance_converges_on_the_returned_plan(solver, backend):
    p = optkit.get_problem("ot/point-clouds", n=40, m=30, eta=50, seed=2).to(backend, dtype="float32")
    # x0 in float64 numpy: the potentials still come back in the problem's dtype
    res = optkit.solve(p, solver, tol=1e-5, x0=np.zeros(70))
    assert res.status is Status.CONVERGED
    assert p.evaluate(res.x)["marginal_error"] <= 1e-5
    f, g = res.extras["potentials"]
    assert {_float_dtype(v) for v in (res.x, f, g)} == {"float32"}
    assert all(backend_name(v) == backend for v in (res.x, f, g))


@pytest.mark.parametrize("solver", OT_SOLVERS)
def test_float64_tolerance_below_reach_ends_stalled(solver):
    p = optkit.get_problem("ot/point-clouds", n=40, m=30, eta=50, seed=2)
    res = optkit.solve(p, solver, tol=1e-17)
    assert res.status is Status.STALLED
    assert "float64" in res.message and "use a larger tol" in res.message and "or float64" not in res.message
    assert 1e-17 < res.metrics["marginal_error"] < 1e-13  # float64 rounding here: ~1e-15


@pytest.mark.parametrize("solver", OT_SOLVERS)
def test_integer_cost_and_weights_solve_as_float64(solver):
    rng = np.random.default_rng(0)
    a, b = np.array([3, 1, 2, 4, 2]), np.array([4, 4, 4])
    C = rng.integers(0, 10, size=(5, 3))
    problem = OTProblem(a, b, C, 2)
    assert problem.dtype == np.float64
    res = optkit.solve(problem, solver, tol=1e-10)
    as_float = optkit.solve(OTProblem(a * 1.0, b * 1.0, C * 1.0, 2.0), solver, tol=1e-10)
    assert res.status is as_float.status is Status.CONVERGED
    # after the conversion both problems hold the same float64 arrays: same arithmetic
    np.testing.assert_array_equal(res.x, as_float.x)
    assert res.x.dtype == np.float64


@pytest.mark.parametrize("solver", OT_SOLVERS)
def test_integer_tensors_take_torch_default_dtype(solver):
    a, b = torch.tensor([3, 1, 2, 4, 2]), torch.tensor([4, 4, 4])
    C = torch.tensor(np.random.default_rng(0).integers(0, 10, size=(5, 3)))
    problem = OTProblem(a, b, C, np.float32(2.0))
    assert problem.dtype == torch.get_default_dtype()
    # float32 on these costs (up to 9, mass 12) reaches ~1e-5; 1e-4 is within reach
    res = optkit.solve(problem, solver, tol=1e-4)
    assert res.status is Status.CONVERGED and res.x.dtype == problem.dtype
    ref = optkit.solve(OTProblem(a.numpy() * 1.0, b.numpy() * 1.0, C.numpy() * 1.0, 2.0), solver, tol=1e-12)
    np.testing.assert_allclose(res.x.double().numpy(), ref.x, rtol=1e-3, atol=1e-6)
