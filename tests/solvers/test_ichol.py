"""IC(0): against dense computations, its pattern, the preconditioner, breakdown handling."""

import numpy as np
import pytest
import scipy.sparse as sp

import optkit
from optkit.linop import dottest
from solvers.linear.ichol import IcholBreakdown, ichol

# SPD (smallest eigenvalue 0.08) but not an M-matrix: IC(0) meets a negative pivot
BREAKS_IC0 = np.array(
    [
        [1.0, 0.65, 0.15, 0.65],
        [0.65, 1.0, 0.65, 0.0],
        [0.15, 0.65, 1.0, -0.45],
        [0.65, 0.0, -0.45, 1.0],
    ]
)


def dense_ic0(A: np.ndarray) -> np.ndarray:
    """Textbook IC(0) on a dense array: Cholesky with every update outside the pattern dropped."""
    n = A.shape[0]
    pattern = np.tril(A != 0)
    L = np.tril(A).astype(float)
    for k in range(n):
        L[k, k] = np.sqrt(L[k, k])
        for i in range(k + 1, n):
            if pattern[i, k]:
                L[i, k] /= L[k, k]
        for j in range(k + 1, n):
            for i in range(j, n):
                if pattern[i, j]:
                    L[i, j] -= L[i, k] * L[j, k]
    return L


def test_tridiagonal_ic0_is_the_exact_cholesky():
    rng = np.random.default_rng(0)
    n = 12
    off = rng.uniform(-1, 1, n - 1)
    A = sp.diags([off, 3 + rng.uniform(0, 1, n), off], [-1, 0, 1], format="csr")
    fac = ichol(A)
    np.testing.assert_allclose(fac.L.toarray(), np.linalg.cholesky(A.toarray()), rtol=1e-14, atol=1e-15)
    assert fac.shift == 0.0
    r = rng.standard_normal(n)
    np.testing.assert_allclose(fac.solve(r), np.linalg.solve(A.toarray(), r), rtol=1e-12)


@pytest.mark.parametrize("spec", ["linear/poisson-2d:n=5", "linear/poisson-3d:n=3,coefficient=random"])
def test_poisson_ic0_matches_dense_reference(spec):
    A = optkit.get_problem(spec).matrix
    fac = ichol(A)
    dense = A.toarray()
    L_ref = dense_ic0(dense)
    np.testing.assert_allclose(fac.L.toarray(), L_ref, rtol=1e-13, atol=1e-15)
    # zero fill: the pattern of tril(A); the product matches A on that pattern, not off it
    np.testing.assert_array_equal(fac.L.toarray() != 0, np.tril(dense) != 0)
    LLt = L_ref @ L_ref.T
    on = dense != 0
    np.testing.assert_allclose(LLt[on], dense[on], rtol=1e-12, atol=1e-14)
    assert np.abs(LLt[~on]).max() > 1e-3  # the dropped fill shows up off the pattern


def test_preconditioner_operator():
    A = optkit.get_problem("linear/poisson-2d", n=7, coefficient="variable").matrix
    fac = ichol(A)
    M = fac.as_operator()
    assert M.shape == A.shape and {"symmetric", "psd"} <= M.tags
    rng = np.random.default_rng(1)
    r = rng.standard_normal(A.shape[0])
    L = fac.L.toarray()
    np.testing.assert_allclose(M @ r, np.linalg.solve(L @ L.T, r), rtol=1e-12)
    assert dottest(M)
    # float32 matrices give a float32 preconditioner
    fac32 = ichol(A.astype(np.float32))
    assert fac32.L.dtype == np.float32 and fac32.solve(r).dtype == np.float32
    np.testing.assert_allclose(fac32.L.toarray(), L, rtol=1e-5)


def test_breakdown_is_shifted_or_raised():
    A = BREAKS_IC0
    assert np.linalg.eigvalsh(A)[0] > 0
    S = sp.csr_matrix(A)
    with pytest.raises(IcholBreakdown, match="pivot") as info:
        ichol(S, shift=0.0)
    assert info.value.pivot <= 0
    fac = ichol(S)  # shift="auto"
    assert fac.shift > 0
    shifted = A + fac.shift * np.diag(np.diag(A))
    np.testing.assert_allclose(fac.L.toarray(), dense_ic0(shifted), rtol=1e-12)
    np.testing.assert_allclose(ichol(S, shift=fac.shift).L.toarray(), fac.L.toarray(), rtol=0)


def test_pcg_reports_the_shift():
    A = sp.csr_matrix(BREAKS_IC0)
    p = optkit.LinearSystemProblem(A, np.ones(4), tags={"psd"})
    res = optkit.solve(p, "pcg", preconditioner="ichol", tol=1e-10)
    assert res.success and res.extras["ichol_shift"] > 0
    np.testing.assert_allclose(A @ res.x, np.ones(4), rtol=1e-9)


@pytest.mark.parametrize(
    "matrix,kwargs,match",
    [
        (sp.csr_matrix(np.diag([1.0, 0.0, 2.0])), {}, r"A\[1, 1\]"),
        (np.eye(3), {}, "sparse"),
        (sp.csr_matrix(np.ones((2, 3))), {}, "square"),
        (sp.identity(3, format="csr"), {"shift": -1.0}, "shift"),
        (sp.identity(3, format="csr"), {"shift": "big"}, "shift"),
    ],
)
def test_bad_input(matrix, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ichol(matrix, **kwargs)
