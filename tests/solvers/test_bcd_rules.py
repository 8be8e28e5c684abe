"""The ``bcd`` rules built on the forest, non-negative L1 and Gram kernels: forest blocks solved by
belief propagation, the non-negative updates and GS-q, and the working-set proximal Newton
configuration, each against a dense, direct or independent reference."""

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from test_bcd import lasso, lattice_quadratic, logistic, run_state

from optkit.composite_problem import CompositeProblem, L1NonNegative, QuadraticDatafit
from optkit.result import Status
from solvers.bcd import BCD
from solvers.bcd._forest import is_forest
from solvers.bcd._kernels import minimize_gram_l1, weighted_gram, weighted_gram_columns
from solvers.bcd.selection import working_set
from solvers.bcd.updates import BlockStep, exact_update


def nonneg_lasso(m=80, n=40, ratio=0.2, seed=4):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    b = A[:, :5] @ rng.uniform(0.5, 2.0, 5) + 0.1 * rng.standard_normal(m)
    lam = ratio * np.max(A.T @ b) / m
    return CompositeProblem(A, QuadraticDatafit(b), L1NonNegative(lam))


# ------------------------------------------------------------------ Gram kernels


@pytest.mark.parametrize("nonneg", [False, True])
def test_gram_sweeps_reach_the_cvxpy_lasso_solution(nonneg):
    cp = pytest.importorskip("cvxpy")
    problem = nonneg_lasso() if nonneg else lasso(m=60, n=15, lam=0.05, sparse=True)
    A, b, m, lam = problem.matrix, problem.datafit.b, problem.m, problem.penalty.lam
    H = A.T @ A
    H = np.ascontiguousarray(H.toarray() if sp.issparse(H) else H) / m
    c = np.asarray(A.T @ b) / m
    v, grad = np.zeros(problem.n), -c.copy()
    sweeps = minimize_gram_l1(H, v, grad, lam, nonneg=nonneg, max_sweeps=10_000, rtol=1e-30)
    assert sweeps < 10_000
    assert problem.duality_gap(v) <= 1e-12 * problem.fun(v)
    w = cp.Variable(problem.n, nonneg=nonneg)
    dense = A.toarray() if sp.issparse(A) else A
    norm = cp.sum(w) if nonneg else cp.norm1(w)
    cp.Problem(cp.Minimize(cp.sum_squares(dense @ w - b) / (2 * m) + lam * norm)).solve(solver="CLARABEL")
    # strongly convex (more rows than columns): a unique solution; CLARABEL's accuracy (~1e-8) bounds it
    np.testing.assert_allclose(v, w.value, atol=1e-6)
    # the maintained gradient is still H v - c after thousands of updates
    np.testing.assert_allclose(grad, H @ v - c, rtol=0, atol=1e-12)


def test_a_sweep_is_exact_coordinate_minimisations_in_order():
    problem = lasso(m=50, n=12, lam=0.1, seed=5)
    A, b, m, lam = problem.matrix, problem.datafit.b, problem.m, problem.penalty.lam
    H, c = np.ascontiguousarray(A.T @ A) / m, A.T @ b / m

    def q(u):
        return 0.5 * u @ H @ u - c @ u + lam * np.abs(u).sum()

    v = np.zeros(problem.n)
    for j in range(problem.n):
        # q along coordinate j is a convex quadratic on each side of 0: minimise each piece, keep the lower
        rest = c[j] - H[j] @ v + H[j, j] * v[j]
        pieces = [max((rest - lam) / H[j, j], 0.0), min((rest + lam) / H[j, j], 0.0)]
        values = []
        for t in pieces:
            u = v.copy()
            u[j] = t
            values.append(q(u))
        v[j] = pieces[int(np.argmin(values))]
    w = np.zeros(problem.n)
    assert minimize_gram_l1(H, w, -c.copy(), lam, max_sweeps=1) == 1
    np.testing.assert_allclose(w, v, rtol=1e-12, atol=1e-15)


def test_weighted_gram_by_rows_and_by_columns_equals_the_dense_product():
    problem = logistic(m=70, n=15, sparse=True)
    csr, csc = sp.csr_array(problem.matrix), sp.csc_array(problem.matrix)
    block = np.array([0, 3, 4, 9, 14])
    position = np.full(problem.n, -1, dtype=np.int64)
    position[block] = np.arange(block.size)
    weights = np.random.default_rng(2).random(problem.m)
    dense = problem.matrix.toarray()[:, block]
    expected = dense.T @ (weights[:, None] * dense)
    by_rows = weighted_gram(csr.indptr, csr.indices, csr.data, position, weights, block.size)
    scratch = np.zeros(problem.m)
    by_columns = weighted_gram_columns(csc.indptr, csc.indices, csc.data, block, weights, scratch)
    # three summation orders of 70 products: agreement to ~70 eps, here with room for other BLAS kernels
    np.testing.assert_allclose(by_rows, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(by_columns, expected, rtol=1e-12, atol=1e-15)
    assert not scratch.any()


# ------------------------------------------------------------------ forest blocks


@pytest.mark.parametrize("partition", ["red-black", "forest-cover", "forest-gs", "forest-gsl", "forest-random"])
def test_forest_blocks_with_belief_propagation_reach_the_direct_solution(partition):
    problem = lattice_quadratic(side=12)
    solver = BCD(partition=partition, update="exact", block_size=40, tol=1e-10, max_iter=3000, stop_on="optimality")
    result = solver.solve(problem)
    assert result.status is Status.CONVERGED, result.message
    np.testing.assert_allclose(result.x, spla.spsolve(problem.matrix, problem.b), rtol=1e-6, atol=1e-8)


def test_a_forest_block_step_equals_the_dense_block_solve():
    problem = lattice_quadratic(side=10)
    solver = BCD(partition="forest-gs", update="exact")
    state = run_state(solver, problem, 3)
    block, _ = solver._choose(state)
    # a maximal forest of the 10 x 10 lattice holds well over half of its nodes
    assert block.size > 50 and is_forest(problem.matrix, block)
    delta = exact_update(BlockStep(state, block, None))
    Q = problem.matrix.toarray()
    expected = -np.linalg.solve(Q[np.ix_(block, block)], state.objective.g[block])
    # belief propagation and LU are two backward-stable direct solves of a well-conditioned block
    np.testing.assert_allclose(delta, expected, rtol=1e-10, atol=1e-14)


def test_forest_rules_are_refused_without_a_sparse_quadratic():
    reason = BCD(partition="forest-gs", update="exact").check(lasso(lam=0.0))
    assert "needs a LinearSystemProblem with a sparse matrix" in reason


# ------------------------------------------------------------------ non-negative L1


@pytest.mark.parametrize(
    "options",
    [
        {"update": "pg"},
        {"update": "tmp"},
        {"update": "pn"},
        {"update": "pn", "selection": "gs-q"},
        {"update": "gradient", "selection": "gs-q", "partition": "variable"},
    ],
)
def test_non_negative_updates_reach_the_scikit_learn_solution(options):
    sklearn = pytest.importorskip("sklearn.linear_model")
    problem = nonneg_lasso()
    result = BCD(block_size=5, tol=1e-12, max_iter=20_000, stop_on="duality_gap", **options).solve(problem)
    assert result.status is Status.CONVERGED, result.message
    assert result.x.min() >= 0
    reference = sklearn.Lasso(
        alpha=problem.penalty.lam, positive=True, fit_intercept=False, tol=1e-14, max_iter=100_000
    ).fit(problem.matrix, problem.datafit.b)
    # strongly convex (80 x 40): one solution; both runs are at a relative gap near 1e-12
    np.testing.assert_allclose(result.x, reference.coef_, atol=1e-6)


def test_newton_type_updates_terminate_once_the_greedy_block_holds_the_active_set():
    problem = nonneg_lasso()
    iterations = {
        update: BCD(partition="variable", selection="gs-q", update=update, block_size=10, tol=1e-10, max_iter=5000)
        .replace(stop_on="duality_gap")
        .solve(problem)
        .nit
        for update in ("pg", "tmp", "pn")
    }
    # x* has 5 non-zeros: the 10 GS-q coordinates hold them, so PN (the exact block minimiser)
    # ends in one step and TMP (Newton on the free set) in a few; projected gradient is linear
    assert iterations["pn"] == 1 and iterations["tmp"] <= 3 and iterations["pg"] >= 50, iterations


def test_gs_q_is_refused_on_a_plain_l1_problem():
    reason = BCD(selection="gs-q").check(lasso())
    assert "selection='gs-q' handles penalties ['l1-nonneg']" in reason


# ------------------------------------------------------------------ working set + proximal Newton


@pytest.mark.parametrize("nonneg", [False, True])
def test_working_set_proximal_newton_solves_the_lasso_in_a_few_block_updates(nonneg):
    sklearn = pytest.importorskip("sklearn.linear_model")
    problem = nonneg_lasso(m=200, n=60) if nonneg else lasso(m=200, n=60, lam=0.02, sparse=True)
    solver = BCD(partition="variable", selection="working-set", update="prox-newton", block_size=4, tol=1e-10)
    result = solver.solve(problem)
    assert result.status is Status.CONVERGED and result.nit <= 10, (result.status, result.nit)
    A = problem.matrix
    reference = sklearn.Lasso(
        alpha=problem.penalty.lam, positive=nonneg, fit_intercept=False, tol=1e-14, max_iter=100_000
    ).fit(A, problem.datafit.b)
    np.testing.assert_allclose(result.x, reference.coef_, atol=1e-6)


@pytest.mark.parametrize("sparse", [False, True])
def test_working_set_proximal_newton_reaches_the_l1_logistic_solution(sparse):
    problem = logistic(m=80, n=12, lam=0.02, sparse=sparse)
    result = BCD(partition="variable", selection="working-set", update="prox-newton", block_size=4, tol=1e-9).solve(
        problem
    )
    assert result.status is Status.CONVERGED and result.nit <= 15, (result.status, result.nit)
    # an independent reference: L-BFGS-B on the split x = p - q, p, q >= 0 (smooth), to a tight tolerance
    A = problem.matrix.toarray() if sparse else problem.matrix
    y, n, lam = problem.datafit.y, problem.n, problem.penalty.lam

    def split(w):
        margins = y * (A @ (w[:n] - w[n:]))
        g = A.T @ (-y * np.exp(-np.logaddexp(0.0, margins))) / problem.m
        return np.mean(np.logaddexp(0.0, -margins)) + lam * w.sum(), np.concatenate([g + lam, -g + lam])

    options = {"ftol": 1e-16, "gtol": 1e-12, "maxiter": 10_000}
    ref = scipy.optimize.minimize(
        split, np.zeros(2 * n), jac=True, method="L-BFGS-B", bounds=[(0, None)] * 2 * n, options=options
    )
    assert ref.success
    np.testing.assert_allclose(result.fun, ref.fun, rtol=1e-9)
    # strongly convex on the support: the two solutions agree well within 1e-7
    np.testing.assert_allclose(result.x, ref.x[:n] - ref.x[n:], atol=1e-7)


def test_the_working_set_is_the_support_then_the_violators():
    problem = lasso(m=30, n=8, lam=0.1)
    state = BCD(partition="variable", selection="working-set", block_size=3).init(problem, problem.x0)
    state.objective.x[:] = [0.0, 1.0, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0]
    state.objective.g[:] = [0.5, 0.0, 3.0, 0.05, 0.0, -0.2, 0.0, 0.0]
    # support {1, 4} first; then |g| - lam at zeros: 2.9 (2), 0.4 (0), 0.1 (5); 3 and the zero gradients are optimal
    np.testing.assert_array_equal(working_set(state), [0, 1, 2, 4])
    state.block_size = 8
    np.testing.assert_array_equal(working_set(state), [0, 1, 2, 4, 5])


def test_the_f_gap_stop_on_a_quadratic_with_a_large_optimum_is_free_of_cancellation():
    import optkit

    problem = optkit.get_problem("bcd/D")  # |F*| ~ 1e9: F(x) - F* by subtraction cannot resolve 1e-8
    result = BCD(partition="forest-cover", selection="gs", update="exact", tol=1e-8, max_iter=20_000).solve(problem)
    assert result.status is Status.CONVERGED
    # evaluate's f_gap is (x - x*)^T Q (x - x*) / 2 from the problem's own x_true
    gap = problem.evaluate(result.x)["f_gap"]
    assert 0 <= gap <= 1e-8
    np.testing.assert_allclose(result.metrics["f_gap"], gap, rtol=1e-6)


def test_the_working_set_is_capped_and_the_run_still_converges(monkeypatch):
    from solvers.bcd import selection

    monkeypatch.setattr(selection, "WORKING_SET_MAX", 3)
    problem = lasso(m=60, n=20, lam=0.01)
    solver = BCD(partition="variable", selection="working-set", update="prox-newton", block_size=2, tol=1e-9)
    state = run_state(solver, problem, 5)
    assert np.count_nonzero(state.x) > 3 and working_set(state).size == 3
    result = solver.replace(max_iter=5000).solve(problem)
    assert result.status is Status.CONVERGED
