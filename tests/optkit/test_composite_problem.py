"""CompositeProblem and its terms (optkit/composite_problem.py, optkit/_composite_terms.py).

Checked against closed forms, dense formulas, brute-force 1-D minimisation, scikit-learn and
cvxpy. The Lasso and L1-logistic solutions by scikit-learn and cvxpy on synthetic and real data
are in tests/problems/test_composite_problems.py.
"""

import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import minimize_scalar
from scipy.special import expit

import optkit
from optkit import composite_problem as cpm
from optkit.composite_problem import (
    L1,
    Box,
    CompositeProblem,
    GroupL1,
    L1NonNegative,
    LogisticDatafit,
    QuadraticDatafit,
)

M, N = 30, 12
GROUPS = [[0, 5, 2], [1], [3, 4, 6, 7], [8, 9, 10, 11]]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((M, N))
    b = rng.standard_normal(M)
    return A, b, np.where(b >= 0, 1.0, -1.0)


def _datafit(kind, data):
    _, b, y = data
    return QuadraticDatafit(b) if kind == "quadratic" else LogisticDatafit(y)


def _gauge(kind, lam):
    return {"l1": L1(lam), "l1-nonneg": L1NonNegative(lam), "group-l1": GroupL1(lam, GROUPS)}[kind]


DATAFITS = ["quadratic", "logistic"]
GAUGES = ["l1", "l1-nonneg", "group-l1"]


def _dense_loss_grad(kind, A, target, x):
    """The smooth part and its gradient from dense formulas (the test's own reference)."""
    z = A @ x
    if kind == "quadratic":
        r = z - target
        return r @ r / (2 * M), A.T @ r / M
    margins = target * z
    return np.mean(np.log1p(np.exp(-margins))), -A.T @ (target * expit(-margins)) / M


# ----------------------------------------------------------------------------- prox


def test_prox_closed_forms():
    x = np.array([-3.0, -0.5, 0.0, 0.2, 2.0])
    np.testing.assert_allclose(L1(1.0).prox(x, 0.5), [-2.5, 0.0, 0.0, 0.0, 1.5], atol=0)
    np.testing.assert_allclose(L1NonNegative(1.0).prox(x, 0.5), [0.0, 0.0, 0.0, 0.0, 1.5], atol=0)
    np.testing.assert_allclose(Box(-1.0, 1.0).prox(x, 0.5), [-1.0, -0.5, 0.0, 0.2, 1.0], atol=0)
    np.testing.assert_allclose(Box(np.zeros(5), np.full(5, 0.1)).prox(x, 3.0), [0, 0, 0, 0.1, 0.1], atol=0)
    # one step per coordinate: thresholds 0.1, 1, 2, 0.5, 3 with lam = 1
    np.testing.assert_allclose(L1(1.0).prox(x, np.array([0.1, 1.0, 2.0, 0.5, 3.0])), [-2.9, 0, 0, 0, 0], atol=1e-15)
    # block soft thresholding with threshold 0.5: ||(-3, -0.5)|| = sqrt(9.25), ||(0, 0.2)|| < 0.5, ||(2,)|| = 2
    out = GroupL1(1.0, [[0, 1], [2, 3], [4]]).prox(x, 0.5)
    shrink = 1 - 0.5 / math.sqrt(9.25)
    np.testing.assert_allclose(out, [-3 * shrink, -0.5 * shrink, 0.0, 0.0, 1.5], rtol=1e-15)
    # one step per group: thresholds 1, 0.1, 2.5 (the last group is zeroed)
    out = GroupL1(1.0, [[0, 1], [2, 3], [4]]).prox(x, np.array([1.0, 0.1, 2.5]))
    shrink = 1 - 1 / math.sqrt(9.25)
    np.testing.assert_allclose(out, [-3 * shrink, -0.5 * shrink, 0.0, 0.1, 0.0], rtol=1e-15, atol=1e-16)


@pytest.mark.parametrize(
    "penalty, bounds",
    [(L1(0.7), (-10, 10)), (L1NonNegative(0.7), (0, 10)), (Box(-1.0, 2.0), (-1, 2))],
    ids=["l1", "l1-nonneg", "box"],
)
def test_prox_matches_brute_force_1d(penalty, bounds):
    rng = np.random.default_rng(1)
    for x, step in zip(rng.uniform(-4, 4, 25), rng.uniform(0.1, 3, 25)):
        def objective(t):
            return 0.5 * (t - x) ** 2 + step * float(penalty.value(np.array([t])))

        best = minimize_scalar(objective, bounds=bounds, method="bounded", options={"xatol": 1e-10}).x
        # Brent's method to xatol 1e-10 on a strongly convex function: 1e-7 leaves a wide margin
        np.testing.assert_allclose(penalty.prox(np.array([x]), step), [best], atol=1e-7)


def test_group_prox_matches_cvxpy():
    cp = pytest.importorskip("cvxpy")
    rng = np.random.default_rng(2)
    x, step, lam = rng.standard_normal(N), 0.8, 0.9
    y = cp.Variable(N)
    penalty = sum(cp.norm(y[g], 2) for g in GROUPS)
    cp.Problem(cp.Minimize(step * lam * penalty + 0.5 * cp.sum_squares(y - x))).solve(solver="CLARABEL")
    out = GroupL1(lam, GROUPS).prox(x, step)
    assert np.count_nonzero(out) < N  # the threshold zeroes a group, so both branches are checked
    # an interior-point solution to its default accuracy (~1e-8): 1e-6 is a wide margin
    np.testing.assert_allclose(out, y.value, atol=1e-6)


# ----------------------------------------------------------------------------- subdifferential


def test_subdiff_distance_closed_forms():
    x = np.array([0.0, 0.0, 1.5, -2.0])
    g = np.array([0.3, -2.0, -1.0, 0.5])
    np.testing.assert_allclose(L1(1.0).subdiff_distance(x, g), [0.0, 1.0, 0.0, 0.5], atol=1e-15)
    np.testing.assert_allclose(L1NonNegative(1.0).subdiff_distance(x, g), [0.0, 1.0, 0.0, np.inf])
    # at a lower bound -g must be <= 0, at an upper bound >= 0; strictly inside, g = 0
    np.testing.assert_allclose(Box(0.0, 1.5).subdiff_distance(x, g), [0.0, 2.0, 0.0, np.inf])
    inside = Box(-1.0, 1.5).subdiff_distance(np.array([0.0, 0.3, 1.5]), np.array([0.4, 0.0, 0.7]))
    np.testing.assert_allclose(inside, [0.4, 0.0, 0.7])
    np.testing.assert_allclose(Box(np.array([1.0]), np.array([1.0])).subdiff_distance(np.ones(1), -np.ones(1)), [0.0])
    # x_g = 0: max(||g_g|| - lam, 0); x_g = (1.5, -2) of norm 2.5: ||g_g + lam x_g / ||x_g||||
    dist = GroupL1(1.0, [[0, 1], [2, 3]]).subdiff_distance(x, g)
    np.testing.assert_allclose(dist, [math.sqrt(4.09) - 1.0, math.hypot(-1.0 + 0.6, 0.5 - 0.8)], rtol=1e-15)


@pytest.mark.parametrize("penalty", [L1(0.4), L1NonNegative(0.4), GroupL1(0.4, GROUPS), Box(-0.3, 0.5)], ids=repr)
def test_subdiff_distance_is_zero_at_prox_points(penalty):
    # x = prox(y, step) satisfies (y - x) / step in the subdifferential at x, i.e. grad = (x - y) / step
    rng = np.random.default_rng(3)
    y, step = rng.standard_normal(N) * np.linspace(0.05, 2.0, N), 1.0  # small and large entries
    x = penalty.prox(y, step)
    at_kink = (x == 0) | (x == -0.3) | (x == 0.5)
    assert at_kink.any() and not at_kink.all()  # both branches of the distance are checked
    np.testing.assert_allclose(penalty.subdiff_distance(x, (x - y) / step), 0.0, atol=1e-15)
    assert np.max(penalty.subdiff_distance(x, (x - y) / step + 0.1)) > 0.05


# ----------------------------------------------------------------------------- the smooth part


@pytest.mark.parametrize("kind", DATAFITS)
def test_smooth_part_against_dense_formulas_and_finite_differences(kind, data):
    A, b, y = data
    target = b if kind == "quadratic" else y
    problem = CompositeProblem(A, _datafit(kind, data), L1(0.1))
    x = np.random.default_rng(4).standard_normal(N)
    value, grad = _dense_loss_grad(kind, A, target, x)
    np.testing.assert_allclose(problem.smooth_fun(x), value, rtol=1e-13)
    np.testing.assert_allclose(problem.smooth_grad(x), grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(problem.fun(x), value + 0.1 * np.abs(x).sum(), rtol=1e-13)
    h = 1e-6
    fd = [(problem.smooth_fun(x + h * e) - problem.smooth_fun(x - h * e)) / (2 * h) for e in np.eye(N)]
    # central differences: O(h^2) truncation plus O(eps / h) rounding, about 1e-10 here
    np.testing.assert_allclose(problem.smooth_grad(x), fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(problem.predictions(x), A @ x, rtol=1e-14)


def test_logistic_is_stable_for_large_margins():
    datafit = LogisticDatafit(np.array([1.0, -1.0, 1.0]))
    z = np.array([800.0, 800.0, -800.0])  # margins 800, -800, -800
    np.testing.assert_allclose(datafit.value(z), 1600.0 / 3, rtol=1e-15)
    np.testing.assert_allclose(datafit.grad(z), [0.0, 1 / 3, -1 / 3], rtol=1e-15, atol=0)


@pytest.mark.parametrize("kind", DATAFITS)
def test_coordinate_lipschitz_bounds_the_hessian_diagonal(kind, data):
    A = data[0]
    problem = CompositeProblem(A, _datafit(kind, data), L1(0.1))
    coordinate = problem.coordinate_lipschitz()
    if kind == "quadratic":  # the Hessian A^T A / m is constant: equality
        np.testing.assert_allclose(coordinate, np.diag(A.T @ A) / M, rtol=1e-13)
        return
    target = data[2]
    for x, tight in ((np.zeros(N), True), (np.random.default_rng(5).standard_normal(N), False)):
        z = target * (A @ x)
        hessian = A.T @ ((expit(z) * expit(-z))[:, None] * A) / M
        if tight:  # all margins 0: sigma sigma = 1/4 attains the bound
            np.testing.assert_allclose(coordinate, np.diag(hessian), rtol=1e-13)
        else:
            assert np.all(coordinate > np.diag(hessian))


@pytest.mark.parametrize("kind", DATAFITS)
def test_lipschitz_exact_and_by_power_iteration(kind, data, monkeypatch):
    A = data[0]
    curvature = 1 / M if kind == "quadratic" else 0.25 / M
    wide = np.random.default_rng(6).standard_normal((M, 40))  # through the Gram matrix A A^T
    for matrix, dense in ((A, A), (sp.csr_array(A), A), (wide, wide)):
        problem = CompositeProblem(matrix, _datafit(kind, data), L1(0.1))
        np.testing.assert_allclose(problem.lipschitz(), curvature * np.linalg.norm(dense, 2) ** 2, rtol=1e-12)
    # the power-iteration path, on a matrix with singular values 3, 1, 0.5, ...: (1/3)^2 per step
    rng = np.random.default_rng(7)
    U, _ = np.linalg.qr(rng.standard_normal((M, N)))
    V, _ = np.linalg.qr(rng.standard_normal((N, N)))
    s = np.concatenate([[3.0, 1.0], np.linspace(0.5, 0.1, N - 2)])
    monkeypatch.setattr(cpm, "EXACT_LIPSCHITZ_MAX_DIM", 0)
    problem = CompositeProblem(U * s @ V.T, _datafit(kind, data), L1(0.1))
    # stopped at a relative change of 1e-10: 1e-8 is a wide margin
    np.testing.assert_allclose(problem.lipschitz(), curvature * 9.0, rtol=1e-8)


# ----------------------------------------------------------------------------- lambda_max and the gap


@pytest.mark.parametrize("gauge", GAUGES)
@pytest.mark.parametrize("kind", DATAFITS)
def test_lambda_max_is_where_zero_becomes_optimal(kind, gauge, data):
    A = data[0]
    lam_max = CompositeProblem(A, _datafit(kind, data), _gauge(gauge, 1.0)).lambda_max()
    assert lam_max > 0
    at = CompositeProblem(A, _datafit(kind, data), _gauge(gauge, lam_max))
    below = CompositeProblem(A, _datafit(kind, data), _gauge(gauge, 0.9 * lam_max))
    zero = np.zeros(N)
    assert at.evaluate(zero)["optimality"] <= 1e-15 * lam_max
    # at x = 0 the optimality measure of every gauge is (its dual norm of -grad f(0)) - lam
    np.testing.assert_allclose(below.evaluate(zero)["optimality"], 0.1 * lam_max, rtol=1e-12)


def test_lambda_max_matches_scikit_learn(data):
    sklearn = pytest.importorskip("sklearn.linear_model")
    A, b, _ = data
    lam_max = CompositeProblem(A, QuadraticDatafit(b), L1(1.0)).lambda_max()
    np.testing.assert_allclose(lam_max, np.max(np.abs(A.T @ b)) / M, rtol=1e-14)
    # sklearn computes A^T b in its own order: a relative 1e-12 above lam_max absorbs that rounding
    assert not np.any(sklearn.Lasso(alpha=lam_max * (1 + 1e-12), fit_intercept=False).fit(A, b).coef_)
    assert np.any(sklearn.Lasso(alpha=0.95 * lam_max, fit_intercept=False).fit(A, b).coef_)


def _cvxpy_solution(problem, cp):
    A, target, lam = problem.matrix, problem.datafit.target, problem.penalty.lam
    x = cp.Variable(N)
    if isinstance(problem.datafit, QuadraticDatafit):
        loss = cp.sum_squares(A @ x - target) / (2 * M)
    else:
        loss = cp.sum(cp.logistic(-cp.multiply(target, A @ x))) / M
    penalty = problem.penalty
    if isinstance(penalty, GroupL1):
        reg, constraints = lam * sum(cp.norm(x[g], 2) for g in GROUPS), []
    elif isinstance(penalty, L1NonNegative):
        reg, constraints = lam * cp.sum(x), [x >= 0]
    else:
        reg, constraints = lam * cp.norm1(x), []
    # Clarabel to 1e-11 gap and feasibility (its defaults are 1e-8)
    tight = {"tol_gap_abs": 1e-11, "tol_gap_rel": 1e-11, "tol_feas": 1e-11, "tol_ktratio": 1e-9}
    cp.Problem(cp.Minimize(loss + reg), constraints).solve(solver="CLARABEL", **tight)
    # interior-point iterates may be -1e-13 where they should be 0: outside the penalty's domain
    return np.maximum(x.value, 0) if isinstance(penalty, L1NonNegative) else x.value


@pytest.mark.parametrize("gauge", GAUGES)
@pytest.mark.parametrize("kind", DATAFITS)
def test_duality_gap_bounds_suboptimality_and_vanishes_at_the_solution(kind, gauge, data):
    cp = pytest.importorskip("cvxpy")
    A = data[0]
    lam = 0.3 * CompositeProblem(A, _datafit(kind, data), _gauge(gauge, 1.0)).lambda_max()
    problem = CompositeProblem(A, _datafit(kind, data), _gauge(gauge, lam))
    assert "duality_gap" in problem.capabilities
    solution = _cvxpy_solution(problem, cp)
    best = problem.fun(solution)
    # solved to an accuracy of 1e-11 by an interior-point method: 1e-8 is a wide margin
    assert abs(problem.duality_gap(solution)) <= 1e-8
    assert 0 < np.count_nonzero(np.abs(solution) > 1e-6) < N  # a sparse solution: the penalty is active
    rng = np.random.default_rng(7)
    for scale in (1e-3, 1e-1, 1.0, 10.0):
        x = solution + scale * rng.standard_normal(N)
        if gauge == "l1-nonneg":
            x = np.abs(x)
        gap = problem.duality_gap(x)
        # weak duality: gap >= F(x) - F* >= F(x) - F(solution), up to rounding (1e-12 is wide)
        assert gap >= problem.fun(x) - best - 1e-12 and gap > 0
        np.testing.assert_allclose(problem.evaluate(x)["duality_gap"], gap, rtol=1e-14)


def test_nonnegative_lasso_gap_matches_scikit_learn(data):
    sklearn = pytest.importorskip("sklearn.linear_model")
    A, b, _ = data
    lam = 0.01 * CompositeProblem(A, QuadraticDatafit(b), L1NonNegative(1.0)).lambda_max()
    problem = CompositeProblem(A, QuadraticDatafit(b), L1NonNegative(lam))
    # two sweeps only, so that the gap is far above rounding; sklearn reports its gap of
    # (1/2)||r||^2 + m lam ||x||_1 divided by m, the same scaling as ours. It updates its
    # residual in place, so the two agree to rounding relative to F (1e-6 of the gap is wide)
    early = sklearn.Lasso(alpha=lam, fit_intercept=False, positive=True, max_iter=2).fit(A, b)
    assert early.dual_gap_ > 1e-8
    np.testing.assert_allclose(problem.duality_gap(early.coef_), early.dual_gap_, rtol=1e-6)
    tight = sklearn.Lasso(alpha=lam, fit_intercept=False, positive=True, tol=1e-12, max_iter=100_000).fit(A, b)
    assert abs(problem.duality_gap(tight.coef_)) <= 1e-10


# ----------------------------------------------------------------------------- evaluate, counters, kind


def test_evaluate_and_counters(data):
    A, b, _ = data
    problem = CompositeProblem(A, QuadraticDatafit(b), L1(0.05), metadata={"f_opt": 0.25})
    x = np.zeros(N)
    x[[1, 4]] = [0.5, -1.0]
    out = problem.evaluate(x)
    r = A @ x - b
    grad = A.T @ r / M
    expected_fun = r @ r / (2 * M) + 0.05 * 1.5
    np.testing.assert_allclose(out["fun"], expected_fun, rtol=1e-14)
    np.testing.assert_allclose(out["f_gap"], expected_fun - 0.25, rtol=1e-13)
    on = np.abs(grad + 0.05 * np.sign(x))
    off = np.maximum(np.abs(grad) - 0.05, 0)
    np.testing.assert_allclose(out["optimality"], np.max(np.where(x != 0, on, off)), rtol=1e-13)
    assert out["nnz"] == 2 and "duality_gap" in out
    assert not problem.counters
    problem.fun(x)
    problem.smooth_fun(x)
    problem.smooth_grad(x)
    problem.prox(x, 1.0)
    problem.predictions(x)
    assert problem.counters == {"fun": 2, "grad": 1, "prox": 1, "matvec": 1}


def test_box_problem_has_no_gap(data):
    A, b, _ = data
    problem = CompositeProblem(A, QuadraticDatafit(b), Box(-1.0, 1.0))
    assert "duality_gap" not in problem.capabilities and "duality_gap" not in problem.evaluate(np.zeros(N))
    with pytest.raises(ValueError, match="duality_gap needs a gauge penalty"):
        problem.duality_gap(np.zeros(N))
    with pytest.raises(ValueError, match="lambda_max needs a gauge penalty"):
        problem.lambda_max()


def test_not_a_smooth_problem(data):
    A, b, _ = data
    problem = CompositeProblem(A, QuadraticDatafit(b), L1(0.1))
    assert isinstance(problem, optkit.Problem) and not isinstance(problem, optkit.SmoothProblem)
    assert problem.capabilities == {"fun", "grad", "prox", "linop", "coordinate_lipschitz", "matrix", "duality_gap"}
    reason = optkit.get_solver("scipy-lbfgsb").check(problem)
    assert reason is not None and "CompositeProblem" in reason
    assert isinstance(problem.A, optkit.LinearOperator) and problem.A.shape == (M, N)


def test_sparse_matrix_is_kept_as_csc(data):
    A, b, _ = data
    A[np.abs(A) < 1] = 0
    problem = CompositeProblem(sp.csr_matrix(A), QuadraticDatafit(b), L1(0.1))
    assert isinstance(problem.matrix, sp.csc_array)
    np.testing.assert_array_equal(problem.matrix.toarray(), A)
    np.testing.assert_allclose(problem.column_norms_sq(), (A * A).sum(axis=0), rtol=1e-14)
    x = np.random.default_rng(8).standard_normal(N)
    dense = CompositeProblem(A, QuadraticDatafit(b), L1(0.1))
    np.testing.assert_allclose(problem.smooth_grad(x), dense.smooth_grad(x), rtol=1e-13)
    single = problem.to("numpy", dtype="float32")
    assert single.matrix.dtype == np.float32 and single.x0.dtype == np.float32
    # float32 rounding of the data and the sums: 1e-5 is a wide margin over 2^-24 ~ 6e-8
    np.testing.assert_allclose(single.fun(x.astype(np.float32)), dense.fun(x), rtol=1e-5)


# ----------------------------------------------------------------------------- torch


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("penalty", [L1(0.1), L1NonNegative(0.1), GroupL1(0.1, GROUPS), Box(-0.5, 0.5)], ids=repr)
@pytest.mark.parametrize("kind", DATAFITS)
def test_torch_parity(kind, penalty, sparse, data):
    torch = pytest.importorskip("torch")
    A = data[0]
    problem = CompositeProblem(sp.csr_array(A) if sparse else A, _datafit(kind, data), penalty)
    on_torch = problem.to("torch")
    assert on_torch.backend == "torch" and on_torch.matrix.layout == torch.strided
    assert on_torch.matrix.dtype == torch.float64
    rng = np.random.default_rng(9)
    x = penalty.prox(rng.standard_normal(N), 1.0)
    xt = torch.from_numpy(x)
    steps = rng.uniform(0.1, 2.0, penalty.n_blocks(N))

    def close(actual, expected):
        actual = actual.numpy() if isinstance(actual, torch.Tensor) else actual
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-15)

    close(on_torch.fun(xt), problem.fun(x))
    close(on_torch.smooth_grad(xt), problem.smooth_grad(x))
    close(on_torch.prox(xt, 0.3), problem.prox(x, 0.3))
    close(on_torch.prox(xt, torch.from_numpy(steps)), problem.prox(x, steps))
    grad = problem.smooth_grad(x)
    close(on_torch.penalty.subdiff_distance(xt, torch.from_numpy(grad)), problem.penalty.subdiff_distance(x, grad))
    close(on_torch.coordinate_lipschitz(), problem.coordinate_lipschitz())
    close(on_torch.lipschitz(), problem.lipschitz())
    assert on_torch.evaluate(xt).keys() == problem.evaluate(x).keys()
    for key, value in problem.evaluate(x).items():
        close(on_torch.evaluate(xt)[key], value)
    if problem.has_duality_gap:
        close(on_torch.lambda_max(), problem.lambda_max())
        close(on_torch.duality_gap(xt), problem.duality_gap(x))
    back = on_torch.to("numpy")
    close(back.fun(x), problem.fun(x))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: L1(-1.0), ValueError, "lam must be a finite number >= 0"),
        (lambda: L1NonNegative(float("nan")), ValueError, "lam must be a finite number >= 0"),
        (lambda: GroupL1(1.0, [[0, 1], [1, 2]]), ValueError, r"groups must partition range\(4\)"),
        (lambda: GroupL1(1.0, [[0, 2]]), ValueError, r"groups must partition range\(2\)"),
        (lambda: GroupL1(1.0, [[0], []]), ValueError, "non-empty sequences of integers"),
        (lambda: GroupL1(1.0, 3), ValueError, "groups must be a sequence"),
        (lambda: Box(1.0, 0.0), ValueError, "lower must be <= upper"),
        (lambda: Box(np.inf, np.inf), ValueError, "the box is empty"),
        (lambda: Box(float("nan")), ValueError, "lower must not be NaN"),
        (lambda: LogisticDatafit(np.array([1.0, 0.0])), ValueError, "y must hold labels -1 or \\+1"),
        (lambda: QuadraticDatafit(np.ones((2, 2))), ValueError, "b must be a 1-D array"),
        (lambda: QuadraticDatafit(np.array([1.0, np.inf])), ValueError, "b contains NaN or inf"),
        (lambda: L1(1.0).prox(np.ones(3), 0.0), ValueError, "step must be a positive finite number"),
        (lambda: L1(1.0).prox(np.ones(3), np.ones(2)), ValueError, r"array of shape \(3,\)"),
        (lambda: L1(1.0).prox(np.ones(3), -np.ones(3)), ValueError, "step must hold positive finite numbers"),
        (lambda: GroupL1(1.0, [[0, 1], [2]]).prox(np.ones(3), np.ones(3)), ValueError, r"shape \(2,\)"),
    ],
)
def test_bad_terms(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_bad_problems(data):
    A, b, _ = data
    fit = QuadraticDatafit(b)
    with pytest.raises(TypeError, match="not a LinearOperator"):
        CompositeProblem(optkit.aslinearoperator(A), fit, L1(0.1))
    with pytest.raises(TypeError, match="A must be a numpy array"):
        CompositeProblem(A.tolist(), fit, L1(0.1))
    with pytest.raises(ValueError, match="A must be 2-D"):
        CompositeProblem(A[None], fit, L1(0.1))
    with pytest.raises(ValueError, match="A contains NaN"):
        CompositeProblem(np.where(A > 2, np.nan, A), fit, L1(0.1))
    with pytest.raises(ValueError, match=f"datafit has {M - 1} predictions, but A has m = {M} rows"):
        CompositeProblem(A, QuadraticDatafit(b[1:]), L1(0.1))
    with pytest.raises(TypeError, match="datafit must be an optkit Datafit"):
        CompositeProblem(A, b, L1(0.1))
    with pytest.raises(TypeError, match="penalty must be an optkit Penalty"):
        CompositeProblem(A, fit, 0.1)
    with pytest.raises(ValueError, match=r"partition range\(3\), but the problem has n = 12"):
        CompositeProblem(A, fit, GroupL1(0.1, [[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"lower must be a number or have shape \(12,\)"):
        CompositeProblem(A, fit, Box(np.zeros(3), 1.0))
    with pytest.raises(ValueError, match=r"x0 must have shape \(12,\)"):
        CompositeProblem(A, fit, L1(0.1), np.zeros(3))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        CompositeProblem(A, fit, L1(0.1), np.full(N, np.nan))


def test_bad_torch_inputs(data):
    torch = pytest.importorskip("torch")
    A, b, _ = data
    with pytest.raises(TypeError, match="must be dense"):
        CompositeProblem(torch.from_numpy(A).to_sparse(), QuadraticDatafit(b), L1(0.1))
    with pytest.raises(TypeError, match="x0 must be on A's backend"):
        CompositeProblem(A, QuadraticDatafit(b), L1(0.1), torch.zeros(N, dtype=torch.float64))
