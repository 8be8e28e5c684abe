"""dcdm: the iteration against a dense reference, the exact inverse in one step, the identity
as CG, fallbacks and breakdown, numpy against torch, the shipped model, bad inputs."""

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

import optkit
from optkit import Status
from optkit.problem import LinearSystemProblem
from problems.pressure import pressure_problem
from solvers.linear._dcdm_network import (
    DEFAULT_WEIGHTS,
    DirectionNetwork,
    GridMap,
    coarse_direction,
    load_model,
    training_grid_side,
)


class MatrixNetwork(torch.nn.Module):
    """A "network" that applies a fixed dense matrix to the unknowns (float64)."""

    def __init__(self, M, grid_map):
        super().__init__()
        self.M = torch.as_tensor(M, dtype=torch.float64)
        self.grid_map = grid_map

    def forward(self, g):
        return self.grid_map.to_grid(self.grid_map.from_grid(g) @ self.M.T)


class Constant(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, g):
        return torch.full_like(g, self.value)


def small_problem(geometry="spheres", n=6, seed=1):
    return pressure_problem(n, geometry, seed=seed)


def dense_dcdm(A, b, M, iterations, directions=2, Z=None):
    """The published iteration written out: q = M r/||r||, nullspace and the last ``directions``
    directions' A-components removed, exact step, true residual. ``M`` may be a list of
    matrices, used in turn (the coarse levels)."""
    maps = M if isinstance(M, list) else [M]
    x = np.zeros_like(b)
    r = b - A @ x
    kept, iterates = [], []
    for k in range(iterations):
        q = maps[k % len(maps)] @ (r / np.linalg.norm(r))
        if Z is not None:
            q = q - Z @ (Z.T @ q)
        for p in kept:
            q = q - p * (q @ A @ p) / (p @ A @ p)
        x = x + q * (q @ r) / (q @ A @ q)
        r = b - A @ x
        kept = (kept + [q])[-directions:] if directions else []
        iterates.append(x.copy())
    return iterates


def iterates_of(problem, **options):
    seen = []
    optkit.solve(
        problem, "dcdm", network_dtype="float64", callback=lambda info: seen.append(info["x"].copy()), **options
    )
    return seen[1:]  # the iterates after each step, not the start


@pytest.mark.parametrize("directions", [0, 1, 2, 3])
def test_iterates_equal_the_dense_reference_with_a_nonsymmetric_direction_map(directions):
    problem = small_problem()
    A = problem.matrix.toarray()
    n = A.shape[0]
    # identity plus a non-symmetric perturbation: no short recurrence, so the kept directions matter
    M = np.eye(n) + 0.3 * np.random.default_rng(0).standard_normal((n, n)) / np.sqrt(n)
    gm = GridMap(problem.metadata["grid"], problem.metadata["cells"])
    Z = problem.metadata["nullspace"]
    got = iterates_of(problem, model=MatrixNetwork(M, gm), max_iter=12, tol=1e-14, directions=directions)
    want = dense_dcdm(A, problem.b, M, 12, directions, Z)
    assert len(got) == 12
    # float64 throughout; 12 steps of exact line searches amplify rounding to about 1e-13
    for x_got, x_want in zip(got, want):
        np.testing.assert_allclose(x_got, x_want, rtol=0, atol=1e-11 * np.abs(x_want).max())


def test_identity_network_is_steepest_descent_with_orthogonalisation_and_equals_cg():
    problem = small_problem("liquid", n=8)
    A = problem.matrix.toarray()
    got = iterates_of(problem, model=torch.nn.Identity(), max_iter=15, tol=1e-14, directions=2)
    want = dense_dcdm(A, problem.b, np.eye(A.shape[0]), 15)
    for x_got, x_want in zip(got, want):
        np.testing.assert_allclose(x_got, x_want, rtol=0, atol=1e-11 * np.abs(x_want).max())
    # steepest descent made A-orthogonal to the previous direction is CG (in exact arithmetic)
    dcdm = optkit.solve(problem, "dcdm", model=torch.nn.Identity(), network_dtype="float64", tol=1e-8)
    cg = optkit.solve(problem, "cg", tol=1e-8)
    assert dcdm.status is Status.CONVERGED and abs(dcdm.nit - cg.nit) <= 1


def test_exact_inverse_converges_in_one_step():
    problem = small_problem("bunny", n=7)
    A = problem.matrix.toarray()
    gm = GridMap(problem.metadata["grid"], problem.metadata["cells"])
    res = optkit.solve(problem, "dcdm", model=MatrixNetwork(np.linalg.pinv(A), gm), network_dtype="float64", tol=1e-10)
    assert res.status is Status.CONVERGED and res.nit == 1
    # 20 Lanczos steps (the largest eigenvalue's estimate), the start's residual, A q, the new residual
    assert res.counters == {"matvec": 23, "network": 1, "fallback": 0}
    Z = problem.metadata["nullspace"]
    np.testing.assert_allclose(res.x, np.linalg.pinv(A) @ problem.b, atol=1e-10 * np.abs(res.x).max())
    np.testing.assert_allclose(Z.T @ res.x, 0, atol=1e-12)  # the nullspace projected out of every direction


@pytest.mark.parametrize("value", [float("nan"), 0.0])
def test_useless_network_output_falls_back_to_the_residual(value):
    problem = small_problem("liquid", n=8)
    res = optkit.solve(problem, "dcdm", model=Constant(value), network_dtype="float64", tol=1e-8)
    identity = optkit.solve(problem, "dcdm", model=torch.nn.Identity(), network_dtype="float64", tol=1e-8)
    assert res.status is Status.CONVERGED
    assert res.counters["fallback"] == res.counters["network"] == res.nit
    assert res.nit == identity.nit  # every step is then the residual's, as with the identity
    np.testing.assert_allclose(res.x, identity.x, rtol=1e-12, atol=1e-14)


def test_indefinite_matrix_tagged_psd_ends_in_breakdown():
    grid = (2, 2, 2)
    A = sp.diags(np.array([1.0, 2, 3, 4, 5, 6, 7, -8])).tocsr()
    problem = LinearSystemProblem(A, np.ones(8), tags=("symmetric", "psd"), metadata={"grid": grid})
    res = optkit.solve(problem, "dcdm", model=torch.nn.Identity(), network_dtype="float64", max_iter=50)
    assert res.status is Status.BREAKDOWN
    assert "not positive semidefinite" in res.message
    assert np.all(np.isfinite(res.x))


def test_torch_problem_gives_the_numpy_iterates():
    problem = small_problem("spheres", n=8)
    net = MatrixNetwork(
        np.eye(problem.matrix.shape[0]) * 2.0, GridMap(problem.metadata["grid"], problem.metadata["cells"])
    )
    res_np = optkit.solve(problem, "dcdm", model=net, network_dtype="float64", tol=1e-9)
    res_t = optkit.solve(problem.to("torch"), "dcdm", model=net, network_dtype="float64", tol=1e-9)
    assert res_np.nit == res_t.nit and res_t.status is Status.CONVERGED
    # the two backends sum the sparse products in different orders; ~40 exact line searches
    # carry that rounding to about 1e-11 of the solution's size
    np.testing.assert_allclose(res_t.x.numpy(), res_np.x, rtol=0, atol=1e-10 * np.abs(res_np.x).max())


def test_float32_network_keeps_a_float64_iterate_and_reaches_tight_tolerances():
    problem = small_problem("bunny", n=8)
    res = optkit.solve(problem, "dcdm", model=torch.nn.Identity(), tol=1e-10)
    assert res.x.dtype == np.float64 and res.status is Status.CONVERGED
    r = problem.b - problem.matrix @ res.x
    assert np.linalg.norm(r) < 1e-10 * np.linalg.norm(problem.b)


def test_network_is_positively_homogeneous_and_identity_untrained():
    torch.manual_seed(0)
    net = DirectionNetwork(filters=4, levels=2, down=1, bottom=1, up=1)
    r = torch.randn(3, 1, 8, 6, 5, dtype=torch.float64)
    net = net.double()
    torch.testing.assert_close(net(r), r)  # the last map starts at zero
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    torch.testing.assert_close(net(7.5 * r), 7.5 * net(r))
    assert net(r).shape == r.shape  # sides not multiples of 2**levels are padded and cropped
    torch.testing.assert_close(net(r[:1]), net(r)[:1])  # the batch-of-one path


def test_shipped_model_loads_safely_and_beats_cg_on_an_unseen_geometry():
    _model, record = load_model(DEFAULT_WEIGHTS)
    assert {"command", "config", "first_losses", "elapsed_s"} <= record.keys()
    payload = torch.load(DEFAULT_WEIGHTS, weights_only=True)  # plain tensors and numbers only
    assert set(payload) == {"config", "state_dict", "training"}
    problem = pressure_problem(24, "bunny", seed=3)
    res = optkit.solve(problem, "dcdm", tol=1e-6)
    cg = optkit.solve(problem, "cg", tol=1e-6)
    assert res.status is Status.CONVERGED
    assert res.extras["model"] == str(DEFAULT_WEIGHTS)
    assert res.nit <= cg.nit / 2


def test_bad_inputs_are_refused_before_any_work():
    problem = small_problem()
    with pytest.raises(ValueError, match="metadata\\['grid'\\]"):
        optkit.solve(LinearSystemProblem(problem.matrix, problem.b, tags=("psd",)), "dcdm")
    wrong = LinearSystemProblem(problem.matrix, problem.b, tags=("psd",), metadata={"grid": (5, 5, 5)})
    with pytest.raises(ValueError, match="places 125 unknowns"):
        optkit.solve(wrong, "dcdm")
    flat = LinearSystemProblem(problem.matrix, problem.b, tags=("psd",), metadata={"grid": (problem.b.size,)})
    with pytest.raises(ValueError, match="3-D grid"):
        optkit.solve(flat, "dcdm")
    no_psd = LinearSystemProblem(problem.matrix, problem.b, metadata=problem.metadata)
    with pytest.raises(ValueError, match="requires \\['psd'\\]"):
        optkit.solve(no_psd, "dcdm")
    on_meta = torch.nn.Linear(2, 2, device="meta")
    with pytest.raises(ValueError, match="model's tensors are torch.float32 on meta"):
        optkit.solve(problem, "dcdm", model=on_meta)
    with pytest.raises(ValueError, match="model must be"):
        optkit.get_solver("dcdm", model=3)
    with pytest.raises(ValueError, match="network_dtype"):
        optkit.get_solver("dcdm", network_dtype="float16")
    with pytest.raises(ValueError, match="directions"):
        optkit.get_solver("dcdm", directions=-1)
    with pytest.raises(ValueError, match="coarse_levels"):
        optkit.get_solver("dcdm", coarse_levels=-1)
    with pytest.raises(FileNotFoundError, match="no dcdm model"):
        optkit.solve(problem, "dcdm", model="/nonexistent/model.pt")


def test_coarse_direction_averages_blocks_and_interpolates_back():
    r = torch.arange(2 * 1 * 4 * 4 * 6, dtype=torch.float64).reshape(2, 1, 4, 4, 6) ** 1.5
    got = coarse_direction(torch.nn.Identity(), r, 1)
    coarse = r.reshape(2, 1, 2, 2, 2, 2, 3, 2).mean(dim=(3, 5, 7))  # 2x2x2 block means
    want = torch.nn.functional.interpolate(coarse, size=(4, 4, 6), mode="trilinear", align_corners=False)
    torch.testing.assert_close(got, want)
    odd = torch.randn(1, 1, 5, 3, 4, dtype=torch.float64)
    # sides padded with zeros to multiples of 4 (8, 4, 4), two 4³ block means, cropped back
    padded = torch.nn.functional.pad(odd, (0, 0, 0, 1, 0, 3))
    blocks = padded.reshape(1, 1, 2, 4, 1, 4, 1, 4).mean(dim=(3, 5, 7))
    want = torch.nn.functional.interpolate(blocks, size=(8, 4, 4), mode="trilinear", align_corners=False)
    torch.testing.assert_close(coarse_direction(torch.nn.Identity(), odd, 2), want[:, :, :5, :3, :4])


def test_coarse_levels_cycle_the_directions_as_the_dense_reference():
    problem = small_problem("liquid", n=10)
    A = problem.matrix.toarray()
    n = A.shape[0]
    gm = GridMap(problem.metadata["grid"], problem.metadata["cells"])
    torch.manual_seed(4)
    net = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False).double()  # linear, and runs on any grid
    with torch.no_grad():
        net.weight.add_(torch.nn.functional.pad(torch.ones(1, 1, 1, 1, 1), (1, 1, 1, 1, 1, 1)))
    # the maps of the grid and of levels 1 and 2 on the unknowns, column by column
    basis = gm.to_grid(torch.eye(n, dtype=torch.float64))
    with torch.no_grad():
        maps = [gm.from_grid(net(basis)).T.numpy()]
        maps += [gm.from_grid(coarse_direction(net, basis, level)).T.numpy() for level in (1, 2)]
    got = iterates_of(problem, model=net, max_iter=9, tol=1e-14, coarse_levels=2, directions=3)
    # no step here falls back to the residual (the reference has no fallback)
    res = optkit.solve(problem, "dcdm", model=net, network_dtype="float64", max_iter=9, coarse_levels=2, directions=3)
    assert res.counters["fallback"] == 0
    want = dense_dcdm(A, problem.b, maps, 9, directions=3)
    for x_got, x_want in zip(got, want):
        np.testing.assert_allclose(x_got, x_want, rtol=0, atol=1e-11 * np.abs(x_want).max())


def test_coarse_levels_follow_the_training_grid():
    _, record = load_model(DEFAULT_WEIGHTS)
    assert training_grid_side(record) == 32
    assert training_grid_side({"config": "{}"}) is None and training_grid_side({}) is None
    for n, levels in ((24, 0), (32, 0), (48, 0), (64, 1), (128, 2)):
        # max_iter=0: the set-up only
        res = optkit.solve(pressure_problem(n, "liquid", seed=2), "dcdm", max_iter=0)
        assert res.extras["coarse_levels"] == levels, n
    res = optkit.solve(small_problem(), "dcdm", model=torch.nn.Identity(), max_iter=0)
    assert res.extras["coarse_levels"] == 0  # a module given directly has no training record
