"""The PDE-control quadratic program (problems/pde_control.py): layout, stencil sign, derivatives, exact optimum."""

import numpy as np
import pytest
import scipy.sparse as sp

import optkit
from optkit.constrained_problem import EqualityConstrainedProblem, kkt_residual
from problems.pde_control import laplacian_2d, target_state


def _stencil_matrix(N):
    """(w(i-1,j) + w(i+1,j) + w(i,j-1) + w(i,j+1) - 4 w(i,j)) / h^2, written out point by point."""
    h = 2.0 / (N + 1)
    L = np.zeros((N * N, N * N))
    k = lambda i, j: (i - 1) + (j - 1) * N
    for i in range(1, N + 1):
        for j in range(1, N + 1):
            L[k(i, j), k(i, j)] = -4.0 / h**2
            for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                if 1 <= a <= N and 1 <= b <= N:
                    L[k(i, j), k(a, b)] = 1.0 / h**2
    return L


def _w_true(N):
    out = np.empty(N * N)
    s = 0.1 / np.sqrt(15)
    for i in range(1, N + 1):
        for j in range(1, N + 1):
            out[(i - 1) + (j - 1) * N] = np.sin(4 + s * (i - (N + 1) / 2)) + np.cos(3 + s * (j - (N + 1) / 2))
    return out


def _central(fun, x, eps=1e-6):
    cols = [(np.asarray(fun(x + eps * e)) - np.asarray(fun(x - eps * e))) / (2 * eps) for e in np.eye(x.size)]
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize("N", [1, 3, 5])
def test_sizes_start_and_metadata(N):
    p = optkit.get_problem("pde-control", N=N)
    assert isinstance(p, EqualityConstrainedProblem) and p.name == "pde-control"
    assert (p.n, p.m) == (2 * N * N, N * N)
    assert (p.metadata["n"], p.metadata["m"], p.metadata["N"]) == (2 * N * N, N * N, N)
    np.testing.assert_allclose(p.metadata["h"], 2 / (N + 1), rtol=1e-15)
    np.testing.assert_array_equal(p.x0, np.zeros(2 * N * N))
    np.testing.assert_array_equal(p.y0, np.zeros(N * N))


def test_laplacian_sign_scaling_and_layout():
    N = 3
    np.testing.assert_allclose(laplacian_2d(N).toarray(), _stencil_matrix(N), rtol=1e-15)
    p = optkit.get_problem("pde-control", N=N)
    w = np.zeros(9)
    w[(2 - 1) + (2 - 1) * N] = 1.0  # the centre point (2, 2); h = 1/2
    c = p.cons(np.concatenate([w, np.zeros(9)]))
    expected = np.zeros(9)
    expected[4] = -16.0
    expected[[1, 3, 5, 7]] = 4.0  # (1,2), (2,1), (3,2), (2,3)
    np.testing.assert_allclose(c, expected, rtol=1e-15)
    z = np.arange(9.0)
    np.testing.assert_allclose(p.cons(np.concatenate([np.zeros(9), z])), z, rtol=1e-15)  # + z


def test_target_and_objective():
    N = 4
    np.testing.assert_allclose(target_state(N), _w_true(N), rtol=1e-15)
    p = optkit.get_problem("pde-control", N=N)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(32)
    w, z = x[:16], x[16:]
    np.testing.assert_allclose(p.fun(x), 0.5 * np.sum((w - _w_true(N)) ** 2) + 0.05 * np.sum(z**2), rtol=1e-14)
    np.testing.assert_allclose(p.grad(x), _central(p.fun, x), rtol=1e-7, atol=1e-9)


def test_derivatives_against_finite_differences_n3():
    p = optkit.get_problem("pde-control", N=3)
    rng = np.random.default_rng(1)
    x, y, v = rng.standard_normal(18), rng.standard_normal(9), rng.standard_normal(18)
    J = p.jac(x)
    assert isinstance(J, sp.csr_array) and J.shape == (9, 18)
    np.testing.assert_allclose(J.toarray(), _central(p.cons, x), rtol=1e-8, atol=1e-6)
    np.testing.assert_allclose(J.toarray(), np.hstack([_stencil_matrix(3), np.eye(9)]), rtol=1e-15)
    for s in (1.0, 0.25, 0.0):
        H = p.lag_hess(x, y, s)
        assert sp.issparse(H) and H.shape == (18, 18)
        lag_grad = lambda x, s=s: s * p.grad(x) + p.jac(x).T @ y
        np.testing.assert_allclose(H.toarray(), _central(lag_grad, x), rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(H.diagonal(), s * np.r_[np.ones(9), np.full(9, 0.1)], rtol=1e-15)
        np.testing.assert_allclose(p.lag_hvp(x, y, v, s), H @ v, rtol=1e-15)


def test_f_opt_matches_cvxpy_n4():
    cp = pytest.importorskip("cvxpy")
    N = 4
    p = optkit.get_problem("pde-control", N=N)
    w, z = cp.Variable(N * N), cp.Variable(N * N)
    objective = 0.5 * cp.sum_squares(w - _w_true(N)) + 0.05 * cp.sum_squares(z)
    qp = cp.Problem(cp.Minimize(objective), [_stencil_matrix(N) @ w + z == 0])
    qp.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert qp.status == cp.OPTIMAL
    np.testing.assert_allclose(p.metadata["f_opt"], qp.value, rtol=1e-7)
    np.testing.assert_allclose(p.metadata["x_opt"], np.concatenate([w.value, z.value]), atol=1e-9)


@pytest.mark.parametrize("N", [4, 32])
def test_kkt_residual_at_the_solution(N):
    p = optkit.get_problem("pde-control", N=N)
    x, y = p.metadata["x_opt"], p.metadata["y_opt"]
    res = kkt_residual(p.grad(x), p.jac(x), p.cons(x), y)
    assert res["kkt"] <= 1e-10
    measures = p.evaluate(x)  # least-squares multipliers
    assert measures["kkt"] <= 1e-9
    np.testing.assert_allclose(measures["f_gap"], 0.0, atol=1e-12 * p.metadata["f_opt"])
    assert p.evaluate(p.x0)["f_gap"] > 1.0  # the start is not optimal


def test_suite_and_bad_n():
    assert optkit.registry.get_suite("pde-control-sizes") == ["pde-control:N=32", "pde-control:N=64", "pde-control:N=128"]
    with pytest.raises(ValueError, match="N must be an integer >= 1"):
        optkit.get_problem("pde-control", N=0)
