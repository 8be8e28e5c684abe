"""Lanczos and the spectral estimators against dense eigendecompositions and exact traces and diagonals."""

import numpy as np
import pytest
import scipy.stats

from optkit.backend import has_module
from optkit.lanczos import LanczosProcess, lanczos
from optkit.linop import Dense
from optkit.spectral import hutchinson_diagonal, hutchinson_trace, spectral_density, top_eigenpairs

N = 200
OUTLIERS = np.array([5.0, 6.0, 7.0, 8.0, 10.0])


def bulk_and_outliers(n=N, seed=0):
    """A symmetric matrix with a bulk of eigenvalues in [0, 1] and five outliers, and its spectrum."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = np.concatenate([np.linspace(0.0, 1.0, n - 5), OUTLIERS])
    return (Q * lam) @ Q.T, lam


def test_lanczos_decomposition_holds():
    A, _ = bulk_and_outliers()
    r = lanczos(A, 30)
    T = np.diag(r.alpha) + np.diag(r.beta[:-1], 1) + np.diag(r.beta[:-1], -1)
    Q = r.basis
    np.testing.assert_allclose(Q.T @ Q, np.eye(30), atol=1e-13)
    np.testing.assert_allclose(Q.T @ A @ Q, T, atol=1e-12)
    assert r.steps == 30 and not r.breakdown


def test_lanczos_can_be_extended_and_stops_at_an_invariant_space():
    A, _ = bulk_and_outliers()
    process = LanczosProcess(A, seed=3)
    process.extend(10)
    whole = lanczos(A, 25, seed=3)
    np.testing.assert_allclose(process.extend(15).alpha, whole.alpha, rtol=1e-12)
    # a start vector in a 3-dimensional invariant subspace: breakdown after 3 steps, exact Ritz values
    D = np.diag(np.arange(1.0, 11.0))
    r = lanczos(D, 8, v0=np.r_[1.0, 1.0, 1.0, np.zeros(7)])
    assert r.breakdown and r.steps == 3
    np.testing.assert_allclose(np.sort(r.ritz()[0]), [1.0, 2.0, 3.0], rtol=1e-12)


def test_top_eigenpairs_equal_eigh():
    A, _ = bulk_and_outliers()
    pairs = top_eigenpairs(A, 4, tol=1e-10)
    w, V = np.linalg.eigh(A)
    np.testing.assert_allclose(pairs.values, w[::-1][:4], rtol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(pairs.vectors * V[:, ::-1][:, :4], axis=0)), 1.0, rtol=1e-8)
    assert pairs.converged and np.all(pairs.residuals < 1e-8 * 10)
    smallest = top_eigenpairs(A, 1, which="SA", tol=1e-10)
    np.testing.assert_allclose(smallest.values, [0.0], atol=1e-8)
    assert pairs.steps < N  # converged well before a full tridiagonalisation


def test_kept_products_are_the_matvecs_and_give_exact_residuals():
    A, _ = bulk_and_outliers()
    process = LanczosProcess(A, seed=1, keep_products=True)
    process.extend(20)  # past the first capacity (16): the stores grow
    r = process.extend(5)
    np.testing.assert_allclose(r.products, A @ r.basis, rtol=0, atol=1e-13)
    assert LanczosProcess(A).extend(3).products is None
    # an unconverged pair (6 steps): its residual equals the one recomputed with A
    pairs = top_eigenpairs(A, 2, max_steps=6, seed=2)
    explicit = np.linalg.norm(A @ pairs.vectors - pairs.vectors * pairs.values, axis=0)
    assert not pairs.converged and explicit.min() > 1e-3
    np.testing.assert_allclose(pairs.residuals, explicit, rtol=1e-10)


def test_without_reorthogonalisation_ghost_eigenvalues_appear():
    A, _ = bulk_and_outliers()
    for reorthogonalize, copies in ((True, 1), (False, 8)):
        r = lanczos(A, 120, reorthogonalize=reorthogonalize)
        theta = r.ritz()[0]
        assert np.sum(np.abs(theta - 10.0) < 1e-6) == copies
    loss = np.abs(r.basis.T @ r.basis - np.eye(120)).max()
    assert loss > 0.5  # the plain recurrence has lost orthogonality


def test_hutchinson_trace_error_falls_as_one_over_sqrt_probes():
    A, lam = bulk_and_outliers()
    errors = []
    for probes in (50, 800):
        runs = [hutchinson_trace(A, probes, seed=s) for s in range(30)]
        errors.append(np.sqrt(np.mean([(r.value - lam.sum()) ** 2 for r in runs])))
        # the reported standard error matches the spread across seeds
        np.testing.assert_allclose(np.mean([r.stderr for r in runs]), errors[-1], rtol=0.35)
    np.testing.assert_allclose(errors[0] / errors[1], 4.0, rtol=0.35)  # sqrt(800 / 50) = 4


def test_hutch_plus_plus_beats_hutchinson_on_a_decaying_spectrum():
    rng = np.random.default_rng(1)
    Q = np.linalg.qr(rng.standard_normal((N, N)))[0]
    lam = 1.0 / np.arange(1, N + 1) ** 2
    A = (Q * lam) @ Q.T
    plain = [abs(hutchinson_trace(A, 60, seed=s).value - lam.sum()) for s in range(20)]
    plus = [abs(hutchinson_trace(A, 60, method="hutch++", seed=s).value - lam.sum()) for s in range(20)]
    assert np.mean(plus) < 0.1 * np.mean(plain)
    assert hutchinson_trace(A, 60, method="hutch++").probes == 60


def test_hutchinson_diagonal_error_falls_as_one_over_sqrt_probes():
    A, _ = bulk_and_outliers(n=60)
    exact = np.diag(A)
    e1 = hutchinson_diagonal(A, 100, seed=0)
    e2 = hutchinson_diagonal(A, 1600, seed=0, batch=300)
    rms = [np.sqrt(np.mean((e.value - exact) ** 2)) for e in (e1, e2)]
    np.testing.assert_allclose(rms[0] / rms[1], 4.0, rtol=0.35)
    np.testing.assert_allclose(np.sqrt(np.mean(e2.stderr**2)), rms[1], rtol=0.35)


def test_slq_density_against_the_exact_spectrum():
    A, lam = bulk_and_outliers()
    sd = spectral_density(A, probes=20, steps=60, seed=0)
    np.testing.assert_allclose(sd.weights.sum(axis=1), 1.0, rtol=1e-12)
    # Wasserstein-1 between the quadrature measure and the eigenvalue distribution, both
    # probability measures on the real line (the spectrum spans [0, 10])
    w1 = scipy.stats.wasserstein_distance(sd.nodes.ravel(), lam, u_weights=sd.weights.ravel())
    assert w1 < 0.02
    np.testing.assert_allclose(sd.trace(), lam.sum(), rtol=0.05)
    grid = np.linspace(-1, 11, 4001)
    np.testing.assert_allclose(np.trapezoid(sd.density(grid, 0.05), grid), 1.0, rtol=1e-6)
    # the outliers carry mass 1/n each: the density there integrates to about 5/n
    upper = grid > 3
    np.testing.assert_allclose(np.trapezoid(sd.density(grid, 0.05)[upper], grid[upper]), 5 / N, rtol=0.5)


@pytest.mark.skipif(not has_module("torch"), reason="needs torch")
def test_torch_operators_give_the_numpy_results():
    import torch

    A, _ = bulk_and_outliers()
    At = Dense(torch.tensor(A))
    np.testing.assert_allclose(top_eigenpairs(At, 2).values, top_eigenpairs(A, 2).values, rtol=1e-12)
    np.testing.assert_allclose(hutchinson_trace(At, 40).value, hutchinson_trace(A, 40).value, rtol=1e-12)
    np.testing.assert_allclose(hutchinson_diagonal(At, 40).value, hutchinson_diagonal(A, 40).value, rtol=1e-12)
    np.testing.assert_allclose(spectral_density(At, 2, 20).nodes, spectral_density(A, 2, 20).nodes, rtol=1e-9)
    assert isinstance(top_eigenpairs(At, 1).vectors, torch.Tensor)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda A: lanczos(A, 0), "k must be an integer >= 1"),
        (lambda A: lanczos(A, 11), "k must be at most n = 10"),
        (lambda A: lanczos(A, 2, v0=np.zeros(10)), "v0 must be finite and nonzero"),
        (lambda A: lanczos(A, 2, v0=np.ones(9)), r"v0 must be a vector of shape \(10,\)"),
        (lambda A: top_eigenpairs(A, 11), "k must be at most n = 10"),
        (lambda A: top_eigenpairs(A, 1, which="BE"), "which must be one of"),
        (lambda A: hutchinson_trace(A, 0), "probes must be an integer >= 1"),
        (lambda A: hutchinson_trace(A, 2, method="hutch++"), "at least 3 for hutch"),
        (lambda A: hutchinson_trace(A, 5, method="xtrace"), "method must be one of"),
        (lambda A: hutchinson_diagonal(A, -1), "probes must be an integer >= 1"),
        (lambda A: spectral_density(A, 1, 11), "steps must be at most n = 10"),
        (lambda A: spectral_density(A, 0, 5), "probes must be an integer >= 1"),
        (lambda A: spectral_density(A, 1, 5).density([0.0], 0.0), "sigma must be a positive"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.eye(10))


def test_non_square_and_complex_operators_are_refused():
    with pytest.raises(ValueError, match="square"):
        hutchinson_trace(np.ones((3, 4)))
    with pytest.raises(ValueError, match="real float32 or float64"):
        lanczos(np.eye(3, dtype=complex), 2)
