import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from constrained_cases import hs6, hs7, hs28, min_norm_on_hyperplane

import optkit
from optkit import EqualityConstrainedProblem, SmoothProblem, Status
from solvers.constrained._alm_merit import _evaluate, _State
from solvers.constrained.alm_newton import AlmNewton
from solvers.constrained.alm_sketch import AlmSketch

PAPER = "sketch-and-project"
SOLVERS = [
    AlmSketch(),
    AlmSketch(preconditioner="nystrom"),
    AlmSketch(inner=PAPER),
    AlmSketch(inner=PAPER, sketch="row"),
    AlmSketch(inner=PAPER, sketch="row", sampling="row_norm", block_size=2),
    AlmNewton(),
    AlmNewton(kkt_solver="minres"),
]
IDS = [
    "sketch-factor",
    "sketch-nystrom",
    "sketch-gaussian",
    "sketch-row",
    "sketch-rows2",
    "newton-direct",
    "newton-minres",
]


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
@pytest.mark.parametrize(
    "case",
    [hs6, hs7, hs28, lambda: min_norm_on_hyperplane(np.array([1.0, -2.0, 0.5, 3.0]))],
    ids=["hs6", "hs7", "hs28", "min-norm"],
)
def test_reaches_known_optimum(solver, case):
    problem = case()
    result = solver.solve(problem)
    assert result.status is Status.CONVERGED, result.message
    measures = problem.evaluate(result.x, result.extras)
    assert measures["kkt"] <= 1e-6
    np.testing.assert_allclose(result.fun, problem.metadata["f_opt"], atol=1e-6)
    np.testing.assert_allclose(result.x, problem.metadata["x_opt"], atol=1e-5)


def test_multipliers_follow_the_convention_l_equals_f_plus_y_c():
    problem = min_norm_on_hyperplane(np.array([2.0, 1.0]))
    result = AlmSketch().solve(problem)
    np.testing.assert_allclose(result.extras["y"], problem.metadata["y_opt"], atol=1e-7)


def test_merit_gradient_matches_finite_differences():
    problem = hs7()
    solver = AlmNewton(eta1=2.0, eta2=0.3)
    x, y = np.array([0.7, 1.3]), np.array([0.4])
    state = _State(_evaluate(problem, x, y), 2.0, 0.3, 0.1)
    H = problem.lag_hess(x, y)
    grad = solver._merit_gradient(state.point, H @ state.point.lag_grad, state.eta1, state.eta2)

    def merit(v):
        return _evaluate(problem, v[:2], v[2:]).merit(2.0, 0.3)

    v0, h = np.concatenate([x, y]), 1e-6
    fd = np.array([(merit(v0 + h * e) - merit(v0 - h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_lagrangian_not_objective_hessian_is_used_in_the_merit_gradient():
    # with a nonlinear constraint the two differ; the finite-difference test above only
    # passes with the Lagrangian's (the reference code's objective Hessian would fail it)
    problem = hs7()
    x, y = np.array([0.7, 1.3]), np.array([0.4])
    assert not np.allclose(problem.lag_hess(x, y), problem.lag_hess(x, np.zeros(1)))


def test_sketch_and_newton_agree_on_a_sparse_problem():
    rng = np.random.default_rng(0)
    n, m = 60, 20
    A = sp.random_array((m, n), density=0.2, random_state=rng, format="csr") + sp.eye_array(m, n, format="csr")
    b = rng.standard_normal(m)
    problem = EqualityConstrainedProblem(
        lambda x: 0.5 * x @ x,
        lambda x: x.copy(),
        lambda x: A @ x - b,
        lambda x: A,
        np.zeros(n),
        lag_hess=lambda x, y, s: s * sp.eye_array(n, format="csr"),
        name="sparse-min-norm",
    )
    x_star = A.T @ np.linalg.solve((A @ A.T).toarray(), b)
    for solver in (AlmSketch(), AlmSketch(sketch="row"), AlmNewton(), AlmNewton(kkt_solver="minres")):
        result = solver.solve(problem)
        assert result.status is Status.CONVERGED, (solver, result.message)
        np.testing.assert_allclose(result.x, x_star, atol=1e-6)


def test_indefinite_reduced_hessian_is_modified():
    # min -x1^2 + x2^2 s.t. x2 = 0 has an unbounded reduced problem, so the modification is needed
    problem = EqualityConstrainedProblem(
        lambda x: -(x[0] ** 2) + x[1] ** 2 + x[0] ** 4,
        lambda x: np.array([-2 * x[0] + 4 * x[0] ** 3, 2 * x[1]]),
        lambda x: np.array([x[1]]),
        lambda x: np.array([[0.0, 1.0]]),
        np.array([0.1, 1.0]),
        lag_hess=lambda x, y, s: s * np.diag([-2 + 12 * x[0] ** 2, 2.0]),
        name="indefinite",
    )
    result = AlmSketch().solve(problem)
    assert result.status is Status.CONVERGED
    assert result.counters["hessian_mods"] >= 1
    np.testing.assert_allclose(np.abs(result.x), [1 / np.sqrt(2), 0.0], atol=1e-6)


def test_time_limit_and_callback(monkeypatch):
    ticks = itertools.count()
    monkeypatch.setattr("optkit.solver.time.perf_counter", lambda: float(next(ticks)))
    result = AlmSketch(time_limit=2.5).solve(hs7())
    assert result.status is Status.TIME_LIMIT
    monkeypatch.undo()
    seen = []
    result = AlmNewton().solve(hs7(), callback=lambda info: seen.append(info["kkt"]) or len(seen) == 3)
    assert result.status is Status.USER_STOPPED and len(seen) == 3
    assert [row["iter"] for row in result.trace] == [0, 1, 2]


def test_time_limit_interrupts_a_long_inner_solve(monkeypatch):
    # pde-control's KKT systems are far too ill-conditioned for sketch-and-project and plain
    # MINRES (docs/benchmarks.md):
    # one solve would run for minutes; the deadline ends it and the run reports TIME_LIMIT
    problem = optkit.get_problem("pde-control:N=8")
    ticks = itertools.count()
    monkeypatch.setattr("optkit.solver.time.perf_counter", lambda: float(next(ticks)))
    for solver in (AlmSketch(inner=PAPER, time_limit=40), AlmNewton(kkt_solver="minres", time_limit=40)):
        result = solver.solve(problem)
        assert result.status is Status.TIME_LIMIT
        assert result.nit == 1 and result.metrics["kkt"] > 1e-3
        assert result.counters["inner_iter"] == result.trace[-1]["inner_iter"] > 0


def test_counts_evaluations_and_sketch_steps():
    problem = hs28()
    result = AlmSketch(inner=PAPER, adaptive_block=False).solve(problem)
    assert result.counters["fun"] == problem.counters["fun"] >= result.nit
    assert result.counters["lag_hess"] == result.nit
    assert result.counters["inner_iter"] == sum(row["inner_iter"] for row in result.trace)
    assert result.counters["max_block_size"] == 1
    # a budget of 10 sketched equations per block size: the size doubles up to N = n + m = 4
    result = AlmSketch(inner=PAPER, max_sketch_iter=10).solve(hs28())
    assert result.status is Status.CONVERGED and result.counters["max_block_size"] == 4


def test_a_jacobian_without_entries_is_refused():
    from optkit.linop import aslinearoperator

    base = hs28()
    problem = EqualityConstrainedProblem(
        base._fun,
        base._grad,
        base._cons,
        lambda x: aslinearoperator(np.array([[1.0, 2.0, 3.0]])),
        base.x0,
        lag_hess=base._lag_hess,
        name="operator-jacobian",
    )
    with pytest.raises(TypeError, match="needs the constraint Jacobian's entries"):
        AlmSketch().solve(problem)


def test_refuses_unconstrained_problems_and_bad_options():
    smooth = SmoothProblem(lambda x: x @ x, lambda x: 2 * x, np.ones(2))
    assert "EqualityConstrainedProblem" in AlmSketch().check(smooth)
    with pytest.raises(ValueError, match="accepts EqualityConstrainedProblem"):
        optkit.solve(smooth, "alm-sketch")
    with pytest.raises(ValueError, match="sketch"):
        AlmSketch(sketch="srht")
    with pytest.raises(ValueError, match="nu"):
        AlmNewton(nu=1.0)
    with pytest.raises(ValueError, match="kkt_solver"):
        AlmNewton(kkt_solver="lu")
    with pytest.raises(TypeError, match="block"):
        optkit.get_solver("alm-sketch", block=3)
