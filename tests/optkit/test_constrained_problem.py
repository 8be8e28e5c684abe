import numpy as np
import pytest
import scipy.sparse as sp

from optkit import EqualityConstrainedProblem
from optkit.constrained_problem import kkt_residual, least_squares_multipliers
from optkit.linop import aslinearoperator


def circle_problem():
    """min x1 + x2 s.t. x1^2 + x2^2 = 2: the minimiser is (-1, -1) with y* = 1/2."""
    return EqualityConstrainedProblem(
        lambda x: x[0] + x[1],
        lambda x: np.ones(2),
        lambda x: np.array([x @ x - 2.0]),
        lambda x: 2.0 * x[None, :],
        np.array([-1.0, 0.0]),
        lag_hess=lambda x, y, s: 2.0 * y[0] * np.eye(2),
        name="circle",
        metadata={"f_opt": -2.0},
    )


def test_kkt_residual_by_hand():
    problem = circle_problem()
    # at x = (-1, 0): grad f = (1, 1), J = (-2, 0), c = -1.
    # least-squares y minimises (1 - 2y)^2 + 1: y = 1/2, grad L = (0, 1)
    measures = problem.evaluate(np.array([-1.0, 0.0]))
    np.testing.assert_allclose(
        [measures["stationarity"], measures["feasibility"], measures["kkt"], measures["fun"], measures["f_gap"]],
        [1.0, 1.0, 1.0, -1.0, 1.0],
    )
    # the solver's own multipliers are used when given: y = 2 gives grad L = (1 - 4, 1) = (-3, 1)
    np.testing.assert_allclose(problem.evaluate(np.array([-1.0, 0.0]), {"y": np.array([2.0])})["stationarity"], 3.0)
    at_optimum = problem.evaluate(np.array([-1.0, -1.0]), {"y": np.array([0.5])})
    np.testing.assert_allclose([at_optimum["kkt"], at_optimum["f_gap"]], [0.0, 0.0], atol=1e-15)


def test_least_squares_multipliers_agree_for_dense_sparse_and_operator_jacobians():
    rng = np.random.default_rng(0)
    J = rng.standard_normal((4, 9))
    g = rng.standard_normal(9)
    expected = np.linalg.lstsq(J.T, -g, rcond=None)[0]
    for jac in (J, sp.csr_array(J), aslinearoperator(J)):
        np.testing.assert_allclose(least_squares_multipliers(g, jac), expected, rtol=1e-8, atol=1e-10)
    residual = kkt_residual(g, sp.csr_array(J), np.zeros(4))
    np.testing.assert_allclose(residual["stationarity"], np.max(np.abs(g + J.T @ expected)), rtol=1e-8)


def test_counters_capabilities_and_lag_hvp_from_lag_hess():
    problem = circle_problem()
    x, y, v = np.array([0.3, -0.4]), np.array([1.5]), np.array([1.0, 2.0])
    problem.fun(x), problem.grad(x), problem.cons(x), problem.jac(x)
    np.testing.assert_allclose(problem.lag_hvp(x, y, v), 3.0 * v)
    assert dict(problem.counters) == {"fun": 1, "grad": 1, "cons": 1, "jac": 1, "lag_hvp": 1}
    assert problem.capabilities == {"fun", "grad", "cons", "jac", "lag_hess", "lag_hvp"}
    assert (problem.n, problem.m) == (2, 1)
    np.testing.assert_array_equal(problem.y0, [0.0])


def test_bad_input_is_refused_before_any_work():
    ok = circle_problem()
    args = (ok._fun, ok._grad, ok._cons, ok._jac)
    with pytest.raises(ValueError, match="x0 must be a 1-D numpy array"):
        EqualityConstrainedProblem(*args, np.zeros((2, 1)))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        EqualityConstrainedProblem(*args, np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match=r"y0 must have shape \(1,\)"):
        EqualityConstrainedProblem(*args, np.zeros(2), y0=np.zeros(3))
    with pytest.raises(TypeError, match="cons must be callable"):
        EqualityConstrainedProblem(ok._fun, ok._grad, 3.0, ok._jac, np.zeros(2))
    without_hessian = EqualityConstrainedProblem(*args, np.zeros(2))
    with pytest.raises(ValueError, match="provides no Lagrangian Hessian"):
        without_hessian.lag_hess(np.zeros(2), np.zeros(1))
