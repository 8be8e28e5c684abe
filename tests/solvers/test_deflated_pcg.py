"""deflated-pcg: the balancing coarse space against CG on the deflated spectrum, accuracy,
iterations against Jacobi PCG, the pure-Neumann box, bad options."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import optkit
from optkit import Status
from optkit.krylov import CGIteration
from optkit.krylov import cg as krylov_cg
from problems.pressure import pressure_problem
from solvers.linear.deflated_pcg import BalancingDeflation, DeflatedPCG, ritz_deflation_space


def dirichlet_laplacian_2d(n):
    """The 5-point Laplacian on an ``n x n`` grid with Dirichlet walls (constant diagonal 4) and
    its eigenpairs ``4 - 2 cos(pi i / (n+1)) - 2 cos(pi j / (n+1))``, ``sin x sin``, ascending."""
    T = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1])
    A = (sp.kron(T, sp.eye(n)) + sp.kron(sp.eye(n), T)).tocsr()
    k = np.arange(1, n + 1)
    modes = np.sin(np.pi * np.outer(np.arange(1, n + 1), k) / (n + 1)) * np.sqrt(2 / (n + 1))
    lam = 2 - 2 * np.cos(np.pi * k / (n + 1))
    values = (lam[:, None] + lam[None, :]).ravel()
    vectors = np.einsum("ai,bj->abij", modes, modes).reshape(n * n, n * n)
    order = np.argsort(values, kind="stable")
    return A, values[order], vectors[:, order]


def test_exact_eigenvectors_give_cg_on_the_rest_of_the_spectrum():
    A, values, vectors = dirichlet_laplacian_2d(14)
    np.testing.assert_allclose(A @ vectors[:, :3], vectors[:, :3] * values[:3], atol=1e-12)  # the helper's pairs
    k = 8
    W = vectors[:, :k]
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    deflation = BalancingDeflation(W, A @ W, 1.0 / A.diagonal())
    iteration = CGIteration(A, b, M=deflation.as_operator(optkit.linop.aslinearoperator(A)))
    state = iteration.init(deflation.coarse_correction(b))
    history = [state.residual_norm]
    threshold = 1e-10 * np.linalg.norm(b)
    while not iteration.converged(state, threshold):
        state = iteration.step(state)
        history.append(state.residual_norm)
    # with D = 4 I and exact eigenvectors, P = (I - W W^T) / 4 + W diag(lambda)^-1 W^T and the
    # start leaves r_0 = (I - W W^T) b: PCG is then CG on A restricted to span(W)^perp, whose
    # spectrum is values[k:], from the same residual
    reference = krylov_cg(A, b - W @ (W.T @ b), rtol=0.0, atol=threshold, max_iter=1000)
    assert reference.success
    assert len(history) - 1 == reference.nit
    # same recurrences in exact arithmetic; rounding differs (the coarse terms of P), and CG
    # amplifies it along the run: 1e-6 relative on residuals that fall by 1e10 leaves room
    np.testing.assert_allclose(history, reference.residual_history, rtol=1e-6)
    full = krylov_cg(A, b, rtol=0.0, atol=threshold, max_iter=1000)
    assert reference.nit < full.nit  # the removed eigenvalues mattered: the test can tell


@pytest.mark.parametrize("spec", ["linear/poisson-3d:n=8", "linear/poisson-3d:n=8,coefficient=variable,seed=2"])
def test_solution_matches_spsolve(spec):
    p = optkit.get_problem(spec)
    res = optkit.solve(p, "deflated-pcg", tol=1e-11, vectors=8)
    assert res.status is Status.CONVERGED, res.message
    exact = spla.spsolve(p.matrix.tocsc(), p.b)
    # relative error <= cond(A) * relative residual ~ 1e2 * 1e-11
    np.testing.assert_allclose(res.x, exact, rtol=0, atol=1e-8 * np.abs(exact).max())
    assert res.extras["deflation_vectors"] == 8
    assert res.counters["matvec"] == res.nit + 1 + res.extras["lanczos_steps"]  # + the start's residual
    assert res.metrics["setup_time_s"] > 0


@pytest.mark.parametrize("spec", ["linear/poisson-3d:n=16", "linear/poisson-3d:n=16,coefficient=variable"])
def test_fewer_iterations_than_jacobi_pcg(spec):
    p = optkit.get_problem(spec)
    jacobi = optkit.solve(p, "pcg", preconditioner="jacobi", tol=1e-6)
    deflated = optkit.solve(p, "deflated-pcg", tol=1e-6)
    assert jacobi.success and deflated.success
    assert deflated.nit < jacobi.nit, (deflated.nit, jacobi.nit)
    no_vectors = optkit.solve(p, "deflated-pcg", tol=1e-6, vectors=0)
    assert no_vectors.nit == jacobi.nit  # without a coarse space it is Jacobi PCG


def test_ritz_deflation_space_is_consistent():
    p = pressure_problem(10, "spheres", seed=2)
    A, Z = optkit.linop.aslinearoperator(p.A), p.metadata["nullspace"]
    W, AW, theta, matvecs = ritz_deflation_space(A, p.matrix.diagonal(), 6, 40, nullspace=Z, seed=0)
    assert W.shape == (p.b.size, 6) and matvecs == 40
    np.testing.assert_allclose(AW, p.matrix @ W, atol=1e-12)  # A W without another product: rounding only
    np.testing.assert_allclose(Z.T @ W, 0, atol=1e-12)  # in range(A)
    assert np.all(np.diff(theta) >= 0) and theta[0] > 1e-3  # the closed region's null pair did not appear


@pytest.mark.parametrize("geometry", ["box", "spheres"])
def test_pure_neumann_converges_to_the_minimum_norm_solution(geometry):
    p = pressure_problem(12, geometry, seed=1)
    Z = p.metadata["nullspace"]
    assert Z is not None
    res = optkit.solve(p, "deflated-pcg", tol=1e-10)
    assert res.status is Status.CONVERGED, res.message
    assert res.extras["nullspace"] == Z.shape[1]
    # (A + Z Z^T) x = b with Z^T b = 0 forces Z^T x = 0: the minimum-norm solution
    exact = spla.spsolve((p.matrix + sp.csr_matrix(Z @ Z.T)).tocsc(), p.b)
    scale = np.abs(exact).max()
    np.testing.assert_allclose(Z.T @ res.x, 0, atol=1e-12 * scale * np.sqrt(p.b.size))
    # cond on range(A) ~ 1e2 for 12^3: 1e-10 relative residual -> ~1e-8 relative error
    np.testing.assert_allclose(res.x, exact, rtol=0, atol=1e-7 * scale)


def test_torch_matches_numpy():
    pytest.importorskip("torch")
    p = pressure_problem(10, "spheres", seed=1)
    ref = optkit.solve(p, "deflated-pcg", tol=1e-8, vectors=6)
    out = optkit.solve(p.to("torch"), "deflated-pcg", tol=1e-8, vectors=6)
    assert out.nit == ref.nit
    # same float64 operations in another order: rounding only
    np.testing.assert_allclose(out.x.numpy(), ref.x, rtol=0, atol=1e-10 * np.abs(ref.x).max())


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"vectors": -1}, "vectors"),
        ({"vectors": 2.5}, "vectors"),
        ({"vectors": True}, "vectors"),
        ({"seed": -3}, "seed"),
        ({"lanczos_steps": "many"}, "lanczos_steps"),
        ({"vectors": 16, "lanczos_steps": 8}, "lanczos_steps"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_bad_options(options, name):
    with pytest.raises(ValueError, match=name):
        DeflatedPCG(**options)


def test_nonpositive_diagonal_is_refused():
    A = sp.csr_matrix(np.diag([1.0, 0.0, 2.0]))
    p = optkit.LinearSystemProblem(A, np.ones(3), tags=("symmetric", "psd"))
    with pytest.raises(ValueError, match="positive diagonal"):
        optkit.solve(p, "deflated-pcg")
