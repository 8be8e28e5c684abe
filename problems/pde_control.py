"""A distributed-control quadratic program on the Poisson equation (Hong, Na, Mahoney, Kolar, ICML 2023).

Problem ``pde-control`` (parameter ``N``, default 32): on the square ``[-1, 1]^2`` with an
N x N interior grid, spacing ``h = 2 / (N + 1)`` and zero Dirichlet boundary values, find the
state ``w`` and control ``z`` (both N^2 values) minimising::

    f(w, z) = 1/2 ||w - w_true||^2 + (0.1 / 2) ||z||^2
    s.t.      c(w, z) = L_h w + z = 0

with ``L_h`` the 5-point Laplacian divided by h^2, with the sign of the Laplacian itself:
``(L_h w)(i, j) = (w(i-1, j) + w(i+1, j) + w(i, j-1) + w(i, j+1) - 4 w(i, j)) / h^2`` (negative
definite; neighbours outside the grid are 0). This is the reference code's
``(5-point Laplacian of w) / h^2 + z = 0``, i.e. ``-Delta w = z``. The target is
``w_true(i, j) = sin(4 + (0.1 / sqrt(15)) (i - (N + 1) / 2)) + cos(3 + (0.1 / sqrt(15)) (j - (N + 1) / 2))``
for ``i, j = 1..N``.

Unknowns ``x = [w; z]`` (n = 2 N^2, m = N^2), each grid function stored with ``i`` varying
fastest: entry ``(i - 1) + (j - 1) N`` holds grid point ``(i, j)`` (the reference code's
column-major layout). The constraints are linear, so the Jacobian ``[L_h, I]`` is a constant
sparse matrix and the Lagrangian Hessian is ``diag(I, 0.1 I)`` (times ``obj_factor``).
``x0 = 0``, ``y0 = 0``. Being a convex QP with a full-rank Jacobian, its KKT system has one
solution, found by one sparse direct solve: ``metadata["f_opt"]``, ``"x_opt"``, ``"y_opt"``.

Suite ``pde-control``: N = 32, 64, 128 (n = 2048, 8192, 32768).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from optkit.constrained_problem import EqualityConstrainedProblem
from optkit.registry import register_problem, register_suite
from optkit.validation import check_int

__all__ = ["CONTROL_WEIGHT", "laplacian_2d", "pde_control", "target_state"]

#: The weight of the control term: ``f = 1/2 ||w - w_true||^2 + CONTROL_WEIGHT / 2 ||z||^2``.
CONTROL_WEIGHT = 0.1


def laplacian_2d(N: int) -> sp.csr_array:
    """The 5-point Laplacian on the N x N interior grid of ``[-1, 1]^2``, divided by ``h^2``.

    Parameters
    ----------
    N : int
        Interior points per side; ``h = 2 / (N + 1)``, zero Dirichlet boundary.

    Returns
    -------
    scipy.sparse.csr_array of shape (N^2, N^2)
        ``(T (x) I + I (x) T) / h^2`` with ``T = tridiag(1, -2, 1)``: diagonal ``-4 / h^2``,
        ``1 / h^2`` for each grid neighbour (symmetric, negative definite).
    """
    h = 2.0 / (N + 1)
    T = sp.diags_array([np.ones(N - 1), -2.0 * np.ones(N), np.ones(N - 1)], offsets=[-1, 0, 1])
    eye = sp.eye_array(N)
    return sp.csr_array((sp.kron(T, eye) + sp.kron(eye, T)) / h**2)


def target_state(N: int) -> np.ndarray:
    """``w_true`` on the N x N grid, shape (N^2,), ``i`` fastest (entry ``(i - 1) + (j - 1) N``).

    ``w_true(i, j) = sin(4 + (0.1 / sqrt(15)) (i - (N + 1) / 2)) + cos(3 + (0.1 / sqrt(15)) (j - (N + 1) / 2))``.
    """
    t = (0.1 / np.sqrt(15.0)) * (np.arange(1, N + 1) - (N + 1) / 2)
    grid = np.sin(4.0 + t)[:, None] + np.cos(3.0 + t)[None, :]  # grid[i - 1, j - 1]
    return grid.ravel(order="F")


@register_problem("pde-control")
def pde_control(N: int = 32) -> EqualityConstrainedProblem:
    """Poisson distributed control: min 1/2||w - w_true||^2 + 0.05||z||^2 s.t. L_h w + z = 0 on an N x N grid.

    Parameters
    ----------
    N : int
        Interior grid points per side (``>= 1``): n = 2 N^2 unknowns ``[w; z]``, m = N^2
        constraints. See the module docstring for the grid, the sign of ``L_h`` and the layout.

    Returns
    -------
    EqualityConstrainedProblem
        Jacobian: the constant ``scipy.sparse.csr_array`` ``[L_h, I]`` of shape (N^2, 2 N^2);
        ``lag_hess``: the sparse ``diag(obj_factor I, obj_factor 0.1 I)``. ``metadata``: ``N``,
        ``h``, ``n``, ``m``, and the exact solution ``f_opt``, ``x_opt`` (n,), ``y_opt`` (m,).
    """
    N = check_int("N", N, 1)
    size = N * N
    L = laplacian_2d(N)
    jac = sp.csr_array(sp.hstack([L, sp.eye_array(size)], format="csr"))
    w_true = target_state(N)
    weights = np.concatenate([np.ones(size), np.full(size, CONTROL_WEIGHT)])
    hess = sp.diags_array(weights, format="csr")

    def fun(x: np.ndarray) -> float:
        r = x[:size] - w_true
        z = x[size:]
        return float(0.5 * (r @ r) + 0.5 * CONTROL_WEIGHT * (z @ z))

    def grad(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x[:size] - w_true, CONTROL_WEIGHT * x[size:]])

    def cons(x: np.ndarray) -> np.ndarray:
        return jac @ x

    def jacobian(x: np.ndarray) -> sp.csr_array:
        return jac

    def lag_hess(x: np.ndarray, y: np.ndarray, obj_factor: float = 1.0) -> sp.csr_array:
        return obj_factor * hess

    def lag_hvp(x: np.ndarray, y: np.ndarray, v: np.ndarray, obj_factor: float = 1.0) -> np.ndarray:
        return obj_factor * weights * v

    # KKT of the QP: [[H, J^T], [J, 0]] [x; y] = [[w_true; 0]; 0]
    kkt = sp.block_array([[hess, jac.T], [jac, None]], format="csc")
    rhs = np.concatenate([w_true, np.zeros(2 * size)])
    sol = spla.splu(kkt).solve(rhs)
    x_opt, y_opt = sol[: 2 * size], sol[2 * size :]
    metadata = {
        "source": "Hong, Na, Mahoney, Kolar (ICML 2023), PDE-constrained problem",
        "N": N,
        "h": 2.0 / (N + 1),
        "n": 2 * size,
        "m": size,
        "f_opt": fun(x_opt),
        "x_opt": x_opt,
        "y_opt": y_opt,
    }
    return EqualityConstrainedProblem(
        fun, grad, cons, jacobian, np.zeros(2 * size), y0=np.zeros(size),
        lag_hess=lag_hess, lag_hvp=lag_hvp, name="pde-control", metadata=metadata,
    )


register_suite("pde-control-sizes", [f"pde-control:N={N}" for N in (32, 64, 128)])
