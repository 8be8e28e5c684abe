"""Non-negative L1 block updates (projected gradient, proximal Newton, two-metric projection) and GS-q scores.

The problem throughout is ``F(x) = ||A x - y||^2 / (2 m) + lam * sum(x)`` on ``x >= 0`` (the BCD paper's
A-l1 shape, small), with ``g = A^T (A x - y) / m`` and block matrix ``H_b = A_b^T A_b / m``.
"""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest

from solvers.bcd._nonneg_l1 import gsq_scores, projected_gradient, proximal_newton, two_metric_projection

EPS = np.finfo(np.float64).eps


class NonNegativeLeastSquares:
    """A small seeded A-l1 problem with columns scaled over 1.5 decades (so projected gradient is slow)."""

    def __init__(self, seed: int, m: int = 60, n: int = 20, lam_ratio: float = 0.01) -> None:
        rng = np.random.default_rng(seed)
        self.A = rng.standard_normal((m, n)) * np.logspace(0, 1.5, n)
        self.y = self.A @ np.maximum(rng.standard_normal(n), 0.0) + 0.5 * rng.standard_normal(m)
        self.m, self.n = m, n
        self.lam = lam_ratio * float(np.abs(self.A.T @ self.y).max()) / m
        self.H = self.A.T @ self.A / m

    def value(self, x: np.ndarray) -> float:
        residual = self.A @ x - self.y
        return float(residual @ residual / (2 * self.m) + self.lam * x.sum())

    def grad(self, x: np.ndarray) -> np.ndarray:
        return self.A.T @ (self.A @ x - self.y) / self.m

    def block_value(self, x: np.ndarray, block: np.ndarray):
        """``F`` as a function of the block's coordinates, the others fixed at ``x``."""

        def value(x_b: np.ndarray) -> float:
            trial = x.copy()
            trial[block] = x_b
            return self.value(trial)

        return value

    def solution(self) -> np.ndarray:
        """``x*``: one proximal Newton step on the whole problem (exact for least squares)."""
        zero = np.zeros(self.n)
        return proximal_newton(zero, self.grad(zero), self.H, self.lam)


def stationarity(problem: NonNegativeLeastSquares, x: np.ndarray) -> float:
    """Largest violation of the optimality conditions of ``F`` (``L1NonNegative.subdiff_distance``)."""
    c = problem.grad(x) + problem.lam
    return float(np.where(x > 0, np.abs(c), np.maximum(-c, 0.0)).max())


# ----------------------------------------------------------------------------- GS-q


def test_gsq_scores_equal_a_dense_grid_minimisation():
    rng = np.random.default_rng(0)
    n = 200
    x = np.where(rng.random(n) < 0.4, 0.0, rng.exponential(1.0, n))
    g = rng.standard_normal(n) * 2
    L = rng.uniform(0.1, 5.0, n)
    lam = 0.4
    scores = gsq_scores(x, g, L, lam)
    c = g + lam
    grid_scores = np.empty(n)
    spacings = np.empty(n)
    for i in range(n):
        # the feasible steps [-x_i, ...] up to past the unconstrained minimiser -c_i / L_i
        steps, spacings[i] = np.linspace(-x[i], abs(c[i]) / L[i] + 1.0, 200_001, retstep=True)
        grid_scores[i] = -np.min(c[i] * steps + L[i] * steps**2 / 2)
    # The grid includes the bound and the minimiser is within half a spacing h of a grid point, so the
    # grid misses at most L_i h^2 / 8 of the decrease; plus the rounding of the model values.
    np.testing.assert_allclose(scores, grid_scores, rtol=0, atol=float(np.max(L * spacings**2 / 8)) + 1e-12)
    assert np.all(scores >= grid_scores - 1e-12), "a score below the grid's decrease is not the exact minimum"


def test_gsq_scores_are_zero_exactly_at_optimal_coordinates_and_positive_elsewhere():
    x = np.array([0.0, 0.0, 0.0, 2.0, 2.0, 0.5])
    g = np.array([-1.0, -0.5, 3.0, -1.0, 4.0, 1.0])
    lam = 1.0  # c = g + lam = [0, 0.5, 4, 0, 5, 2]
    L = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 2.0])
    scores = gsq_scores(x, g, L, lam)
    # coordinates 0-3 are optimal (x_i = 0 with c_i >= 0, or x_i > 0 with c_i = 0); 4 and 5 hit the bound
    # (c_i > L_i x_i), where the decrease is x_i (c_i - L_i x_i / 2)
    expected = np.array([0.0, 0.0, 0.0, 0.0, 2.0 * (5.0 - 2.0), 0.5 * (2.0 - 0.5)])
    np.testing.assert_allclose(scores, expected, rtol=1e-15, atol=0)
    # an interior step: x = 3 with c = 2, L = 1 moves by -2, decrease c^2 / (2 L) = 2; scalar L broadcasts
    np.testing.assert_allclose(gsq_scores([3.0], [2.0], 1.0, 0.0), [2.0], rtol=1e-15, atol=0)


# ----------------------------------------------------------------------------- projected gradient


def test_projected_gradient_fixed_point_is_the_solution():
    problem = NonNegativeLeastSquares(seed=1)
    solution = problem.solution()
    L_b = float(np.linalg.eigvalsh(problem.H).max())
    # x* is a fixed point (up to the rounding of grad F at x*, ~1e-13 here: scale |A^T r|/m ~ 1e2)
    np.testing.assert_allclose(
        projected_gradient(solution, problem.grad(solution), L_b, problem.lam), solution, rtol=0, atol=1e-12
    )
    x = np.abs(np.random.default_rng(2).standard_normal(problem.n))
    step = projected_gradient(x, problem.grad(x), L_b, problem.lam)
    # the step is the exact minimiser of c^T d + L_b |d|^2 / 2 over x + d >= 0: its KKT conditions
    model_grad = problem.grad(x) + problem.lam + L_b * (step - x)
    assert np.all(step >= 0)
    np.testing.assert_allclose(model_grad[step > 0], 0.0, atol=1e-12, err_msg="gradient on the free coordinates")
    assert np.all(model_grad[step == 0] >= -1e-12), "negative model gradient at a coordinate held at zero"
    assert problem.value(step) < problem.value(x), "a 1/L step from a non-stationary point must decrease F"


# ----------------------------------------------------------------------------- proximal Newton


def random_block_qp(rng: np.random.Generator, size: int, kind: str):
    """``(x_b, g_b, H_b, lam, known solution or None)`` of one test QP.

    kind: ``"random"`` (eigenvalues in [0.5, 2], random gradient), ``"ill"`` (eigenvalues from 1 to 1e-8,
    random gradient), ``"degenerate"`` and ``"ill-degenerate"`` (built from a known solution with a third of
    its coordinates at zero, half of those with a zero multiplier: strict complementarity fails there, and a
    sixth of them free at ~1e-9).
    """
    basis, _ = np.linalg.qr(rng.standard_normal((size, size)))
    if kind.startswith("ill") and size > 1:
        eigenvalues = np.logspace(0, -8, size)
    else:
        eigenvalues = rng.uniform(0.5, 2.0, size)
    H = (basis * eigenvalues) @ basis.T
    H = (H + H.T) / 2
    x = np.maximum(rng.standard_normal(size), 0.0)
    lam = 0.3
    if kind in ("random", "ill"):
        return x, rng.standard_normal(size), H, lam, None
    solution = np.abs(rng.standard_normal(size)) + 0.1
    solution[: size // 3] = 0.0
    # free coordinates barely above zero: a stopping test looser than rounding would leave them at 0
    solution[size // 3 : size // 3 + max(1, size // 6)] = rng.uniform(1e-9, 2e-9)
    multipliers = np.where(solution > 0, 0.0, rng.uniform(0.1, 1.0, size))
    multipliers[: size // 6] = 0.0
    # KKT of min y^T H y / 2 + q^T y, y >= 0 at the known solution: H y + q = multipliers
    q = multipliers - H @ solution
    return x, q + H @ x - lam, H, lam, solution


KINDS = ("random", "ill", "degenerate", "ill-degenerate")


@pytest.mark.parametrize("kind", KINDS)
def test_proximal_newton_satisfies_the_block_qp_kkt_conditions(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    for size in range(1, 51):
        x, g, H, lam, _ = random_block_qp(rng, size, kind)
        new = proximal_newton(x, g, H, lam)
        d = new - x
        model_grad = g + lam + H @ d
        # the rounding level of the computed model gradient, per coordinate
        scale = np.abs(g + lam - H @ x) + np.abs(H) @ new
        assert np.all(new >= 0), f"size {size}: infeasible point"
        # relative KKT: the active-set stopping test is 16 k eps ~ 2e-13 relative at k = 50
        np.testing.assert_allclose((model_grad / scale)[new > 0], 0.0, atol=1e-12, err_msg=f"size {size}")
        assert np.all((model_grad / scale)[new == 0] >= -1e-12), f"size {size}: negative multiplier"
        if kind == "random":
            # absolute, on this well-scaled family (|H| ~ 1, |y| ~ 1)
            np.testing.assert_allclose(model_grad[new > 0], 0.0, atol=1e-10, err_msg=f"size {size}")


def solve_with_clarabel(x, g, H, lam) -> np.ndarray:
    """The same block QP solved by CLARABEL through cvxpy (duality gap and feasibility 1e-10)."""
    step = cp.Variable(x.size)
    objective = (g + lam) @ step + cp.quad_form(step, cp.psd_wrap(H)) / 2
    problem = cp.Problem(cp.Minimize(objective), [x + step >= 0])
    with warnings.catch_warnings():
        # cvxpy's "solution may be inaccurate" would fail the run under filterwarnings=error; the
        # status check below says which problem it was
        warnings.simplefilter("ignore", UserWarning)
        problem.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert problem.status == "optimal", f"CLARABEL: {problem.status}"
    return x + step.value


def qp_value(H: np.ndarray, q: np.ndarray, y: np.ndarray) -> float:
    """``y^T H y / 2 + q^T y``: the block model in ``y = x_b + d``, up to a constant."""
    return float(y @ H @ y / 2 + q @ y)


@pytest.mark.parametrize("kind", KINDS)
def test_proximal_newton_equals_clarabel_on_random_block_qps(kind):
    rng = np.random.default_rng(10 + KINDS.index(kind))
    for size in range(1, 51):
        x, g, H, lam, known = random_block_qp(rng, size, kind)
        new = proximal_newton(x, g, H, lam)
        reference = solve_with_clarabel(x, g, H, lam)

        q = g + lam - H @ x

        # CLARABEL's duality gap 1e-10 bounds its suboptimality; the exact solution can only be lower, up to
        # the rounding of the model values (|y| ~ 1e5 on the ill-conditioned family)
        rounding = 16 * size * EPS * float(np.abs(new) @ np.abs(H) @ np.abs(new) + np.abs(q) @ np.abs(new))
        np.testing.assert_allclose(
            qp_value(H, q, new), qp_value(H, q, reference), rtol=1e-9, atol=1e-9, err_msg=f"size {size}"
        )
        assert qp_value(H, q, new) <= qp_value(H, q, reference) + rounding, (
            f"size {size}: the interior point found a lower value"
        )
        if kind == "random":
            # well-conditioned, strictly complementary in general: the interior point's iterate is ~1e-7 accurate
            np.testing.assert_allclose(new, reference, rtol=0, atol=1e-5, err_msg=f"size {size}")
        elif known is not None:
            # against the exact solution: rounding times the condition number (1 or 1e8) and |y| ~ 1
            tolerance = 1e-12 if kind == "degenerate" else 1e-6
            np.testing.assert_allclose(new, known, rtol=0, atol=tolerance, err_msg=f"size {size}")


def test_proximal_newton_is_exact_on_a_least_squares_block():
    problem = NonNegativeLeastSquares(seed=3, n=30)
    x = np.maximum(np.random.default_rng(4).standard_normal(problem.n), 0.0)
    block = np.arange(5, 20)
    new_block = proximal_newton(x[block], problem.grad(x)[block], problem.H[np.ix_(block, block)], problem.lam)
    new = x.copy()
    new[block] = new_block
    # the block minimiser of F: the optimality conditions of F restricted to the block hold
    c = (problem.grad(new) + problem.lam)[block]
    np.testing.assert_allclose(c[new_block > 0], 0.0, atol=1e-11, err_msg="|A^T r| / m ~ 1e2: rounding ~1e-13")
    assert np.all(c[new_block == 0] >= -1e-11), "negative gradient at a block coordinate held at zero"
    # and the warm start from an optimal block returns it
    again = proximal_newton(new_block, problem.grad(new)[block], problem.H[np.ix_(block, block)], problem.lam)
    np.testing.assert_allclose(again, new_block, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- two-metric projection


def test_two_metric_projection_decreases_F_monotonically_over_random_blocks():
    problem = NonNegativeLeastSquares(seed=5, n=60, lam_ratio=0.005)
    rng = np.random.default_rng(6)
    x = np.zeros(problem.n)
    values = [problem.value(x)]
    for _ in range(150):
        block = np.sort(rng.choice(problem.n, size=10, replace=False))
        H_b = problem.H[np.ix_(block, block)]
        x[block], _ = two_metric_projection(
            x[block], problem.grad(x)[block], H_b, problem.lam, problem.block_value(x.copy(), block)
        )
        values.append(problem.value(x))
    assert np.all(np.diff(values) <= 0), "F increased"
    assert values[-1] < values[0], "no progress"
    assert np.all(x >= 0)


def test_two_metric_projection_backtracks_when_H_underestimates_the_curvature():
    problem = NonNegativeLeastSquares(seed=7, n=12, lam_ratio=0.002)
    x = np.zeros(problem.n)
    x[::2] = 1.0
    start = problem.value(x)
    # a tenth of the Hessian makes the full Newton step ten times too long: Armijo must halve it
    new, steps = two_metric_projection(x, problem.grad(x), problem.H / 10, problem.lam, problem.value)
    assert steps >= 3, f"expected backtracking, accepted after {steps} trial(s)"
    assert problem.value(new) < start


def test_two_metric_projection_returns_x_unchanged_when_stationary_or_no_decrease():
    problem = NonNegativeLeastSquares(seed=8)
    solution = problem.solution()
    # at x* the step moves by rounding at most, and F does not increase
    new, _ = two_metric_projection(solution, problem.grad(solution), problem.H, problem.lam, problem.value)
    np.testing.assert_allclose(new, solution, rtol=0, atol=1e-12)
    assert problem.value(new) <= problem.value(solution)

    calls = []

    def rising_value(x_b):
        # rises along every descent direction of c = 1: no trial step passes the Armijo test
        calls.append(x_b)
        return float(-np.sum(x_b))

    # an exactly stationary point (x = 0 with c >= 0) is detected before any evaluation
    new, steps = two_metric_projection(np.zeros(3), np.ones(3), np.eye(3), 0.5, rising_value)
    assert (steps, len(calls)) == (0, 0)
    np.testing.assert_array_equal(new, np.zeros(3))
    # x_b back after the value at x_b and max_backtracks + 1 = 5 trial steps
    x = np.ones(3)
    new, steps = two_metric_projection(x, np.ones(3), np.eye(3), 0.0, rising_value, max_backtracks=4)
    assert (steps, len(calls)) == (0, 6)
    np.testing.assert_array_equal(new, x)


def test_two_metric_projection_lands_on_the_proximal_newton_point_once_the_active_set_is_known():
    problem = NonNegativeLeastSquares(seed=9)
    solution = problem.solution()
    free = solution > 0
    assert 0 < free.sum() < problem.n, "the test needs a solution with zero and non-zero coordinates"
    # exact zeros on the optimal active set, a point 1% off x* on the free coordinates (the smallest free
    # x*_i is 0.07: a 5% perturbation gives a threshold w = 0.08 that puts it in the epsilon-active set)
    x = np.where(free, solution * (1 + 0.01 * np.random.default_rng(10).standard_normal(problem.n)), 0.0)
    c = problem.grad(x) + problem.lam
    threshold = np.linalg.norm(x - np.maximum(x - c / np.diag(problem.H), 0.0))
    working = ~((x <= threshold) & (c > 0))
    assert np.array_equal(working, free), "precondition: the epsilon-active rule identifies the optimal free set"
    new, steps = two_metric_projection(x, problem.grad(x), problem.H, problem.lam, problem.value)
    pn = proximal_newton(x, problem.grad(x), problem.H, problem.lam)
    assert steps == 1
    # both are the exact minimiser; rounding of a 20x20 solve with cond(H) ~ 1e3 and |x| ~ 1
    np.testing.assert_allclose(new, pn, rtol=0, atol=1e-11)
    np.testing.assert_allclose(new, solution, rtol=0, atol=1e-11)


def test_newton_updates_terminate_in_few_steps_where_projected_gradient_does_not():
    problem = NonNegativeLeastSquares(seed=11)
    solution = problem.solution()
    L = float(np.linalg.eigvalsh(problem.H).max())
    target = 1e-10  # stationarity, ~1e-12 of the gradient's scale |A^T y| / m

    def iterations(update, budget):
        x = np.zeros(problem.n)
        for iteration in range(1, budget + 1):
            x = update(x)
            if stationarity(problem, x) <= target:
                return iteration, x
        return None, x

    def tmp(x):
        return two_metric_projection(x, problem.grad(x), problem.H, problem.lam, problem.value)[0]

    def pn(x):
        return proximal_newton(x, problem.grad(x), problem.H, problem.lam)

    def pg(x):
        return projected_gradient(x, problem.grad(x), L, problem.lam)

    pn_count, pn_point = iterations(pn, 500)
    tmp_count, tmp_point = iterations(tmp, 500)
    pg_count, _ = iterations(pg, 500)  # the reference code's iteration budget
    assert pn_count == 1
    # finite termination once the active set is found: a handful of Newton steps (10 = half the dimension)
    assert tmp_count is not None and tmp_count <= 10, f"TMP took {tmp_count}"
    assert pg_count is None, f"projected gradient met the target in {pg_count} iterations"
    np.testing.assert_allclose(tmp_point, solution, rtol=0, atol=1e-11)
    np.testing.assert_allclose(pn_point, solution, rtol=0, atol=1e-11)


# ----------------------------------------------------------------------------- bad input


def _unit_value(x_b):
    return 0.0


BAD_INPUTS = [
    ("shape", lambda: gsq_scores(np.ones(3), np.ones(2), 1.0, 0.1), "g must have shape"),
    ("L", lambda: gsq_scores(np.ones(3), np.ones(3), np.array([1.0, 0.0, 1.0]), 0.1), "L must be positive"),
    ("L scalar", lambda: gsq_scores(np.ones(3), np.ones(3), 0.0, 0.1), "L must be a positive finite number"),
    ("lam", lambda: gsq_scores(np.ones(3), np.ones(3), 1.0, -0.1), "lam must be a finite number >= 0"),
    ("negative x", lambda: projected_gradient([1.0, -1.0], [0.0, 0.0], 1.0, 0.1), "x_b must be non-negative"),
    ("L_b", lambda: projected_gradient([1.0], [0.0], 0.0, 0.1), "L_b must be a positive"),
    ("nan", lambda: projected_gradient([1.0], [np.nan], 1.0, 0.1), "g_b contains NaN"),
    ("2-D x", lambda: projected_gradient(np.ones((2, 2)), np.ones(2), 1.0, 0.1), "x_b must be a 1-D array"),
    ("H shape", lambda: proximal_newton(np.ones(3), np.ones(3), np.eye(2), 0.1), r"H_b must have shape \(3, 3\)"),
    ("lam PN", lambda: proximal_newton(np.ones(2), np.ones(2), np.eye(2), -1.0), "lam must be"),
    (
        "indefinite",
        lambda: proximal_newton(np.ones(2), np.ones(2), np.diag([1.0, -1.0]), 0.1),
        "H_b must be symmetric positive definite",
    ),
    (
        "singular",
        lambda: proximal_newton(np.ones(2), np.ones(2), np.ones((2, 2)), 0.1),
        "H_b must be symmetric positive definite",
    ),
    (
        "asymmetric",
        lambda: proximal_newton(np.ones(2), np.ones(2), np.array([[2.0, 1.0], [0.0, 2.0]]), 0.1),
        "it is not symmetric",
    ),
    (
        "TMP H",
        lambda: two_metric_projection(np.ones(2), np.ones(2), -np.eye(2), 0.1, _unit_value),
        "H_b must be symmetric positive definite",
    ),
    (
        "TMP backtracks",
        lambda: two_metric_projection(np.ones(2), np.ones(2), np.eye(2), 0.1, _unit_value, max_backtracks=-1),
        "max_backtracks must be an integer >= 0",
    ),
    (
        "TMP epsilon",
        lambda: two_metric_projection(np.ones(2), np.ones(2), np.eye(2), 0.1, _unit_value, epsilon=0.0),
        "epsilon must be a positive number",
    ),
    (
        "TMP start value",
        lambda: two_metric_projection(np.ones(2), np.ones(2), np.eye(2), 0.1, lambda y: np.inf),
        r"block_value\(x_b\) must be finite",
    ),
]


@pytest.mark.parametrize(("case", "call", "message"), BAD_INPUTS, ids=[case for case, _, _ in BAD_INPUTS])
def test_bad_input_is_refused_with_a_message_naming_the_argument(case, call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_block_value_that_is_not_callable_is_a_type_error():
    with pytest.raises(TypeError, match="block_value must be a callable"):
        two_metric_projection(np.ones(2), np.ones(2), np.eye(2), 0.1, 3.0)
