"""Poisson problems: matrices against hand-built stencils, spectra, right-hand sides, errors."""

import numpy as np
import pytest
import scipy.sparse as sp

import optkit
from problems.linear import _assemble, poisson_matrix


def dense_stencil(n: int, dim: int) -> np.ndarray:
    """The (2 dim + 1)-point stencil written out entry by entry, C-order numbering."""
    shape = (n,) * dim
    N = n**dim
    A = np.zeros((N, N))
    for i in range(N):
        idx = np.unravel_index(i, shape)
        A[i, i] = 2 * dim
        for axis in range(dim):
            for step in (-1, 1):
                nb = list(idx)
                nb[axis] += step
                if 0 <= nb[axis] < n:
                    A[i, np.ravel_multi_index(nb, shape)] = -1
    return A


def test_poisson_2d_matches_hand_built_3x3():
    A = optkit.get_problem("linear/poisson-2d", n=3).matrix.toarray()
    expected = np.array(
        [
            [4, -1, 0, -1, 0, 0, 0, 0, 0],
            [-1, 4, -1, 0, -1, 0, 0, 0, 0],
            [0, -1, 4, 0, 0, -1, 0, 0, 0],
            [-1, 0, 0, 4, -1, 0, -1, 0, 0],
            [0, -1, 0, -1, 4, -1, 0, -1, 0],
            [0, 0, -1, 0, -1, 4, 0, 0, -1],
            [0, 0, 0, -1, 0, 0, 4, -1, 0],
            [0, 0, 0, 0, -1, 0, -1, 4, -1],
            [0, 0, 0, 0, 0, -1, 0, -1, 4],
        ],
        dtype=float,
    )
    np.testing.assert_array_equal(A, expected)
    np.testing.assert_array_equal(A, dense_stencil(3, 2))


def test_poisson_3d_matches_hand_built_2x2x2():
    A = optkit.get_problem("linear/poisson-3d", n=2).matrix.toarray()
    # on a 2x2x2 grid every cell has exactly 3 neighbours: the cube graph
    expected = 6 * np.eye(8)
    for i in range(8):
        for bit in (1, 2, 4):
            expected[i, i ^ bit] = -1
    np.testing.assert_array_equal(A, expected)
    np.testing.assert_array_equal(poisson_matrix(4, 3).toarray(), dense_stencil(4, 3))


@pytest.mark.parametrize("dim,n", [(2, 7), (3, 5)])
def test_constant_spectrum_closed_form(dim, n):
    A = poisson_matrix(n, dim).toarray()
    np.testing.assert_array_equal(A, A.T)
    eig = np.linalg.eigvalsh(A)
    h = np.pi / (n + 1)
    np.testing.assert_allclose(eig[0], 2 * dim * (1 - np.cos(h)), rtol=1e-12)
    np.testing.assert_allclose(eig[-1], 2 * dim * (1 + np.cos(h)), rtol=1e-12)
    # all eigenvalues: sums of 2 - 2 cos(k h) over the dimensions
    one_d = 2 - 2 * np.cos(h * np.arange(1, n + 1))
    grids = np.meshgrid(*([one_d] * dim), indexing="ij")
    np.testing.assert_allclose(eig, np.sort(sum(grids).ravel()), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("coefficient", ["variable", "random"])
@pytest.mark.parametrize("dim,n", [(2, 9), (3, 4)])
def test_variable_coefficient_spd_and_stencil_pattern(coefficient, dim, n):
    A = poisson_matrix(n, dim, coefficient, seed=3)
    dense = A.toarray()
    np.testing.assert_array_equal(dense, dense.T)
    assert np.linalg.eigvalsh(dense)[0] > 0
    # same sparsity as the constant stencil, negative off-diagonals
    pattern = dense_stencil(n, dim) != 0
    np.testing.assert_array_equal(dense != 0, pattern)
    off = dense[pattern & ~np.eye(n**dim, dtype=bool)]
    assert (off < 0).all()
    # diagonal = sum of |off-diagonals| + the boundary faces: strictly dominant only at the boundary
    slack = dense.diagonal() - np.abs(dense - np.diag(dense.diagonal())).sum(axis=1)
    interior = np.all((np.indices((n,) * dim).reshape(dim, -1) % (n - 1)) != 0, axis=0)
    np.testing.assert_allclose(slack[interior], 0.0, atol=1e-12)
    assert (slack[~interior] > 0).all()


def test_unit_face_coefficients_reproduce_the_stencil():
    for dim, n in [(2, 5), (3, 3)]:
        faces = [np.ones(tuple(n + 1 if d == axis else n for d in range(dim))) for axis in range(dim)]
        np.testing.assert_array_equal(_assemble(n, faces).toarray(), dense_stencil(n, dim))


def test_random_coefficient_is_seeded():
    a = poisson_matrix(6, 2, "random", seed=1)
    b = poisson_matrix(6, 2, "random", seed=1)
    c = poisson_matrix(6, 2, "random", seed=2)
    np.testing.assert_array_equal(a.toarray(), b.toarray())
    assert np.abs(a - c).max() > 0.1


def test_problem_fields_and_tags():
    p = optkit.get_problem("linear/poisson-2d:n=16,rhs=random,seed=4")
    assert p.name == "linear/poisson-2d"
    assert {"symmetric", "psd", "matrix"} <= p.capabilities
    assert p.matrix.format == "csr" and p.matrix.has_sorted_indices
    assert p.n == 256 and p.metadata["grid"] == (16, 16) and p.metadata["stencil"] == "5-point"
    np.testing.assert_array_equal(p.x0, np.zeros(256))
    np.testing.assert_array_equal(p.b, optkit.get_problem("linear/poisson-2d", n=16, rhs="random", seed=4).b)
    assert np.abs(p.b - optkit.get_problem("linear/poisson-2d", n=16, rhs="random", seed=5).b).max() > 0.1
    q = optkit.get_problem("linear/poisson-3d", n=4)
    assert q.metadata["stencil"] == "7-point" and q.n == 64
    np.testing.assert_array_equal(q.b, np.ones(64))


@pytest.mark.parametrize("name", ["linear/poisson-2d", "linear/poisson-3d"])
def test_manufactured_solution(name):
    p = optkit.get_problem(name, n=6, rhs="manufactured", coefficient="variable", seed=2)
    x_true = p.metadata["x_true"]
    np.testing.assert_allclose(p.matrix @ x_true, p.b, rtol=1e-14)
    assert p.evaluate(x_true)["error"] == 0.0
    np.testing.assert_allclose(p.evaluate(np.zeros(p.n))["residual"], 1.0)


def test_smooth_rhs_approximates_the_continuous_solution():
    n = 63
    p = optkit.get_problem("linear/poisson-2d", n=n, rhs="smooth")
    x = sp.linalg.spsolve(p.matrix.tocsc(), p.b)
    h = 1 / (n + 1)
    g = h * np.arange(1, n + 1)
    u = np.outer(np.sin(np.pi * g), np.sin(np.pi * g)).ravel()
    # second-order discretisation error
    np.testing.assert_allclose(x, u, atol=2 * h**2)


def test_float32():
    p = optkit.get_problem("linear/poisson-2d", n=4, dtype="float32")
    assert p.matrix.dtype == np.float32 and p.b.dtype == np.float32


@pytest.mark.parametrize(
    "params,word",
    [
        ({"n": 0}, "n"),
        ({"n": -3}, "n"),
        ({"n": 2.5}, "n"),
        ({"coefficient": "wavy"}, "coefficient"),
        ({"rhs": "zeros"}, "rhs"),
        ({"seed": -1}, "seed"),
        ({"dtype": "int8"}, "dtype"),
    ],
)
def test_bad_parameters_name_the_parameter(params, word):
    with pytest.raises(ValueError, match=rf"^{word} must"):
        optkit.get_problem("linear/poisson-2d", **params)


def test_unknown_parameter():
    with pytest.raises(TypeError, match="'size'"):
        optkit.get_problem("linear/poisson-3d", size=4)


def test_suites():
    assert optkit.get_suite("poisson") == ["linear/poisson-2d:n=512", "linear/poisson-3d:n=64"]
    demo = optkit.get_suite("demo")
    for spec in ["linear/poisson-2d:n=128", "linear/poisson-2d:n=256", "linear/poisson-3d:n=24"]:
        assert spec in demo
