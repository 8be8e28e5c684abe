"""The exact-ALM solvers past the paper's assumptions: singular Jacobians, m > n, infeasible
systems, merit stalls, and problems without a Lagrangian Hessian."""

import numpy as np
import pytest
import scipy.optimize
from constrained_cases import hs7

import optkit
from optkit import EqualityConstrainedProblem, Status
from solvers.constrained._lagrangian_hessian import QuasiNewtonHessian, lagrangian_gradient_difference
from solvers.constrained.alm_newton import AlmNewton
from solvers.constrained.alm_sketch import AlmSketch

SOLVERS = [AlmNewton(), AlmSketch(), AlmSketch(inner="sketch-and-project")]
IDS = ["newton", "sketch", "sketch-and-project"]


def circle_projection() -> EqualityConstrainedProblem:
    """min (x1 - 2)^2 + (x2 - 1)^2 s.t. x1^2 + x2^2 = 1 from x0 = 0, where J(x0) = 0.

    x* = (2, 1) / sqrt(5); grad f + 2 y x = 0 gives y* = sqrt(5) - 1; f* = (sqrt(5) - 1)^2.
    """
    target = np.array([2.0, 1.0])
    return EqualityConstrainedProblem(
        lambda x: float((x - target) @ (x - target)),
        lambda x: 2 * (x - target),
        lambda x: np.array([x @ x - 1.0]),
        lambda x: 2 * x[None, :],
        np.zeros(2),
        lag_hess=lambda x, y, s: (2 * s + 2 * y[0]) * np.eye(2),
        name="circle-projection",
    )


def equations(cons, jac, x0, name) -> EqualityConstrainedProblem:
    """Solve ``cons(x) = 0`` (constant objective), possibly over-determined."""
    n = x0.shape[0]
    return EqualityConstrainedProblem(
        lambda x: 0.0, lambda x: np.zeros(n), cons, jac, x0, name=name, metadata={"feasibility": True}
    )


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
def test_a_zero_jacobian_at_x0_is_a_regularised_step_not_a_stop(solver):
    problem = circle_projection()
    result = solver.solve(problem)
    assert result.status is Status.CONVERGED, result.message
    assert result.counters["primal_steps"] >= 1
    root5 = np.sqrt(5.0)
    np.testing.assert_allclose(result.x, np.array([2.0, 1.0]) / root5, atol=1e-7)
    np.testing.assert_allclose(result.extras["y"], [root5 - 1.0], atol=1e-6)
    np.testing.assert_allclose(result.fun, (root5 - 1.0) ** 2, atol=1e-8)


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
def test_dependent_constraints_are_solved(solver):
    # c2 = 2 c1: J J^T is singular everywhere; min ||x||^2 on x1 + x2 = 1 is (1/2, 1/2)
    problem = EqualityConstrainedProblem(
        lambda x: x @ x,
        lambda x: 2 * x,
        lambda x: np.array([x[0] + x[1] - 1, 2 * x[0] + 2 * x[1] - 2]),
        lambda x: np.array([[1.0, 1.0], [2.0, 2.0]]),
        np.zeros(2),
        lag_hess=lambda x, y, s: 2 * s * np.eye(2),
        name="dependent",
    )
    result = solver.solve(problem)
    assert result.status is Status.CONVERGED, result.message
    np.testing.assert_allclose(result.x, [0.5, 0.5], atol=1e-6)
    assert problem.evaluate(result.x, result.extras)["kkt"] <= 1e-6


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
def test_a_consistent_overdetermined_system_is_solved(solver):
    # three equations, two unknowns, one solution: x1^2 = 1, x2 = 2, x1 x2 = 2  ->  (1, 2)
    problem = equations(
        lambda x: np.array([x[0] ** 2 - 1, x[1] - 2, x[0] * x[1] - 2]),
        lambda x: np.array([[2 * x[0], 0.0], [0.0, 1.0], [x[1], x[0]]]),
        np.array([3.0, 3.0]),
        "consistent-3x2",
    )
    result = solver.solve(problem, x0=problem.x0)
    assert result.status is Status.CONVERGED, result.message
    np.testing.assert_allclose(result.x, [1.0, 2.0], atol=1e-7)


def test_overdetermined_cutest_systems_are_solved():
    for name in ("BEALENE", "EXP2NE"):
        problem = optkit.get_problem(f"cutest/{name}")
        assert problem.m > problem.n
        result = optkit.solve(problem, "alm-newton")
        assert result.status is Status.CONVERGED, (name, result.message)
        assert problem.evaluate(result.x, result.extras)["kkt"] <= 1e-6


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
def test_an_inconsistent_system_is_infeasible_with_its_least_squares_residual(solver):
    # x1 = 1, x1 = 3, x2 = 0, x1 x2 = 0: the least-squares point is (2, 0), residual sqrt(2)
    cons = lambda x: np.array([x[0] - 1, x[0] - 3, x[1], x[0] * x[1]])
    jac = lambda x: np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [x[1], x[0]]])
    problem = equations(cons, jac, np.array([0.5, 1.0]), "inconsistent-4x2")
    result = solver.solve(problem)
    assert result.status is Status.INFEASIBLE, result.message
    reference = scipy.optimize.least_squares(cons, problem.x0, jac=jac, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    np.testing.assert_allclose(result.extras["ls_residual"], np.linalg.norm(reference.fun), rtol=1e-10)
    np.testing.assert_allclose(result.extras["ls_residual"], np.sqrt(2.0), rtol=1e-10)
    np.testing.assert_allclose(result.x, reference.x, atol=1e-6)
    assert "least-squares residual" in result.message


def test_an_infeasible_square_problem_ends_infeasible_after_restoration():
    # x1^2 + 1 = 0 has no real solution; min ||c||^2 is at x1 = 0 with ||c|| = 1
    problem = EqualityConstrainedProblem(
        lambda x: (x[1] - 1.0) ** 2,
        lambda x: np.array([0.0, 2 * (x[1] - 1.0)]),
        lambda x: np.array([x[0] ** 2 + 1.0]),
        lambda x: np.array([[2 * x[0], 0.0]]),
        np.array([1.0, 0.0]),
        lag_hess=lambda x, y, s: np.diag([2 * y[0], 2 * s]),
        name="no-real-root",
    )
    result = AlmNewton().solve(problem)
    assert result.status is Status.INFEASIBLE, result.message
    np.testing.assert_allclose(result.extras["ls_residual"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(result.x[0], 0.0, atol=1e-3)


def test_merit_stall_recovery_is_what_solves_bt7():
    # measured on cutest-eq-all: without recovery BT7's Newton steps shrink to alpha ~ 1e-5 and
    # KKT stays near 20 for 1000 iterations; restorations and multiplier resets converge in 313
    problem = optkit.get_problem("cutest/BT7")
    stalled = AlmNewton(max_recoveries=0, max_iter=350).solve(problem)
    assert stalled.status is Status.MAX_ITER and stalled.counters["recoveries"] == 0
    assert stalled.metrics["kkt"] > 1.0
    recovered = AlmNewton(max_iter=350).solve(problem)
    assert recovered.status is Status.CONVERGED, recovered.message
    assert recovered.counters["recoveries"] >= 1 and recovered.counters["restoration_steps"] >= 1
    assert problem.evaluate(recovered.x, recovered.extras)["kkt"] <= 1e-6


def without_hessian(problem: EqualityConstrainedProblem) -> EqualityConstrainedProblem:
    return EqualityConstrainedProblem(
        problem._fun, problem._grad, problem._cons, problem._jac, problem.x0, name=problem.name + "-no-hess"
    )


@pytest.mark.parametrize("hessian", ["auto", "bfgs", "sr1", "fd"])
@pytest.mark.parametrize("solver", [AlmNewton, AlmSketch])
def test_first_derivatives_are_enough(solver, hessian):
    problem = without_hessian(hs7())
    assert "lag_hess" not in problem.capabilities
    result = solver(hessian=hessian).solve(problem)
    assert result.status is Status.CONVERGED, result.message
    np.testing.assert_allclose(result.x, [0.0, np.sqrt(3.0)], atol=1e-6)
    np.testing.assert_allclose(result.fun, -np.sqrt(3.0), atol=1e-8)
    assert problem.counters["lag_hess"] == 0


def test_exact_hessian_is_refused_without_lag_hess():
    problem = without_hessian(hs7())
    assert "hessian='exact' requires 'lag_hess'" in AlmNewton(hessian="exact").check(problem)
    assert AlmNewton().check(problem) is None
    with pytest.raises(ValueError, match="hessian"):
        AlmNewton(hessian="newton")


def test_finite_difference_product_matches_the_hessian():
    problem = hs7()
    x, y, v = np.array([0.7, 1.3]), np.array([0.4]), np.array([0.3, -1.1])
    lag_grad = problem.grad(x) + problem.jac(x).T @ y
    product = lagrangian_gradient_difference(problem, x, y, lag_grad, v)
    # forward difference: error O(sqrt(eps)) relative to the curvature scale
    np.testing.assert_allclose(product, problem.lag_hess(x, y) @ v, rtol=1e-6, atol=1e-7)


def test_damped_bfgs_stays_positive_definite_on_negative_curvature():
    rng = np.random.default_rng(0)
    approx = QuasiNewtonHessian(4, "bfgs")
    for _ in range(20):
        s = rng.standard_normal(4)
        approx.update(s, -0.5 * s + 0.1 * rng.standard_normal(4))  # s^T r < 0: undamped BFGS would fail
        assert np.linalg.eigvalsh(approx.B)[0] > 0
    exact = np.diag([1.0, 2.0, 3.0, 4.0])
    sr1 = QuasiNewtonHessian(4, "sr1")
    for s in np.eye(4):
        sr1.update(s, exact @ s)
    # SR1 reproduces a quadratic's Hessian from n independent steps (Nocedal & Wright, Thm 6.1)
    np.testing.assert_allclose(sr1.B, exact, atol=1e-12)
