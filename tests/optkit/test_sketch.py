import numpy as np
import pytest
import scipy.sparse as sp

from optkit.linop import dottest, materialize
from optkit.result import Status
from optkit.sketch import count_sketch, gaussian_sketch, row_sampling, sketch_and_project

SKETCH_KINDS = [
    {"sketch": "row"},
    {"sketch": "row", "sampling": "row_norm"},
    {"sketch": "row", "block_size": 4},
    {"sketch": "gaussian"},
    {"sketch": "gaussian", "block_size": 6},
    {"sketch": "count", "block_size": 6},
]


def test_gaussian_sketch_is_an_isometry_in_expectation():
    S = gaussian_sketch(20_000, 4, np.random.default_rng(0))
    assert S.shape == (20_000, 4)
    M = materialize(S)
    np.testing.assert_allclose(M.T @ M, np.eye(4), atol=0.03)
    dottest(S)


def test_count_sketch_has_one_sign_per_column():
    S = count_sketch(5, 40, np.random.default_rng(1))
    M = materialize(S)
    np.testing.assert_array_equal((M != 0).sum(axis=0), np.ones(40))
    np.testing.assert_array_equal(np.abs(M).sum(axis=0), np.ones(40))
    dottest(S)


def test_row_sampling_picks_entries():
    S = row_sampling(np.array([3, 0, 3]), 5)
    v = np.arange(5.0) * 10
    np.testing.assert_array_equal(S @ v, [30.0, 0.0, 30.0])
    dottest(S)
    with pytest.raises(ValueError, match="rows"):
        row_sampling(np.array([5]), 5)


@pytest.mark.parametrize("kind", SKETCH_KINDS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_sketch_and_project_solves_overdetermined_consistent_system(kind, sparse):
    rng = np.random.default_rng(2)
    A = rng.standard_normal((30, 12))
    x_true = rng.standard_normal(12)
    b = A @ x_true
    result = sketch_and_project(sp.csr_array(A) if sparse else A, b, rtol=1e-10, rng=3, **kind)
    assert result.status is Status.CONVERGED
    assert result.residual_norm <= 1e-10 * np.linalg.norm(b)
    # recomputed, not the updated residual: equal up to the rounding of one product with A
    np.testing.assert_allclose(
        np.linalg.norm(A @ result.x - b), result.residual_norm, rtol=1e-6, atol=1e-14 * np.linalg.norm(b)
    )
    np.testing.assert_allclose(result.x, x_true, atol=1e-8)


@pytest.mark.parametrize("kind", SKETCH_KINDS[::2], ids=lambda k: k["sketch"])
def test_sketch_and_project_from_zero_finds_the_minimum_norm_solution(kind):
    # every step moves x within the row space of A, so from 0 it stays there: x -> A^+ b
    rng = np.random.default_rng(4)
    A = rng.standard_normal((8, 20))
    b = rng.standard_normal(8)
    result = sketch_and_project(A, b, rtol=1e-12, rng=5, **kind)
    assert result.status is Status.CONVERGED
    np.testing.assert_allclose(result.x, np.linalg.pinv(A) @ b, atol=1e-9)


def test_sketch_and_project_is_reproducible_and_reports_max_iter():
    rng = np.random.default_rng(6)
    A = rng.standard_normal((40, 40)) + 10 * np.eye(40)
    b = A @ np.ones(40)
    one = sketch_and_project(A, b, rtol=1e-14, max_iter=25, rng=7)
    two = sketch_and_project(A, b, rtol=1e-14, max_iter=25, rng=7)
    assert one.status is Status.MAX_ITER and one.nit == 25
    np.testing.assert_array_equal(one.x, two.x)
    np.testing.assert_allclose(one.residual_norm, np.linalg.norm(A @ one.x - b))


def test_sketch_and_project_rejects_bad_input():
    A = np.eye(3)
    with pytest.raises(ValueError, match="sketch"):
        sketch_and_project(A, np.ones(3), sketch="hadamard")
    with pytest.raises(ValueError, match="block_size"):
        sketch_and_project(A, np.ones(3), block_size=0)
    with pytest.raises(ValueError, match="b a vector"):
        sketch_and_project(A, np.ones(4))
    with pytest.raises(ValueError, match="x0"):
        sketch_and_project(A, np.ones(3), x0=np.ones(2))
