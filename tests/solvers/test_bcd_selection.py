"""Selection rules of ``bcd`` against brute force on small problems, and the paper's ordering."""

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from optkit.composite_problem import L1, CompositeProblem, QuadraticDatafit
from problems.linear_models import SoftmaxRegression
from solvers.bcd import BCD, _objectives
from solvers.bcd.selection import SELECTIONS, iht_block


def least_squares(m=30, n=12, lam=0.0, seed=0, A=None):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n)) * rng.uniform(0.2, 3.0, n) if A is None else A
    return CompositeProblem(A, QuadraticDatafit(rng.standard_normal(A.shape[0])), L1(lam))


def state_after(problem, partition, steps=7, block_size=3):
    """A run state away from x = 0 (a few random block steps), for scoring."""
    solver = BCD(partition=partition, selection="random", block_size=block_size, seed=1)
    state = solver.init(problem, problem.x0)
    for _ in range(steps):
        state = solver.step(problem, state)
    return state


def block_lipschitz(A, block, m):
    return np.linalg.eigvalsh(A[:, block].T @ A[:, block] / m)[-1]


FIXED_SCORES = {
    "gs": lambda g, L, Lb, H: np.sum(g**2),
    "gsl": lambda g, L, Lb, H: np.sum(g**2) / Lb,
    "gsl-code": lambda g, L, Lb, H: np.sum(np.abs(g)) / np.sqrt(Lb),
    "gsd": lambda g, L, Lb, H: np.sum(np.abs(g) / np.sqrt(L)),
    "gsq": lambda g, L, Lb, H: g @ np.linalg.solve(H, g),
}


@pytest.mark.parametrize("rule", sorted(FIXED_SCORES))
@pytest.mark.parametrize("partition", ["order", "sort", "avg"])
def test_fixed_block_greedy_rules_pick_the_brute_force_best_block(rule, partition):
    problem = least_squares()
    state = state_after(problem, partition)
    A, m = problem.matrix, problem.m
    g = A.T @ (A @ state.x - problem.datafit.b) / m
    L = (A * A).sum(axis=0) / m
    scores = [FIXED_SCORES[rule](g[b], L[b], block_lipschitz(A, b, m), A[:, b].T @ A[:, b] / m) for b in state.blocks]
    assert SELECTIONS[rule].fixed(state) == int(np.argmax(scores))


VARIABLE_SCORES = {
    "gs": lambda g, L, A, m: np.abs(g),
    "gsd": lambda g, L, A, m: np.abs(g) / np.sqrt(L),
    "gsl": lambda g, L, A, m: np.abs(g) / np.sqrt(np.abs(A.T @ A / m).sum(axis=1)),
}


@pytest.mark.parametrize("rule", sorted(VARIABLE_SCORES))
def test_variable_block_greedy_rules_take_the_top_of_a_full_sort(rule):
    problem = least_squares(n=15)
    state = state_after(problem, "variable", block_size=4)
    A, m = problem.matrix, problem.m
    g = A.T @ (A @ state.x - problem.datafit.b) / m
    scores = VARIABLE_SCORES[rule](g, (A * A).sum(axis=0) / m, A, m)
    expected = np.sort(np.argsort(-scores, kind="stable")[:4])
    np.testing.assert_array_equal(SELECTIONS[rule].variable(state), expected)


def test_variable_gsq_by_hard_thresholding_is_the_best_subset_when_the_bound_is_a_multiple_of_identity():
    # orthonormal columns of one scale: H = c I, so the best tau-subset for g_S^T H_S^-1 g_S
    # (found by enumeration) is the top-tau |g_i|, which the first thresholding step takes
    rng = np.random.default_rng(2)
    Qm, _ = np.linalg.qr(rng.standard_normal((20, 8)))
    problem = least_squares(A=3.0 * Qm, seed=2)
    # one step only: with orthogonal columns each step zeroes its block's gradient exactly
    state = state_after(problem, "variable", steps=1, block_size=3)
    A, m = problem.matrix, problem.m
    H = A.T @ A / m
    g = A.T @ (A @ state.x - problem.datafit.b) / m

    def progress(S):
        S = list(S)
        return g[S] @ np.linalg.solve(H[np.ix_(S, S)], g[S])

    best = max(itertools.combinations(range(8), 3), key=progress)
    np.testing.assert_array_equal(iht_block(state), np.array(best))


def test_variable_gsq_block_guarantees_at_least_the_first_hard_thresholding_step():
    # IHT with step 1/lambda_max(H) decreases q(d) = g^T d + d^T H d / 2 monotonically, so the
    # chosen support S satisfies g_S^T H_S^-1 g_S / 2 = -min_{supp d in S} q(d) >= -q(d_1),
    # with d_1 the first iterate (the tau largest entries of -g / lambda_max)
    problem = least_squares(n=15, seed=3)
    state = state_after(problem, "variable", block_size=4)
    A, m = problem.matrix, problem.m
    H = A.T @ A / m
    g = A.T @ (A @ state.x - problem.datafit.b) / m
    mu = 1 / np.linalg.eigvalsh(H)[-1]
    d1 = np.zeros(15)
    top = np.argsort(-np.abs(g))[:4]
    d1[top] = -mu * g[top]
    S = iht_block(state)
    progress = g[S] @ np.linalg.solve(H[np.ix_(S, S)], g[S]) / 2
    assert progress >= -(g @ d1 + d1 @ H @ d1 / 2) * (1 - 1e-12)


def test_greedy_rules_with_l1_skip_zero_coordinates_at_their_optimum():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((30, 10))
    problem = least_squares(A=A, lam=0.0, seed=4)
    g0 = np.abs(A.T @ (-problem.datafit.b) / 30)
    # lam above |g_i| of the three largest-gradient coordinates' competitors: at x = 0 every
    # coordinate with |g_i| <= lam is optimal and must score 0
    lam = np.sort(g0)[-3]
    problem = CompositeProblem(A, QuadraticDatafit(problem.datafit.b), L1(lam))
    state = BCD(partition="variable", selection="gs", block_size=2).init(problem, problem.x0)
    chosen = SELECTIONS["gs"].variable(state)
    assert np.all(g0[chosen] > lam)
    for rule in ("gs", "gsl", "gsd"):
        assert np.all(g0[SELECTIONS[rule].variable(state)] > lam)


def test_random_and_lipschitz_rules_are_seeded_and_respect_the_probabilities():
    problem = least_squares(n=12)
    state = BCD(partition="order", selection="lipschitz", block_size=3, seed=7).init(problem, problem.x0)
    picks = np.bincount([SELECTIONS["lipschitz"].fixed(state) for _ in range(20000)], minlength=4) / 20000
    p = state.block_lipschitz / state.block_lipschitz.sum()
    # 20,000 draws: the standard error of each frequency is <= 0.0036; 5 sigma
    np.testing.assert_allclose(picks, p, atol=0.018)
    again = BCD(partition="order", selection="lipschitz", block_size=3, seed=7).init(problem, problem.x0)
    assert [SELECTIONS["lipschitz"].fixed(again) for _ in range(20000)][:50] == list(
        np.random.default_rng(7).choice(4, size=50, p=p)
    )


def test_cyclic_goes_through_the_blocks_in_order():
    problem = least_squares(n=10)
    result = BCD(partition="order", block_size=3, max_iter=8, tol=1e-300).solve(problem, callback=lambda info: None)
    assert result.nit == 8
    state = BCD(partition="variable", block_size=3).init(problem, problem.x0)
    windows = []
    for it in range(4):
        state.iteration = it
        windows.append(list(SELECTIONS["cyclic"].variable(state)))
    assert windows == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 1, 9]]


def test_paper_ordering_greedy_variable_blocks_beat_random_after_200_iterations():
    # problem A's recipe at a small size: N(0,1)+1 entries, columns scaled by 10 N(0,1)
    rng = np.random.default_rng(0)
    m, n = 100, 400
    A = (rng.standard_normal((m, n)) + 1) * (10 * rng.standard_normal(n))
    w = np.where(rng.random(n) < 0.1, rng.standard_normal(n), 0.0)
    problem = CompositeProblem(A, QuadraticDatafit(A @ w + rng.standard_normal(m)), L1(0.0))
    gaps = {}
    for selection in ("random", "gsl", "gsq"):
        result = BCD(partition="variable", selection=selection, block_size=5, max_iter=200, seed=0).solve(problem)
        gaps[selection] = result.metrics["fun"]
    assert gaps["gsl"] < gaps["random"] and gaps["gsq"] < gaps["random"]


def test_absolute_row_sums_of_the_bound_matrix_are_exact_in_chunks(monkeypatch):
    monkeypatch.setattr(_objectives, "_GRAM_CHUNK_ENTRIES", 40)  # 4 columns per chunk of 10
    rng = np.random.default_rng(5)
    A = rng.standard_normal((12, 10))
    expected = np.abs(A.T @ A).sum(axis=1)
    # a sum of the same products in another order: agreement to rounding
    np.testing.assert_allclose(_objectives.gram_abs_row_sums(A), expected, rtol=1e-13)
    np.testing.assert_allclose(_objectives.gram_abs_row_sums(sp.csc_array(A)), expected, rtol=1e-13)
    problem = SoftmaxRegression(A, rng.integers(0, 3, 12), lam=0.1, bias=False, n_classes=3)
    objective = BCD().init(problem, problem.x0).objective
    full = objective.bound_matrix(np.arange(problem.n))
    np.testing.assert_allclose(objective.bound_abs_row_sums(), np.abs(full).sum(axis=1), rtol=1e-13)
