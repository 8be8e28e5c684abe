"""scipy-trust-constr, scipy-slsqp and ipopt on small equality-constrained problems with known
solutions: optima, multipliers (optkit's sign, L = f + y^T c), statuses, trace and counters."""

import itertools
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp

import optkit
from optkit import EqualityConstrainedProblem, SmoothProblem, Status

SOLVERS = ["scipy-trust-constr", "scipy-slsqp", "ipopt"]
# (solver, hessian option): SLSQP uses no Hessian
VARIANTS = [
    ("scipy-trust-constr", "auto"),
    ("scipy-trust-constr", "quasi-newton"),
    ("scipy-slsqp", None),
    ("ipopt", "auto"),
    ("ipopt", "quasi-newton"),
]


def needs(solver):
    if solver == "ipopt":
        pytest.importorskip("cyipopt")


def options(hessian, **extra):
    return extra if hessian is None else {"hessian": hessian, **extra}


def problem(fun, grad, cons, jac, x0, lag_hess=None, name="test", calls=None, **metadata):
    """An EqualityConstrainedProblem; ``calls`` (a Counter) counts every call of ``fun``, counted or not."""

    def counted_fun(x):
        if calls is not None:
            calls["fun"] += 1
        return fun(x)

    return EqualityConstrainedProblem(
        counted_fun, grad, cons, jac, np.asarray(x0, dtype=float), lag_hess=lag_hess, name=name, metadata=metadata
    )


def hs28(**kw):
    h = np.array([[2.0, 2.0, 0.0], [2.0, 4.0, 2.0], [0.0, 2.0, 2.0]])
    return problem(
        lambda x: (x[0] + x[1]) ** 2 + (x[1] + x[2]) ** 2,
        lambda x: h @ x,
        lambda x: np.array([x[0] + 2 * x[1] + 3 * x[2] - 1]),
        lambda x: np.array([[1.0, 2.0, 3.0]]),
        [-4.0, 1.0, 1.0],
        lambda x, y, obj_factor: obj_factor * h,
        name="hs28",
        f_opt=0.0,
        x_opt=np.array([0.5, -0.5, 0.5]),
        y_opt=np.array([0.0]),
        **kw,
    )


def hs6(**kw):
    return problem(
        lambda x: (1 - x[0]) ** 2,
        lambda x: np.array([-2 * (1 - x[0]), 0.0]),
        lambda x: np.array([10 * (x[1] - x[0] ** 2)]),
        lambda x: np.array([[-20 * x[0], 10.0]]),
        [-1.2, 1.0],
        lambda x, y, obj_factor: np.array([[2 * obj_factor - 20 * y[0], 0.0], [0.0, 0.0]]),
        name="hs6",
        f_opt=0.0,
        x_opt=np.array([1.0, 1.0]),
        y_opt=np.array([0.0]),
        **kw,
    )


def hs7(scale=1.0, **kw):
    """HS7 with its objective times ``scale``."""

    def lag_hess(x, y, obj_factor):
        t = 1 + x[0] ** 2
        return np.array(
            [[obj_factor * scale * 2 * (1 - x[0] ** 2) / t**2 + y[0] * (4 + 12 * x[0] ** 2), 0.0], [0.0, 2 * y[0]]]
        )

    # at (0, sqrt 3): grad f = (0, -1), grad c = (0, 2 sqrt 3), so y = 1 / (2 sqrt 3)
    return problem(
        lambda x: scale * (np.log1p(x[0] ** 2) - x[1]),
        lambda x: scale * np.array([2 * x[0] / (1 + x[0] ** 2), -1.0]),
        lambda x: np.array([(1 + x[0] ** 2) ** 2 + x[1] ** 2 - 4]),
        lambda x: np.array([[4 * x[0] * (1 + x[0] ** 2), 2 * x[1]]]),
        [2.0, 2.0],
        lag_hess,
        name="hs7",
        f_opt=-scale * np.sqrt(3),
        x_opt=np.array([0.0, np.sqrt(3)]),
        y_opt=np.array([scale * 0.5 / np.sqrt(3)]),
        **kw,
    )


def min_norm(**kw):
    """min ||x||^2 / 2 s.t. A x = b: x* = A^T (A A^T)^{-1} b, y* = -(A A^T)^{-1} b."""
    A = np.array([[1.0, 2.0, 2.0, 0.0], [0.0, 1.0, -1.0, 3.0]])
    b = np.array([1.0, -2.0])
    w = np.linalg.solve(A @ A.T, b)
    return problem(
        lambda x: 0.5 * float(x @ x),
        lambda x: x.copy(),
        lambda x: A @ x - b,
        lambda x: A,
        np.zeros(4),
        lambda x, y, obj_factor: obj_factor * np.eye(4),
        name="min-norm",
        f_opt=0.5 * float(w @ (A @ A.T) @ w),
        x_opt=A.T @ w,
        y_opt=-w,
        **kw,
    )


def sparse_projection(n=2000, m=1000, seed=0):
    """min ||x - z||^2 / 2 s.t. A x = b, A sparse (m, n) of full row rank, built around a chosen
    KKT pair (x*, y*): z = x* + A^T y*, b = A x*."""
    rng = np.random.default_rng(seed)
    k = 4 * m
    noise = sp.coo_array((rng.standard_normal(k), (rng.integers(0, m, k), rng.integers(0, n, k))), shape=(m, n))
    A = sp.csr_array(sp.eye_array(m, n) + noise)
    x_opt, y_opt = rng.standard_normal(n), rng.standard_normal(m)
    z, b = x_opt + A.T @ y_opt, A @ x_opt
    eye = sp.identity(n, format="csr")
    return problem(
        lambda x: 0.5 * float((x - z) @ (x - z)),
        lambda x: x - z,
        lambda x: A @ x - b,
        lambda x: A,
        np.zeros(n),
        lambda x, y, obj_factor: obj_factor * eye,
        name="sparse-projection",
        f_opt=0.5 * float(y_opt @ (A @ (A.T @ y_opt))),
        x_opt=x_opt,
        y_opt=y_opt,
    )


@pytest.mark.parametrize("make", [hs28, hs6, hs7, min_norm])
@pytest.mark.parametrize("solver,hessian", VARIANTS)
def test_reaches_the_optimum_and_its_multipliers(solver, hessian, make):
    needs(solver)
    calls = Counter()
    p = make(calls=calls)
    tol = 1e-6 if solver == "scipy-slsqp" else 1e-8  # SLSQP's test is on f's change (ftol = tol)
    res = optkit.solve(p, solver, tol=tol, max_iter=500, **options(hessian))
    # counters are the library's evaluations only: trace rows and the final measures are not counted
    assert calls["fun"] == res.counters["fun"] + len(res.trace) + 1
    assert res.status is Status.CONVERGED, res.message
    np.testing.assert_allclose(res.fun, p.metadata["f_opt"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.x, p.metadata["x_opt"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(res.extras["y"], p.metadata["y_opt"], rtol=0, atol=1e-4)
    assert res.metrics["kkt"] <= tol
    # the final measures are problem.evaluate's with the returned multipliers
    measured = p.evaluate(res.x, res.extras)
    for key in ("fun", "stationarity", "feasibility", "kkt"):
        np.testing.assert_allclose(res.metrics[key], measured[key], rtol=1e-12, atol=1e-300)
    # trace: iterations 0..nit, starting at x0 with least-squares multipliers
    assert [row["iter"] for row in res.trace] == list(range(res.nit + 1))
    start = p.evaluate(p.x0)
    np.testing.assert_allclose(
        [res.trace[0][k] for k in ("fun", "feasibility", "kkt")],
        [start[k] for k in ("fun", "feasibility", "kkt")],
        rtol=1e-12,
    )
    assert res.counters["fun"] > 0 and res.counters["jac"] > 0
    assert (res.counters.get("lag_hess", 0) > 0) is (hessian == "auto")


@pytest.mark.parametrize("solver", SOLVERS)
def test_closed_form_multiplier_sign(solver):
    # min ||x||^2 / 2 s.t. a^T x = 1: x* = a / ||a||^2, y* = -1 / ||a||^2 = -1/9
    needs(solver)
    a = np.array([1.0, 2.0, 2.0])
    p = problem(
        lambda x: 0.5 * float(x @ x),
        lambda x: x.copy(),
        lambda x: np.array([a @ x - 1]),
        lambda x: a[None, :],
        np.zeros(3),
        lambda x, y, obj_factor: obj_factor * np.eye(3),
    )
    res = optkit.solve(p, solver, tol=1e-10)
    assert res.status is Status.CONVERGED, res.message
    np.testing.assert_allclose(res.x, a / 9, rtol=1e-8)
    np.testing.assert_allclose(res.extras["y"], [-1 / 9], rtol=1e-8)


def test_slsqp_success_is_checked_against_the_kkt_residual():
    # SLSQP stops on f's change (ftol = tol = 1e-8) at a KKT residual ~ 9e-8 on HS6
    res = optkit.solve(hs6(), "scipy-slsqp", tol=1e-8)
    assert res.status is Status.STALLED and res.metrics["kkt"] > 1e-8
    assert "successfully" in res.message and "kkt = " in res.message
    assert res.to_scipy().status == 0 and res.extras["library_status"] == 0
    tight = optkit.solve(hs6(), "scipy-slsqp", tol=1e-8, ftol=1e-12)
    assert tight.status is Status.CONVERGED and tight.metrics["kkt"] <= 1e-8


@pytest.mark.parametrize("solver,hessian", VARIANTS)
def test_trace_rows_are_the_iterates_of_shorter_runs(solver, hessian):
    needs(solver)
    seen = {}
    res = optkit.solve(
        hs7(),
        solver,
        tol=1e-10,
        max_iter=100,
        callback=lambda info: seen.update({info["iter"]: info["x"].copy()}),
        **options(hessian),
    )
    assert res.nit >= 4 and sorted(seen) == list(range(res.nit + 1))
    assert all({"iter", "time", "fun", "feasibility", "stationarity", "kkt"} <= set(row) for row in res.trace)
    times = [row["time"] for row in res.trace]
    assert times == sorted(times) and res.time_s >= times[-1]
    np.testing.assert_array_equal(seen[res.nit], res.x)
    for k in (1, res.nit // 2):
        short = optkit.solve(hs7(), solver, tol=1e-10, max_iter=k, **options(hessian))
        assert short.status is Status.MAX_ITER and short.nit == k
        np.testing.assert_array_equal(short.x, seen[k])
        p = hs7()
        np.testing.assert_allclose(res.trace[k]["fun"], p.fun(seen[k]), rtol=1e-14)
        np.testing.assert_allclose(res.trace[k]["feasibility"], np.abs(p.cons(seen[k])).max(), rtol=1e-14)


@pytest.mark.parametrize("solver", SOLVERS)
def test_time_limit_with_a_deterministic_clock(solver, monkeypatch):
    needs(solver)
    full = optkit.solve(hs7(), solver, tol=1e-12, max_iter=200)
    # one second per clock reading: the limit lands at the same iteration on any machine
    ticks = itertools.count()
    monkeypatch.setattr("optkit.solver.time.perf_counter", lambda: float(next(ticks)))
    limited = optkit.solve(hs7(), solver, tol=1e-12, max_iter=200, time_limit=4.0)
    monkeypatch.undo()
    assert limited.status is Status.TIME_LIMIT and 0 < limited.nit < full.nit
    assert limited.trace[-1]["time"] >= 4.0 > limited.trace[-2]["time"]
    same = optkit.solve(hs7(), solver, tol=1e-12, max_iter=limited.nit)
    np.testing.assert_array_equal(limited.x, same.x)


@pytest.mark.parametrize("solver", SOLVERS)
def test_callback_stop_max_iter_and_start_at_the_optimum(solver):
    needs(solver)
    res = optkit.solve(hs7(), solver, callback=lambda info: info["iter"] == 2)
    assert res.status is Status.USER_STOPPED and res.nit == 2 and len(res.trace) == 3
    capped = optkit.solve(hs7(), solver, tol=1e-12, max_iter=3)
    assert capped.status is Status.MAX_ITER and capped.nit == 3
    assert capped.metrics["kkt"] > 1e-12
    zero = optkit.solve(hs7(), solver, max_iter=0)
    assert zero.status is Status.MAX_ITER and zero.nit == 0 and sum(zero.counters.values()) == 0
    np.testing.assert_array_equal(zero.x, hs7().x0)
    p = hs28()
    at_opt = optkit.solve(p, solver, x0=p.metadata["x_opt"], tol=1e-8)
    assert at_opt.status is Status.CONVERGED and at_opt.nit == 0
    np.testing.assert_allclose(at_opt.extras["y"], [0.0], atol=1e-14)


@pytest.mark.parametrize(
    "solver,n,m", [("scipy-trust-constr", 2000, 1000), ("ipopt", 2000, 1000), ("scipy-slsqp", 60, 30)]
)
def test_sparse_jacobian_and_hessian(solver, n, m):
    needs(solver)
    p = sparse_projection(n, m)
    res = optkit.solve(p, solver, tol=1e-8)
    assert res.status is Status.CONVERGED, res.message
    np.testing.assert_allclose(res.x, p.metadata["x_opt"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(res.extras["y"], p.metadata["y_opt"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(res.fun, p.metadata["f_opt"], rtol=1e-10)
    assert res.metrics["kkt"] <= 1e-8


def test_ipopt_sparse_pattern():
    from solvers.baselines.ipopt_solver import _Pattern

    dense = np.arange(1.0, 10.0).reshape(3, 3)
    full = _Pattern(dense, lower=False, what="jac")
    np.testing.assert_array_equal(full.values(dense), dense.ravel())
    lower = _Pattern(dense, lower=True, what="lag_hess")
    np.testing.assert_array_equal(lower.values(dense), [1.0, 4.0, 5.0, 7.0, 8.0, 9.0])
    matrix = sp.csr_array(np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]]))
    pattern = _Pattern(matrix, lower=True, what="lag_hess")
    assert list(zip(*pattern.structure())) == [(0, 0), (1, 1), (2, 0)]
    np.testing.assert_array_equal(pattern.values(2 * matrix), [4.0, 6.0, 2.0])
    with pytest.raises(ValueError, match="sparsity pattern of lag_hess changed"):
        pattern.values(sp.csr_array(np.eye(3)))


def test_ipopt_tol_is_on_the_unscaled_kkt_residual():
    # a large multiplier (~2.9e5) lets IPOPT's scaled error pass tol long before the KKT residual does
    needs("ipopt")
    p = hs7(scale=1e6)
    res = optkit.solve(p, "ipopt", tol=1e-8)
    assert res.status is Status.CONVERGED and res.metrics["kkt"] <= 1e-8
    np.testing.assert_allclose(res.extras["y"], p.metadata["y_opt"], rtol=1e-10)


def test_ipopt_prints_nothing():
    # in a fresh process: IPOPT prints its banner once per process
    needs("ipopt")
    script = (
        "import numpy as np, optkit\n"
        "p = optkit.EqualityConstrainedProblem(lambda x: float(x @ x), lambda x: 2 * x, lambda x: x[:1] - 1,\n"
        "    lambda x: np.eye(1, 2), np.zeros(2), lag_hess=lambda x, y, s: 2 * s * np.eye(2))\n"
        "assert optkit.solve(p, 'ipopt').success\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_ipopt_without_cyipopt_names_the_install(monkeypatch):
    import optkit.backend
    from solvers.baselines import ipopt_solver

    monkeypatch.setattr(ipopt_solver, "has_module", lambda name: False)
    monkeypatch.setattr(optkit.backend, "has_module", lambda name: False)
    solver = optkit.get_solver("ipopt")
    reason = solver.check(hs28())
    assert "pip install 'optkit[ipopt]'" in reason and "coinor-libipopt-dev" in reason
    with pytest.raises(ImportError, match=r"optkit\[ipopt\].*coinor-libipopt-dev"):
        solver.solve(hs28())


@pytest.mark.parametrize("solver", SOLVERS)
def test_refuses_what_it_cannot_solve(solver, monkeypatch):
    needs(solver)
    smooth = SmoothProblem(lambda x: float(x @ x), lambda x: 2 * x, np.ones(2), name="smooth")
    s = optkit.get_solver(solver)
    assert "accepts EqualityConstrainedProblem, not SmoothProblem" in s.check(smooth)
    with pytest.raises(ValueError, match="accepts EqualityConstrainedProblem"):
        s.solve(smooth)
    operator_jac = hs28()
    monkeypatch.setattr(operator_jac, "_jac", lambda x: optkit.aslinearoperator(np.array([[1.0, 2.0, 3.0]])))
    with pytest.raises(TypeError, match="needs the constraint Jacobian's entries"):
        s.solve(operator_jac)


@pytest.mark.parametrize("solver", ["scipy-trust-constr", "ipopt"])
def test_exact_hessian_needs_lag_hess(solver):
    needs(solver)
    p = hs7()
    no_hessian = EqualityConstrainedProblem(p._fun, p._grad, p._cons, p._jac, p.x0, name="no-hessian")
    assert "requires 'lag_hess'" in optkit.get_solver(solver, hessian="exact").check(no_hessian)
    assert optkit.get_solver(solver).check(no_hessian) is None
    res = optkit.solve(no_hessian, solver, tol=1e-8)
    assert res.status is Status.CONVERGED and "lag_hess" not in res.counters
    np.testing.assert_allclose(res.fun, -np.sqrt(3), atol=1e-8)


@pytest.mark.parametrize(
    "solver,opts,word",
    [
        ("scipy-trust-constr", {"tol": -1.0}, "tol"),
        ("scipy-trust-constr", {"hessian": "newton"}, "hessian"),
        ("scipy-trust-constr", {"xtol": 0.0}, "xtol"),
        ("scipy-slsqp", {"max_iter": -1}, "max_iter"),
        ("scipy-slsqp", {"ftol": -1e-8}, "ftol"),
        ("ipopt", {"hessian": "bfgs"}, "hessian"),
        ("ipopt", {"memory": 0}, "memory"),
        ("ipopt", {"time_limit": 0}, "time_limit"),
    ],
)
def test_bad_options(solver, opts, word):
    with pytest.raises(ValueError, match=rf"^{word} must"):
        optkit.get_solver(solver, **opts)


@pytest.mark.parametrize("solver", SOLVERS)
def test_unknown_option(solver):
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'gtol'"):
        optkit.get_solver(solver, gtol=1e-8)


def test_slsqp_refuses_more_equality_constraints_than_variables():
    # SciPy 1.17's SLSQP corrupts the heap on such a problem (a sweep died of it runs later)
    overdetermined = EqualityConstrainedProblem(
        lambda x: float(x @ x),
        lambda x: 2 * x,
        lambda x: np.array([x[0] - 1.0, x[1] - 1.0, x[0] - x[1]]),
        lambda x: np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]),
        np.zeros(2),
        name="three-equations-two-unknowns",
    )
    solver = optkit.registry.SOLVERS.get("scipy-slsqp")()
    assert solver.check(overdetermined) == "SLSQP needs at most n equality constraints, got m=3 > n=2"
    assert solver.check(hs6()) is None
    with pytest.raises(ValueError, match="m=3 > n=2"):
        optkit.solve(overdetermined, "scipy-slsqp")
