"""optkit.saddle_point: preconditioned MINRES on KKT systems against dense and sparse direct solves."""

import time

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import optkit
from optkit.linop import dottest
from optkit.result import Status
from optkit.saddle_point import (
    RHO_TARGET,
    AugmentedLagrangianPreconditioner,
    SaddlePointSolver,
    choose_rho,
    solve_saddle_point,
)

# small dense products: BLAS threads only spin on the busy 2-core machine (an SVD of 512 x 276 took 4 s, not 0.03 s)
pytestmark = pytest.mark.usefixtures("one_blas_thread")

METHODS = ("factor", "nystrom")


def kkt_system(n, m, b_exponents, j_exponents, seed=3):
    """``B = Q diag(logspace(*b_exponents)) Q^T`` and ``J = U diag(logspace(*j_exponents)) V^T`` (random
    orthogonal Q, U, V), the KKT matrix with delta_c = 0 and a Gaussian right-hand side."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    B = Q @ np.diag(np.logspace(*b_exponents, n)) @ Q.T
    B = (B + B.T) / 2
    U = np.linalg.qr(rng.standard_normal((m, m)))[0]
    V = np.linalg.qr(rng.standard_normal((n, m)))[0]
    J = U @ np.diag(np.logspace(*j_exponents, m)) @ V.T
    K = np.block([[B, J.T], [J, np.zeros((m, m))]])
    return B, J, K, rng.standard_normal(n + m)


# cond(K) about 1.5e8 (B's spectrum 1e-4..1e4, J's singular values 10^-2.5..1) and about 55
ILL = kkt_system(80, 30, (-4, 4), (-2.5, 0))
WELL = kkt_system(80, 30, (-1, 1), (0, 0.5))


def test_the_test_systems_have_the_stated_conditioning():
    assert 5e7 < np.linalg.cond(ILL[2]) < 5e8
    assert 10 < np.linalg.cond(WELL[2]) < 1e2


@pytest.mark.parametrize("method", METHODS)
def test_cond_1e8_dense_system_matches_lapack(method):
    B, J, K, b = ILL
    result = solve_saddle_point(B, J, b, rtol=1e-10, preconditioner=method, rng=0)
    assert result.status is Status.CONVERGED and result.preconditioner == method
    assert result.residual <= 1e-10
    np.testing.assert_allclose(np.linalg.norm(K @ result.z - b) / np.linalg.norm(b), result.residual, rtol=1e-6)
    reference = np.linalg.solve(K, b)
    # forward error <= cond(K) * (our residual + LAPACK's, measured 9e-11): cond(K) * 2e-10 relative to ||z||
    bound = np.linalg.cond(K) * 2e-10 * np.linalg.norm(reference)
    np.testing.assert_allclose(result.z, reference, rtol=0, atol=bound)


def test_factor_iterations_do_not_depend_on_the_conditioning():
    counts = [solve_saddle_point(B, J, b, rtol=1e-10, preconditioner="factor").nit for B, J, _, b in (WELL, ILL)]
    # the preconditioned spectrum is +1 and a cluster within 1/11 of -1 whatever cond(K) (measured 6 and 6);
    # unpreconditioned MINRES needs hundreds on the ill-conditioned one
    assert max(counts) <= 8 and abs(counts[0] - counts[1]) <= 2


def newton_system(problem):
    x, y = problem.x0, problem.y0
    B, J = problem.lag_hess(x, y), problem.jac(x)
    return B, J, -np.concatenate([problem.grad(x) + J.T @ y, problem.cons(x)])


@pytest.mark.parametrize("method", ["auto", "nystrom"])
def test_sparse_pde_control_system_matches_spsolve(method):
    B, J, b = newton_system(optkit.get_problem("pde-control:N=16"))
    K = sp.block_array([[B, J.T], [J, None]], format="csc")
    result = solve_saddle_point(B, J, b, rtol=1e-10, preconditioner=method, rng=0)
    assert result.status is Status.CONVERGED and result.residual <= 1e-10
    assert result.preconditioner == ("factor" if method == "auto" else "nystrom")
    # cond(K) about 1e5 here (sigma_min 0.1, ||K|| 1.1e4): 1e-10 residuals give <= 1e-5 relative errors
    np.testing.assert_allclose(result.z, spla.spsolve(K, b), rtol=0, atol=1e-5 * np.linalg.norm(b))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("delta_c", [1e-3, 1.0])
def test_regularised_system_matches_a_dense_solve(method, delta_c):
    B, J, _, b = WELL
    J = np.vstack([J, J[:3]])  # rank deficient: only delta_c > 0 makes K nonsingular
    m = J.shape[0]
    K = np.block([[B, J.T], [J, -delta_c * np.eye(m)]])
    b = np.concatenate([b, np.ones(3)])
    result = solve_saddle_point(B, J, b, rtol=1e-10, delta_c=delta_c, preconditioner=method, rng=0)
    assert result.status is Status.CONVERGED
    reference = np.linalg.solve(K, b)
    bound = np.linalg.cond(K) * 2e-10 * np.linalg.norm(reference)  # as above; cond(K) <= 2e4 here
    np.testing.assert_allclose(result.z, reference, rtol=0, atol=bound)


def test_rank_deficient_jacobian_without_regularisation_is_a_breakdown():
    B, J, _, b = WELL
    J = np.vstack([J, J[:1]])
    result = solve_saddle_point(B, J, np.append(b, 0.0), rtol=1e-8, preconditioner="factor")
    assert result.status is Status.BREAKDOWN and "singular" in result.message
    assert np.all(np.isnan(result.z))


@pytest.mark.parametrize("method", METHODS)
def test_refinement_reuses_the_preconditioner(method):
    B, J, _, b = ILL
    solver = SaddlePointSolver(B, J, preconditioner=method, rng=0)
    coarse = solver.solve(b, rtol=1e-4)
    preconditioner, rank = solver.preconditioner, solver.rank
    fine = solver.solve(b, rtol=1e-10, x0=coarse.z)
    fresh = SaddlePointSolver(B, J, preconditioner=method, rng=0).solve(b, rtol=1e-10)
    assert coarse.success and fine.success and fine.residual <= 1e-10
    assert solver.preconditioner is preconditioner and (rank is None or solver.rank >= rank)
    # the refinement continues from the coarse iterate with the grown preconditioner: fewer iterations than a
    # fresh solve to the tight tolerance (measured: factor 3 against 6; nystrom 5 against 43, at the grown rank)
    assert fine.nit < fresh.nit and fine.nit <= 6
    assert solver.nit == coarse.nit + fine.nit


def indefinite_on_null_space(seed=0):
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((10, 40))
    null_direction = np.linalg.svd(J)[2][-1]
    return np.eye(40) - 2.5 * np.outer(null_direction, null_direction), J, rng.standard_normal(50)


@pytest.mark.parametrize("method", METHODS)
def test_b_indefinite_on_the_null_space_is_a_breakdown_not_a_solution(method):
    B, J, b = indefinite_on_null_space()
    result = solve_saddle_point(B, J, b, rtol=1e-8, preconditioner=method, rng=0)
    assert result.status is Status.BREAKDOWN and "null(J)" in result.message
    assert np.all(np.isnan(result.z)) and result.nit == 0


def test_nystrom_finds_the_indefiniteness_when_its_rank_grows():
    rng = np.random.default_rng(0)
    J = rng.standard_normal((20, 200))
    null_direction = np.linalg.svd(J)[2][-1]
    Q = np.linalg.qr(rng.standard_normal((200, 200)))[0]
    B = Q @ np.diag(np.logspace(-2, 2, 200)) @ Q.T
    B = (B + B.T) / 2
    B -= (null_direction @ B @ null_direction + 1.0) * np.outer(null_direction, null_direction)  # curvature -1
    # a rank-1 sketch sees a positive Rayleigh quotient; MINRES does not converge within a rank's budget, the
    # rank doubles, and a larger sketch shows the negative curvature. (A Nystrom solve that converges before its
    # sketch sees the negative curvature returns the solution of K z = b: only "factor" checks definiteness.)
    result = solve_saddle_point(B, J, rng.standard_normal(220), rtol=1e-8, preconditioner="nystrom", rank=1, rng=0)
    assert result.status is Status.BREAKDOWN and "null(J)" in result.message and result.rank > 1


@pytest.mark.parametrize("method", METHODS)
def test_rho_grows_until_b_rho_is_positive_definite(method):
    rng = np.random.default_rng(1)
    J = rng.standard_normal((10, 40))
    range_basis = np.linalg.svd(J)[2][:10].T
    B = np.eye(40) - 3.0 * range_basis @ range_basis.T  # indefinite, positive definite on null(J)
    b = rng.standard_normal(50)
    result = solve_saddle_point(B, J, b, rtol=1e-10, rho=1e-3, preconditioner=method, rng=0)
    assert result.status is Status.CONVERGED and result.rho >= 1e-2
    K = np.block([[B, J.T], [J, np.zeros((10, 10))]])
    np.testing.assert_allclose(result.z, np.linalg.solve(K, b), rtol=0, atol=1e-8)  # cond(K) about 30


def test_nystrom_rank_doubles_from_a_small_start():
    B, J, _, b = WELL
    result = solve_saddle_point(B, J, b, rtol=1e-10, preconditioner="nystrom", rank=4, rng=0)
    assert result.success and result.rank in (8, 16, 32, 64, 80)


def test_deadline_stops_with_time_limit():
    B, J, _, b = ILL
    x0 = np.full(b.size, 0.5)
    result = solve_saddle_point(B, J, b, rtol=1e-10, x0=x0, deadline=time.perf_counter() - 1.0)
    assert result.status is Status.TIME_LIMIT and result.nit == 0
    np.testing.assert_array_equal(result.z, x0)


@pytest.mark.parametrize("method", METHODS)
def test_rtol_below_the_attainable_accuracy_is_stalled(method):
    B, J, K, b = ILL
    # LAPACK's own residual on this system is 9e-11 (rounding: eps cond(K) ~ 3e-8 at worst): 1e-13 is out of
    # reach; the refinement passes stop near LAPACK's accuracy (measured 6e-11) and say so
    result = solve_saddle_point(B, J, b, rtol=1e-13, preconditioner=method, rng=0)
    assert result.status is Status.STALLED and result.residual < 2e-10 and "stalled" in result.message
    np.testing.assert_allclose(np.linalg.norm(K @ result.z - b) / np.linalg.norm(b), result.residual, rtol=1e-6)


def test_max_iter_is_a_status():
    B, J, _, b = ILL
    result = solve_saddle_point(B, J, b, rtol=1e-12, preconditioner="factor", max_iter=2)
    assert result.status is Status.MAX_ITER and result.nit == 2 and result.residual > 1e-12


def test_scale_rule_on_a_system_with_known_norms():
    B = 2.0 * np.eye(6)
    J = np.zeros((2, 6))
    J[0, 0], J[1, 1] = 1.0, 0.1  # ||J||^2 = 1, sigma_min(J)^2 = 0.01
    # RHO_TARGET / (sigma_min^2 / ||B|| + delta_c); power iterations are exact on these diagonal matrices
    np.testing.assert_allclose(choose_rho(B, J, rng=0), RHO_TARGET / (0.01 / 2.0), rtol=1e-12)
    np.testing.assert_allclose(choose_rho(B, J, 0.5, rng=0), RHO_TARGET / (0.01 / 2.0 + 0.5), rtol=1e-12)
    np.testing.assert_allclose(choose_rho(sp.csr_array(B), sp.csr_array(J), rng=0), 2000.0, rtol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_preconditioner_applies_the_block_inverse(method):
    B, J, _, _ = WELL
    rho, delta_c = 3.0, 0.1
    weight = 1 / rho + delta_c
    P = AugmentedLagrangianPreconditioner(B, J, rho, delta_c=delta_c, method=method, rank=80, rng=0)
    assert dottest(P)
    v = np.random.default_rng(2).standard_normal(110)
    expected = np.concatenate([np.linalg.solve(B + J.T @ J / weight, v[:80]), v[80:] / weight])
    # Nystrom at rank n is B_rho up to its stabilising shift sqrt(n) eps ||Y||, far below 1e-8 relative
    np.testing.assert_allclose(P @ v, expected, rtol=1e-8)
    np.testing.assert_allclose(P @ np.stack([v, 2 * v], axis=1), np.stack([expected, 2 * expected], 1), rtol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"B": np.ones((3, 4))}, ValueError, "B must be square"),
        ({"J": np.ones((2, 5))}, ValueError, r"J must have shape \(m, 4\)"),
        ({"B": np.triu(np.ones((4, 4)))}, ValueError, "B must be symmetric"),
        ({"B": np.full((4, 4), np.nan)}, ValueError, "B contains NaN"),
        ({"J": "jacobian"}, TypeError, "J must be a numpy array"),
        ({"b": np.ones(5)}, ValueError, r"b must have shape \(6,\)"),
        ({"delta_c": -1.0}, ValueError, "delta_c must be a finite number >= 0"),
        ({"preconditioner": "ilu"}, ValueError, "preconditioner must be one of"),
        ({"rtol": 0.0}, ValueError, "rtol must be a positive"),
        ({"rho": -2.0}, ValueError, "rho must be a positive"),
        ({"rank": 0}, ValueError, "rank must be an integer >= 1"),
        ({"max_iter": -1}, ValueError, "max_iter must be an integer >= 0"),
        ({"x0": np.ones(3)}, ValueError, r"x0 must have shape \(6,\)"),
    ],
)
def test_bad_input_raises_a_clear_error(kwargs, error, match):
    args = {"B": np.eye(4), "J": np.ones((2, 4)), "b": np.ones(6), "rtol": 1e-8} | kwargs
    with pytest.raises(error, match=match):
        solve_saddle_point(args.pop("B"), args.pop("J"), args.pop("b"), **args)


def test_zero_right_hand_side_gives_zero():
    B, J, _, b = WELL
    result = solve_saddle_point(B, J, np.zeros_like(b), rtol=1e-8)
    assert result.success and result.nit == 0 and not np.any(result.z)
