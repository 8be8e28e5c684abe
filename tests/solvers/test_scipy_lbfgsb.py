"""scipy-lbfgsb on the smooth ML problems: optimum, statuses, trace and counters."""

import itertools

import numpy as np
import pytest

import optkit
from optkit import Status


# Each tolerance leaves f - f_opt <= ||g||^2 / (2 lambda_min) at least 100 ulps of f above
# rounding (f ~ 5e-3, lambda_min ~ 0.25 for the first; f ~ 1, lambda_min >= 0.1 for the second),
# so L-BFGS-B meets it whatever the BLAS kernels' rounding.
@pytest.mark.parametrize("params,tol", [({}, 1e-8), ({"m": 60, "n": 80, "lam": 0.1, "seed": 4}, 1e-6)])
def test_reaches_the_least_squares_closed_form(params, tol):
    p = optkit.get_problem("ml/least-squares", **params)
    res = optkit.solve(p, "scipy-lbfgsb", tol=tol, max_iter=2000)
    assert res.status is Status.CONVERGED, res.message
    assert res.metrics["grad_inf"] <= tol
    # ||x - x_opt|| <= ||g|| / lambda_min(H), f - f_opt <= ||g||^2 / (2 lambda_min(H))
    lam_min = np.linalg.eigvalsh(p.hess(res.x))[0]
    assert np.linalg.norm(res.x - p.metadata["x_opt"]) <= res.metrics["grad_norm"] / lam_min
    assert 0 <= res.fun - p.metadata["f_opt"] <= res.metrics["grad_norm"] ** 2 / (2 * lam_min) + 1e-15
    np.testing.assert_allclose(res.jac, p.grad(res.x), rtol=1e-12)
    # counters come from the problem; trace rows are iterations 0..nit with fun and grad_norm
    assert res.counters["fun"] == res.counters["grad"] >= res.nit > 0
    assert [row["iter"] for row in res.trace] == list(range(res.nit + 1))
    np.testing.assert_allclose(res.trace[0]["fun"], p.fun(p.x0))
    np.testing.assert_allclose(res.trace[0]["grad_norm"], np.linalg.norm(p.grad(p.x0)))
    np.testing.assert_allclose(res.trace[-1]["fun"], res.fun)


def test_stalling_before_tol_is_stalled_not_convergence():
    # f ~ 3e-3: a gradient of 1e-13 is below what double precision resolves in f; SciPy calls
    # its relative-reduction stop a success, optkit says the tolerance was not reached
    p = optkit.get_problem("ml/least-squares")
    res = optkit.solve(p, "scipy-lbfgsb", tol=1e-13, max_iter=2000)
    assert res.status is Status.STALLED and res.metrics["grad_inf"] > 1e-13
    assert "REDUCTION OF F" in res.message and "grad_inf" in res.message
    scipy_view = res.to_scipy()
    assert scipy_view.status == 0 and not scipy_view.success and scipy_view.optkit_status == "STALLED"
    assert scipy_view.hess_inv.shape == (p.n, p.n)


def test_logistic_gradient_tolerance():
    p = optkit.get_problem("ml/logistic")
    res = optkit.solve(p, "scipy-lbfgsb", tol=1e-8, max_iter=5000)
    assert res.status is Status.CONVERGED
    g = p.grad(res.x)
    assert np.abs(g).max() <= 1e-8
    np.testing.assert_allclose(res.metrics["grad_norm"], np.linalg.norm(g), rtol=1e-12)


def test_max_iter_and_time_limit(monkeypatch):
    p = optkit.get_problem("ml/logistic")
    res = optkit.solve(p, "scipy-lbfgsb", tol=1e-12, max_iter=4)
    assert res.status is Status.MAX_ITER and res.nit == 4
    assert res.fun < p.fun(p.x0) and res.metrics["grad_inf"] > 1e-12
    full = optkit.solve(p, "scipy-lbfgsb", tol=1e-12, max_iter=10000)
    # one second per clock reading: the limit lands at the same iteration on any machine
    ticks = itertools.count()
    monkeypatch.setattr("optkit.solver.time.perf_counter", lambda: float(next(ticks)))
    limited = optkit.solve(p, "scipy-lbfgsb", tol=1e-12, max_iter=10000, time_limit=6.0)
    monkeypatch.undo()
    assert limited.status is Status.TIME_LIMIT and limited.nit < full.nit
    np.testing.assert_allclose(limited.fun, p.fun(limited.x), rtol=1e-14)
    if limited.nit > 0:
        same = optkit.solve(p, "scipy-lbfgsb", tol=1e-12, max_iter=limited.nit)
        np.testing.assert_array_equal(limited.x, same.x)


def test_callback_stop_and_start_at_optimum():
    p = optkit.get_problem("ml/least-squares")
    res = optkit.solve(p, "scipy-lbfgsb", callback=lambda info: info["iter"] == 3)
    assert res.status is Status.USER_STOPPED and res.nit == 3
    at_opt = optkit.solve(p, "scipy-lbfgsb", x0=p.metadata["x_opt"], tol=1e-8)
    assert at_opt.status is Status.CONVERGED and at_opt.nit == 0


def test_rejects_linear_systems_and_torch():
    assert "accepts SmoothProblem" in optkit.get_solver("scipy-lbfgsb").check(
        optkit.get_problem("linear/poisson-2d", n=4)
    )
    pytest.importorskip("torch")
    pt = optkit.get_problem("ml/least-squares").to("torch")
    assert "not on backend 'torch'" in optkit.get_solver("scipy-lbfgsb").check(pt)


@pytest.mark.parametrize("options,word", [({"tol": 0}, "tol"), ({"memory": 0}, "memory"), ({"ftol": -1.0}, "ftol")])
def test_bad_options(options, word):
    with pytest.raises(ValueError, match=rf"^{word} must"):
        optkit.get_solver("scipy-lbfgsb", **options)
