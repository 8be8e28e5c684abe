"""Solver ``bcd``: maintained objectives, updates against closed forms, the Lasso against
scikit-learn and cvxpy, softmax and quadratics, and the errors for bad input.

The selection rules are checked against brute force in ``test_bcd_selection.py``.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from optkit.composite_problem import L1, CompositeProblem, L1NonNegative, LogisticDatafit, QuadraticDatafit
from optkit.problem import LinearSystemProblem
from optkit.result import Status
from problems.linear_models import SoftmaxRegression
from solvers.bcd import BCD
from solvers.bcd.partitions import PARTITIONS, PartitionRule
from solvers.bcd.selection import SELECTIONS
from solvers.bcd.updates import UPDATES


def sparse_matrix(m, n, density, seed):
    rng = np.random.default_rng(seed)
    A = sp.random_array((m, n), density=density, rng=rng, data_sampler=rng.standard_normal, format="csc")
    return A


def lasso(m=40, n=20, lam=0.05, seed=0, sparse=False):
    rng = np.random.default_rng(seed)
    A = sparse_matrix(m, n, 0.3, seed) if sparse else rng.standard_normal((m, n))
    y = rng.standard_normal(m)
    return CompositeProblem(A, QuadraticDatafit(y), L1(lam))


def logistic(m=60, n=12, lam=0.0, seed=1, scale=1.0, sparse=False):
    rng = np.random.default_rng(seed)
    A = scale * (sparse_matrix(m, n, 0.3, seed) if sparse else rng.standard_normal((m, n)))
    y = np.where(rng.standard_normal(m) > 0, 1.0, -1.0)
    return CompositeProblem(A, LogisticDatafit(y), L1(lam))


def lattice_quadratic(side=6, seed=2):
    """A 2-D lattice Laplacian plus a positive diagonal: sparse symmetric positive definite."""
    rng = np.random.default_rng(seed)
    n = side * side
    idx = np.arange(n).reshape(side, side)
    rows = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    cols = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    W = sp.coo_array((rng.uniform(0.5, 2.0, rows.size), (rows, cols)), shape=(n, n))
    W = W + W.T
    Q = sp.csc_array(sp.diags_array(np.asarray(W.sum(axis=1)).ravel() + rng.uniform(0.1, 1.0, n)) - W)
    c = rng.standard_normal(n)
    f_opt = -0.5 * c @ spla.spsolve(Q, c)
    return LinearSystemProblem(Q, c, tags=("symmetric", "psd"), metadata={"f_opt": f_opt})


def softmax(N=40, d=6, k=4, lam=0.01, bias=True, seed=3):
    rng = np.random.default_rng(seed)
    return SoftmaxRegression(rng.standard_normal((N, d)), rng.integers(0, k, N), lam=lam, bias=bias, n_classes=k)


def run_state(solver, problem, steps):
    state = solver.init(problem, problem.x0)
    for _ in range(steps):
        state = solver.step(problem, state)
    return state


# ------------------------------------------------------------------ maintained quantities


@pytest.mark.parametrize(
    "problem",
    [
        lasso(m=80, n=60, lam=0.02, sparse=True),
        lasso(m=30, n=25, lam=0.02),
        logistic(m=80, n=60, lam=0.01, sparse=True),
        lattice_quadratic(),
        LinearSystemProblem(lattice_quadratic().matrix.toarray(), lattice_quadratic().b),
        softmax(N=30, d=5, k=3),
    ],
    ids=["lasso-sparse", "lasso-dense", "logistic-sparse", "quadratic-sparse", "quadratic-dense", "softmax"],
)
def test_maintained_predictions_and_gradient_after_1000_iterations(problem):
    solver = BCD(partition="variable", selection="random", update="gradient", block_size=4, seed=5)
    state = run_state(solver, problem, 1000)
    fresh = state.objective.recomputed()
    # 1,000 incremental updates accumulate rounding of order 1e3 eps relative to the entries' scale;
    # atol covers entries that cancel to ~0 (rtol alone is meaningless there)
    scale_g = np.abs(fresh["g"]).max()
    np.testing.assert_allclose(state.objective.z, fresh["z"], rtol=1e-10, atol=1e-10 * np.abs(fresh["z"]).max())
    np.testing.assert_allclose(state.objective.g, fresh["g"], rtol=1e-10, atol=1e-10 * scale_g)
    np.testing.assert_allclose(state.objective.value(), fresh["f"], rtol=1e-10)


def test_softmax_maintained_state_gradient_and_hessian_match_the_problem():
    problem = softmax()
    solver = BCD(partition="variable", selection="random", update="newton", block_size=5, seed=0)
    state = run_state(solver, problem, 50)
    fresh = state.objective.recomputed()
    np.testing.assert_allclose(state.objective.z, fresh["z"], rtol=1e-12)
    # the problem's own loss and gradient (written independently): agreement to rounding
    np.testing.assert_allclose(state.objective.value(), problem.fun(state.x), rtol=1e-12)
    np.testing.assert_allclose(state.objective.g, problem.grad(state.x), rtol=1e-10, atol=1e-13)
    block = np.array([0, 3, 7, 8, 20, 27])
    E = np.eye(problem.n)[:, block]
    expected = np.column_stack([problem.hvp(state.x, e) for e in E.T])[block]
    np.testing.assert_allclose(state.objective.hessian(block), expected, rtol=1e-10, atol=1e-14)
    # Bohning's bound dominates the Hessian: H_b - hessian_b is positive semi-definite
    gap = state.objective.bound_matrix(block) - state.objective.hessian(block)
    assert np.linalg.eigvalsh(gap).min() >= -1e-12


# ------------------------------------------------------------------ updates against closed forms


def test_matrix_update_on_least_squares_is_the_exact_block_minimiser():
    problem = lasso(lam=0.0)
    A, y = problem.matrix, problem.datafit.b
    solver = BCD(partition="order", update="matrix", block_size=5, max_iter=1)
    state = run_state(solver, problem, 1)  # cyclic: block {0..4} from x = 0
    expected = np.linalg.lstsq(A[:, :5], y, rcond=None)[0]
    # a 5x5 Cholesky solve against a least-squares solve of the same normal equations
    np.testing.assert_allclose(state.x[:5], expected, rtol=1e-10)
    np.testing.assert_allclose(state.x[5:], 0.0, atol=0)


def test_exact_update_on_a_quadratic_is_the_block_solve():
    problem = lattice_quadratic()
    Q, c = problem.matrix.toarray(), problem.b
    x0 = np.random.default_rng(0).standard_normal(problem.n)
    solver = BCD(partition="order", update="exact", block_size=6)
    state = solver.init(problem, x0)
    state = solver.step(problem, state)
    b, rest = np.arange(6), np.arange(6, problem.n)
    expected = np.linalg.solve(Q[np.ix_(b, b)], c[b] - Q[np.ix_(b, rest)] @ x0[rest])
    np.testing.assert_allclose(state.x[b], expected, rtol=1e-10)


def test_gradient_update_is_the_prox_step_with_the_block_lipschitz_constant():
    problem = lasso(lam=0.05)
    A, y, m = problem.matrix, problem.datafit.b, problem.m
    solver = BCD(partition="order", update="gradient", block_size=4)
    state = run_state(solver, problem, 1)
    Ab = A[:, :4]
    L = np.linalg.eigvalsh(Ab.T @ Ab / m)[-1]
    v = -(Ab.T @ (-y) / m) / L
    expected = np.sign(v) * np.maximum(np.abs(v) - 0.05 / L, 0)
    np.testing.assert_allclose(state.x[:4], expected, rtol=1e-12)


def test_newton_on_logistic_takes_the_dense_newton_step_and_decreases_f():
    # small entries: the logistic loss is nearly quadratic, so the unit step passes Armijo
    problem = logistic(scale=0.1)
    A, t, m = problem.matrix, problem.datafit.y, problem.m
    solver = BCD(partition="order", update="newton", block_size=4)
    state = run_state(solver, problem, 1)
    Ab = A[:, :4]
    g = Ab.T @ (-t * 0.5) / m  # sigma(0) = 1/2 at x = 0
    H = Ab.T @ Ab * 0.25 / m
    np.testing.assert_allclose(state.x[:4], -np.linalg.solve(H, g), rtol=1e-10)
    assert problem.fun(state.x) < problem.fun(problem.x0)


@pytest.mark.parametrize("update", ["gradient", "doubling", "matrix", "newton"])
def test_every_update_decreases_the_logistic_objective_monotonically(update):
    problem = logistic(scale=2.0)
    result = BCD(partition="sort", selection="gsl", update=update, block_size=3, max_iter=60).solve(problem)
    fun = [row["fun"] for row in result.trace]
    # each accepted step decreases f; 1e-15 allows the rounding of the tracked value (f ~ 0.7)
    assert np.all(np.diff(fun) <= 1e-15)
    assert fun[-1] < fun[0]


def test_doubling_keeps_an_estimate_that_passes_the_sufficient_decrease_test():
    problem = lasso(lam=0.01)
    solver = BCD(partition="order", selection="gs", update="doubling", block_size=5)
    state = run_state(solver, problem, 30)
    for index, L in state.cache["doubling"].items():
        assert L <= state.lipschitz[state.blocks[index]].sum()
    assert state.fun < problem.fun(problem.x0)


# ------------------------------------------------------------------ solutions against references


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("block_size", [1, 5])
def test_lasso_solution_matches_sklearn_and_cvxpy(block_size, sparse):
    cvxpy = pytest.importorskip("cvxpy")
    from sklearn.linear_model import Lasso

    problem = lasso(m=40, n=20, lam=0.05, sparse=sparse)
    A, y, m = problem.matrix, problem.datafit.b, problem.m
    result = BCD(
        partition="order",
        selection="cyclic",
        update="gradient",
        block_size=block_size,
        tol=1e-13,
        max_iter=100_000,
        stop_on="duality_gap",
    ).solve(problem)
    assert result.status is Status.CONVERGED
    reference = Lasso(alpha=0.05, fit_intercept=False, tol=1e-14, max_iter=1_000_000).fit(A, y).coef_
    w = cvxpy.Variable(A.shape[1])
    cvxpy.Problem(cvxpy.Minimize(cvxpy.sum_squares(A @ w - y) / (2 * m) + 0.05 * cvxpy.norm1(w))).solve()
    # the Lasso minimiser is unique here (n < m, A full rank); a relative duality gap of 1e-13
    # bounds ||x - x*|| by ~sqrt(2 gap / mu) ~ 1e-7, and cvxpy's solver stops near 1e-8
    np.testing.assert_allclose(result.x, reference, atol=1e-6)
    np.testing.assert_allclose(result.x, w.value, atol=1e-6)


def test_l1_logistic_solution_matches_cvxpy():
    cvxpy = pytest.importorskip("cvxpy")
    problem = logistic(m=60, n=12, lam=0.02, scale=1.0)
    A, t, m = problem.matrix, problem.datafit.y, problem.m
    result = BCD(
        partition="variable",
        selection="gsq",
        update="doubling",
        block_size=3,
        tol=1e-12,
        max_iter=50_000,
        stop_on="duality_gap",
    ).solve(problem)
    assert result.status is Status.CONVERGED
    w = cvxpy.Variable(A.shape[1])
    loss = cvxpy.sum(cvxpy.logistic(-cvxpy.multiply(t, A @ w))) / m
    cvxpy.Problem(cvxpy.Minimize(loss + 0.02 * cvxpy.norm1(w))).solve()
    # strongly convex enough on these 60 rows; the conic solver stops near 1e-8 in the objective,
    # so the minimisers agree to ~1e-5
    np.testing.assert_allclose(result.x, w.value, atol=1e-5)


def test_nonnegative_lasso_gradient_update_matches_sklearn_positive():
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(4)
    A, y = rng.standard_normal((40, 15)), rng.standard_normal(40)
    problem = CompositeProblem(A, QuadraticDatafit(y), L1NonNegative(0.02))
    result = BCD(
        partition="variable", selection="gsl", block_size=3, tol=1e-13, max_iter=20_000, stop_on="duality_gap"
    ).solve(problem)
    reference = Lasso(alpha=0.02, fit_intercept=False, positive=True, tol=1e-14, max_iter=10**6).fit(A, y).coef_
    assert np.all(result.x >= 0)
    # same bound as the Lasso test
    np.testing.assert_allclose(result.x, reference, atol=1e-6)


def test_quadratic_stops_on_f_gap_at_the_sparse_direct_solution():
    problem = lattice_quadratic()
    result = BCD(partition="order", update="exact", block_size=6, tol=1e-12, max_iter=5000).solve(problem)
    assert result.status is Status.CONVERGED and result.extras["stop_on"] == "f_gap"
    # f - f* = (x - x*)^T Q (x - x*) / 2 <= 1e-12, lambda_min(Q) >= 0.1: ||x - x*|| <= ~5e-6
    np.testing.assert_allclose(result.x, spla.spsolve(problem.matrix, problem.b), atol=1e-5)


def test_softmax_newton_decreases_the_loss():
    problem = softmax(lam=0.0, bias=False)
    result = BCD(partition="order", update="newton", block_size=6, max_iter=40).solve(problem)
    assert result.metrics["fun"] < problem.fun(problem.x0) - 0.1
    np.testing.assert_allclose(result.metrics["fun"], problem.fun(result.x), rtol=1e-12)


def test_metrics_duality_gap_matches_the_problem():
    problem = lasso(lam=0.05, sparse=True)
    result = BCD(partition="variable", selection="gs", block_size=2, max_iter=30).solve(problem)
    # the gap formed from the maintained u and g equals the problem's own computation to rounding
    np.testing.assert_allclose(result.metrics["duality_gap"], problem.duality_gap(result.x), rtol=1e-9)
    np.testing.assert_allclose(result.metrics["fun"], problem.fun(result.x), rtol=1e-12)


# ------------------------------------------------------------------ extension points


def test_a_dynamic_partition_with_a_block_solver_drives_the_exact_update(monkeypatch):
    calls = []

    def choose(data, run):
        return np.sort(run.rng.choice(run.objective.n, size=data.block_size, replace=False))

    def solve(Q, rhs, block):
        calls.append(block)
        return np.linalg.solve(Q[block][:, block].toarray(), rhs)

    monkeypatch.setitem(
        PARTITIONS, "test-dynamic", PartitionRule("dynamic", choose=choose, needs_quadratic=True, block_solver=solve)
    )
    problem = lattice_quadratic()
    result = BCD(partition="test-dynamic", update="exact", block_size=4, max_iter=20).solve(problem)
    assert len(calls) == 20
    assert result.metrics["f_gap"] < result.trace[0]["f_gap"]
    with pytest.raises(ValueError, match="selection must be None"):
        BCD(partition="test-dynamic", selection="gs")
    assert "sparse matrix" in BCD(partition="test-dynamic", update="gradient").check(lasso())


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"block_size": 0}, "block_size must be an integer >= 1"),
        ({"partition": "rows"}, "partition must be one of 'avg', 'forest-cover', .*'variable'"),
        ({"selection": "best"}, "selection must be one of 'cyclic', 'gs', 'gs-q', 'gsd', 'gsl', 'gsl-code', 'gsq'"),
        ({"update": "cg"}, "update must be one of 'doubling', 'exact', 'gradient', 'matrix', 'newton'"),
        ({"stop_on": "grad"}, "stop_on must be one of"),
        ({"partition": "variable", "selection": "gsl-code"}, "no variable-block version"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_bad_options_are_refused_at_construction(options, match):
    with pytest.raises(ValueError, match=match):
        BCD(**options)


@pytest.mark.parametrize(
    ("options", "problem", "match"),
    [
        ({"block_size": 21}, lasso(), "block_size=21 exceeds the number of variables n=20"),
        ({"update": "matrix"}, lasso(lam=0.1), "update='matrix' handles penalties \\['none'\\], not 'l1'"),
        (
            {"update": "newton", "block_size": 1},
            CompositeProblem(np.eye(3), QuadraticDatafit(np.ones(3)), L1NonNegative(0.0)),
            "not 'l1-nonneg'",
        ),
        ({"update": "exact"}, logistic(), "needs a quadratic objective"),
        ({"stop_on": "f_gap"}, lasso(), "needs metadata\\['f_opt'\\]"),
        ({"stop_on": "duality_gap"}, lattice_quadratic(), "needs a CompositeProblem"),
    ],
)
def test_bad_combinations_with_the_problem_are_refused(options, problem, match):
    with pytest.raises(ValueError, match=match):
        BCD(**options).solve(problem)


def test_bad_problem_data_is_refused():
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        L1(-1.0)  # a negative lam is refused where the penalty is made
    A = np.ones((3, 2))
    A[0, 0] = np.nan
    with pytest.raises(ValueError, match="A contains NaN"):
        CompositeProblem(A, QuadraticDatafit(np.ones(3)), L1(0.1))
    Q = np.eye(3)
    Q[1, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        BCD().solve(LinearSystemProblem(Q, np.ones(3)))
    with pytest.raises(ValueError, match="symmetric"):
        BCD().solve(LinearSystemProblem(np.array([[2.0, 1.0], [0.0, 2.0]]), np.ones(2)))
    nonneg = CompositeProblem(np.eye(2), QuadraticDatafit(np.ones(2)), L1NonNegative(0.1))
    with pytest.raises(ValueError, match="x0 must be >= 0"):
        BCD(block_size=1).solve(nonneg, x0=np.array([-1.0, 0.0]))
    with pytest.raises(ValueError, match="x0 must be a finite array of shape \\(2,\\)"):
        BCD(block_size=1).solve(nonneg, x0=np.array([np.nan, 0.0]))


def test_a_fixed_partition_that_misses_coordinates_is_refused(monkeypatch):
    monkeypatch.setitem(PARTITIONS, "test-gappy", PartitionRule("fixed", build=lambda data: [np.array([0, 1])]))
    with pytest.raises(ValueError, match="must split the 20 coordinates into disjoint blocks"):
        BCD(partition="test-gappy").solve(lasso())


def test_registries_list_the_rules_of_the_spec():
    assert set(PARTITIONS) == {
        "order",
        "sort",
        "avg",
        "variable",
        "red-black",
        "forest-cover",
        "forest-gs",
        "forest-gsl",
        "forest-random",
    }
    assert set(SELECTIONS) == {
        "cyclic",
        "random",
        "lipschitz",
        "gs",
        "gsl",
        "gsl-code",
        "gsd",
        "gsq",
        "gs-q",
        "working-set",
    }
    assert set(UPDATES) == {"gradient", "doubling", "matrix", "newton", "exact", "prox-newton", "pg", "tmp", "pn"}
