"""Linear systems from the Poisson equation on the unit square and cube.

``-div(k grad u) = f`` with homogeneous Dirichlet boundary conditions, discretised by
cell-centred finite volumes on ``n`` interior points per dimension (spacing
``h = 1 / (n + 1)``). The matrix is scaled by ``h**2`` so that its diagonal is O(1):
for ``k = 1`` it is the plain 5-point (2-D) or 7-point (3-D) stencil with 4 or 6 on the
diagonal and -1 off it. Unknowns are numbered in C order (the last grid index fastest).

Registered problems: ``linear/poisson-2d``, ``linear/poisson-3d``; suites ``poisson``
(2-D 512, 3-D 64) and entries of ``demo``.
"""

from __future__ import annotations


import numpy as np
import scipy.sparse as sp

from optkit.problem import LinearSystemProblem
from optkit.registry import register_problem, register_suite
from optkit.validation import check_choice, check_int

__all__ = ["poisson_2d", "poisson_3d", "poisson_matrix", "poisson_problem"]

COEFFICIENTS = ("constant", "variable", "random")
RHS = ("ones", "random", "smooth", "manufactured")


def _second_difference(n: int) -> sp.csr_matrix:
    """tridiag(-1, 2, -1) of size n."""
    e = np.ones(n)
    return sp.diags([-e[:-1], 2 * e, -e[:-1]], [-1, 0, 1], format="csr")


def _constant_matrix(n: int, dim: int) -> sp.csr_matrix:
    """``sum_d I x ... x T x ... x I``: the 2*dim+1 point stencil with k = 1."""
    T = _second_difference(n)
    I = sp.identity(n, format="csr")
    A = sp.csr_matrix((n**dim, n**dim))
    for axis in range(dim):
        factors = [T if d == axis else I for d in range(dim)]
        term = factors[0]
        for f in factors[1:]:
            term = sp.kron(term, f, format="csr")
        A = A + term
    return sp.csr_matrix(A)


def _face_coefficients(n: int, dim: int, coefficient: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Diffusion coefficient on the faces normal to each axis: ``dim`` arrays, the one for
    ``axis`` having ``n + 1`` entries along ``axis`` (the two outer ones on the boundary)
    and ``n`` along the others.

    ``"variable"``: the smooth field ``k(x) = exp(sum_d sin(2 pi x_d) * cos(pi x_{d+1}))``
    (values in about [e^-dim, e^dim]) evaluated at face centres. ``"random"``: an i.i.d.
    log-normal value (sigma = 1) per cell, combined across a face by the harmonic mean (the
    finite-volume flux-continuity rule); a boundary face takes its cell's value.
    """
    h = 1.0 / (n + 1)
    nodes = h * np.arange(1, n + 1)
    faces = h * (np.arange(n + 1) + 0.5)
    out = []
    if coefficient == "variable":
        for axis in range(dim):
            coords = np.meshgrid(*[faces if d == axis else nodes for d in range(dim)], indexing="ij")
            expo = sum(np.sin(2 * np.pi * coords[d]) * np.cos(np.pi * coords[(d + 1) % dim]) for d in range(dim))
            out.append(np.exp(expo))
        return out
    cell = np.exp(rng.standard_normal((n,) * dim))
    for axis in range(dim):
        inner = 2.0 / (1.0 / np.take(cell, range(n - 1), axis=axis) + 1.0 / np.take(cell, range(1, n), axis=axis))
        first = np.take(cell, [0], axis=axis)
        last = np.take(cell, [n - 1], axis=axis)
        out.append(np.concatenate([first, inner, last], axis=axis))
    return out


def _assemble(n: int, face_k: list[np.ndarray]) -> sp.csr_matrix:
    """Symmetric finite-volume matrix from face coefficients (see :func:`_face_coefficients`):
    ``A[i, i] = sum of the coefficients on the faces of cell i``, ``A[i, j] = -k_face`` for
    neighbours ``i, j`` sharing a face."""
    dim = len(face_k)
    index = np.arange(n**dim).reshape((n,) * dim)
    diag = np.zeros((n,) * dim)
    rows, cols, vals = [], [], []
    for axis, k in enumerate(face_k):
        lo = [slice(None)] * dim
        hi = [slice(None)] * dim
        lo[axis], hi[axis] = slice(0, n), slice(1, n + 1)
        diag += k[tuple(lo)] + k[tuple(hi)]
        left = [slice(None)] * dim
        right = [slice(None)] * dim
        left[axis], right[axis] = slice(0, n - 1), slice(1, n)
        inner = [slice(None)] * dim
        inner[axis] = slice(1, n)
        i, j, v = index[tuple(left)].ravel(), index[tuple(right)].ravel(), -k[tuple(inner)].ravel()
        rows += [i, j]
        cols += [j, i]
        vals += [v, v]
    rows.append(index.ravel())
    cols.append(index.ravel())
    vals.append(diag.ravel())
    N = n**dim
    A = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(N, N))
    A = A.tocsr()
    A.sort_indices()
    return A


def poisson_matrix(n: int, dim: int = 2, coefficient: str = "constant", seed: int = 0) -> sp.csr_matrix:
    """The ``h**2``-scaled finite-volume Poisson matrix on an ``n**dim`` interior grid.

    Parameters
    ----------
    n : int
        Interior points per dimension (``n >= 1``); the matrix is ``n**dim`` square.
    dim : {2, 3}
    coefficient : {"constant", "variable", "random"}
        ``k = 1`` (the plain stencil, assembled by Kronecker sums), a smooth positive field,
        or a seeded log-normal field per cell (see :func:`_face_coefficients`).
    seed : int
        Seed of the ``"random"`` field.

    Returns
    -------
    scipy.sparse.csr_matrix
        Symmetric positive definite, float64, sorted indices.
    """
    n = check_int("n", n, 1)
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    check_choice("coefficient", coefficient, COEFFICIENTS)
    if coefficient == "constant":
        A = _constant_matrix(n, dim)
        A.sort_indices()
        return A
    rng = np.random.default_rng(seed)
    return _assemble(n, _face_coefficients(n, dim, coefficient, rng))


def _rhs(A: sp.csr_matrix, n: int, dim: int, rhs: str, rng: np.random.Generator):
    N = A.shape[0]
    if rhs == "ones":
        return np.ones(N), None
    if rhs == "random":
        return rng.standard_normal(N), None
    if rhs == "smooth":
        # h**2 * f for f = dim * pi**2 * prod_d sin(pi x_d): the continuous solution is
        # prod_d sin(pi x_d) when k = 1.
        h = 1.0 / (n + 1)
        x = h * np.arange(1, n + 1)
        grids = np.meshgrid(*([x] * dim), indexing="ij")
        u = np.prod([np.sin(np.pi * g) for g in grids], axis=0).ravel()
        return h**2 * dim * np.pi**2 * u, None
    x_true = rng.standard_normal(N)
    return A @ x_true, x_true


def poisson_problem(
    n: int,
    dim: int,
    *,
    coefficient: str = "constant",
    rhs: str = "ones",
    seed: int = 0,
    dtype: str = "float64",
) -> LinearSystemProblem:
    """A Poisson :class:`~optkit.problem.LinearSystemProblem` (see the module docstring).

    Parameters
    ----------
    n : int
        Interior grid points per dimension; ``n**dim`` unknowns.
    dim : {2, 3}
    coefficient : {"constant", "variable", "random"}
        See :func:`poisson_matrix`.
    rhs : {"ones", "random", "smooth", "manufactured"}
        ``b = 1``; ``b`` standard normal; ``b = h**2 f`` for a smooth ``f``; or a seeded
        standard normal ``x_true`` with ``b = A x_true`` (``metadata["x_true"]``).
    seed : int
        Seeds the random right-hand side, ``x_true`` and the ``"random"`` coefficient.
    dtype : {"float64", "float32"}

    Returns
    -------
    LinearSystemProblem
        ``A`` a scipy CSR matrix (also ``problem.matrix``), tagged ``symmetric`` and ``psd``;
        ``x0 = 0``. ``metadata`` holds ``grid`` (the shape), ``n_grid``, ``dim``,
        ``stencil``, ``h``, ``scaling`` (``"h^2"``), ``coefficient``, ``rhs``, ``seed`` and,
        for ``rhs="manufactured"``, ``x_true``.
    """
    n = check_int("n", n, 1)
    check_choice("coefficient", coefficient, COEFFICIENTS)
    check_choice("rhs", rhs, RHS)
    seed = check_int("seed", seed, 0)
    check_choice("dtype", dtype, ("float64", "float32"))
    rng = np.random.default_rng(seed)
    A = poisson_matrix(n, dim, coefficient, seed=seed)
    b, x_true = _rhs(A, n, dim, rhs, np.random.default_rng(rng.integers(2**32)))
    A = A.astype(dtype)
    metadata = {
        "source": f"finite-volume Poisson equation on the unit {'square' if dim == 2 else 'cube'}, Dirichlet",
        "grid": (n,) * dim,
        "n_grid": n,
        "dim": dim,
        "stencil": f"{2 * dim + 1}-point",
        "h": 1.0 / (n + 1),
        "scaling": "h^2",
        "coefficient": coefficient,
        "rhs": rhs,
        "seed": seed,
    }
    if x_true is not None:
        metadata["x_true"] = x_true.astype(dtype)
    return LinearSystemProblem(
        A, b.astype(dtype), tags=("symmetric", "psd"), name=f"linear/poisson-{dim}d", metadata=metadata
    )


@register_problem("linear/poisson-2d")
def poisson_2d(
    n: int = 64, coefficient: str = "constant", rhs: str = "ones", seed: int = 0, dtype: str = "float64"
) -> LinearSystemProblem:
    """2-D Poisson, 5-point stencil, ``n*n`` unknowns (see :func:`poisson_problem`)."""
    return poisson_problem(n, 2, coefficient=coefficient, rhs=rhs, seed=seed, dtype=dtype)


@register_problem("linear/poisson-3d")
def poisson_3d(
    n: int = 16, coefficient: str = "constant", rhs: str = "ones", seed: int = 0, dtype: str = "float64"
) -> LinearSystemProblem:
    """3-D Poisson, 7-point stencil, ``n**3`` unknowns (see :func:`poisson_problem`)."""
    return poisson_problem(n, 3, coefficient=coefficient, rhs=rhs, seed=seed, dtype=dtype)


register_suite("poisson", ["linear/poisson-2d:n=512", "linear/poisson-3d:n=64"])
register_suite(
    "demo",
    ["linear/poisson-2d:n=128", "linear/poisson-2d:n=256", "linear/poisson-3d:n=24"],
    extend=True,
)
