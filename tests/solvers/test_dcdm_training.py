"""dcdm training: Ritz vectors against eigh, the Galerkin loss against its formula and its scale
invariance, the right-hand-side stream, a resumed run equal to an uninterrupted one, the shipped
model's first losses reproduced, bad configurations."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from problems.pressure import pressure_problem
from solvers.linear import dcdm_training
from solvers.linear._dcdm_network import DEFAULT_WEIGHTS, GridMap, load_model
from solvers.linear.dcdm_training import (
    RitzRightHandSides,
    TrainingConfig,
    galerkin_loss,
    ritz_basis,
    train,
)

TINY = {
    "problems": ("linear/pressure-3d:n=8,geometry=spheres,seed=0", "linear/pressure-3d:n=8,geometry=liquid,seed=0"),
    "architecture": {"filters": 4, "levels": 2, "down": 1, "bottom": 1, "up": 1},
    "lanczos_steps": 40,
    "batch_size": 3,
    "steps": 6,
    "checkpoint_every": 2,
    "validation_size": 4,
}


def test_ritz_pairs_of_a_full_lanczos_run_are_the_eigenpairs():
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.standard_normal((40, 40)))[0]
    eigenvalues = np.linspace(0.5, 20.0, 40)
    A = (Q * eigenvalues) @ Q.T
    theta, V = ritz_basis(A, 40)
    # 40 steps of a fully reorthogonalised Lanczos span the whole space
    np.testing.assert_allclose(theta, np.linalg.eigh(A)[0], rtol=1e-10)
    np.testing.assert_allclose(V.T @ V, np.eye(40), atol=1e-6)  # float32 vectors
    np.testing.assert_allclose(A @ V, V * theta, atol=1e-5 * eigenvalues.max())


def test_ritz_basis_drops_the_nullspace_of_a_pure_neumann_system():
    problem = pressure_problem(4, "box")
    n = problem.matrix.shape[0]
    theta, V = ritz_basis(problem.matrix, n)
    eig = np.linalg.eigvalsh(problem.matrix.toarray())
    # the start A g lies in the range: the Krylov space never holds the constant
    assert theta.size <= n - 1 and theta.min() > 1e-8 * theta.max()
    np.testing.assert_allclose(V.T @ problem.metadata["nullspace"], 0, atol=1e-5)
    # every Ritz value is an eigenvalue, and every nonzero eigenvalue is found
    nearest = np.abs(theta[:, None] - eig[None, 1:]).min(axis=1)
    np.testing.assert_allclose(nearest, 0, atol=1e-8 * eig.max())
    missed = np.abs(eig[1:, None] - theta[None, :]).min(axis=1)
    np.testing.assert_allclose(missed, 0, atol=1e-8 * eig.max())


def test_right_hand_sides_are_unit_vectors_with_the_low_modes_weighted():
    V = np.linalg.qr(np.random.default_rng(1).standard_normal((30, 10)))[0]
    rhs = RitzRightHandSides(V, low_fraction=0.3, low_weight=9.0)
    np.testing.assert_array_equal(rhs.weights, [9, 9, 9, 1, 1, 1, 1, 1, 1, 1])
    b = rhs.batch(5, np.random.default_rng(2))
    c = np.random.default_rng(2).standard_normal((10, 5)).astype(np.float32) * rhs.weights[:, None]
    want = (V @ c).T
    np.testing.assert_allclose(b, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1, rtol=1e-6)


class Scaled(torch.nn.Module):
    def __init__(self, inner, factor):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, g):
        return self.factor * self.inner(g)


def test_galerkin_loss_equals_its_formula_and_ignores_the_direction_scale():
    problem = pressure_problem(6, "spheres", seed=2)
    A = problem.matrix
    Z = problem.metadata["nullspace"]
    gm = GridMap(problem.metadata["grid"], problem.metadata["cells"])
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False).double()
    b = torch.randn(4, A.shape[0], dtype=torch.float64)
    A_t = torch.as_tensor(A.toarray())
    Z_t = torch.as_tensor(Z)
    loss = galerkin_loss(net, gm, A_t, b, Z_t).item()
    with torch.no_grad():
        q = gm.from_grid(net(gm.to_grid(b))).numpy()
    q = q - (q @ Z) @ Z.T
    bn = b.numpy()
    want = np.mean([np.sum((bi - A @ qi * (qi @ bi) / (qi @ A @ qi)) ** 2) for bi, qi in zip(bn, q)])
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    for factor in (1e3, -2.0, 1e-4):
        np.testing.assert_allclose(galerkin_loss(Scaled(net, factor), gm, A_t, b, Z_t).item(), loss, rtol=1e-12)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    config = TrainingConfig(**TINY)
    whole = train(config, tmp_path / "whole", progress=False)
    assert whole.complete and (tmp_path / "whole" / "model.pt").is_file()
    first = train(config, tmp_path / "split", progress=False, session_steps=3)
    assert not first.complete and not (tmp_path / "split" / "model.pt").exists()
    second = train(config, tmp_path / "split", progress=False)
    assert second.complete
    assert second.losses == whole.losses  # bit for bit: batches seeded by step, state restored
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), second.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    _model, record = load_model(tmp_path / "whole" / "model.pt")
    assert json.loads(record["config"])["problems"] == list(TINY["problems"])
    np.testing.assert_allclose(record["first_losses"], whole.losses[:5], rtol=0)


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    train(TrainingConfig(**TINY), tmp_path, progress=False, session_steps=1)
    with pytest.raises(ValueError, match="another"):
        train(TrainingConfig(**{**TINY, "lr": 5e-4}), tmp_path, progress=False)


def test_command_line_records_its_command(tmp_path):
    argv = [
        "--out",
        str(tmp_path),
        "--problem",
        TINY["problems"][0],
        "--lanczos-steps",
        "20",
        "--steps",
        "2",
        "--checkpoint-every",
        "1",
        "--filters",
        "2",
        "--levels",
        "1",
        "--quiet",
    ]
    assert dcdm_training.main(argv) == 0
    _, record = load_model(tmp_path / "model.pt")
    assert record["command"].startswith("python -m solvers.linear.dcdm_training --out ")
    assert json.loads(record["config"])["architecture"]["filters"] == 2


@pytest.mark.parametrize(
    "change, match",
    [
        ({"problems": "linear/pressure-3d"}, "problems"),
        ({"schedule": "step"}, "schedule"),
        ({"lr": 0.0}, "lr"),
        ({"steps": 0}, "steps"),
        ({"architecture": {"filters": 0}}, "filters"),
    ],
)
def test_bad_configurations_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        TrainingConfig(**{**TINY, **change})


def test_training_matrix_must_have_a_grid(tmp_path):
    from optkit.problem import LinearSystemProblem
    from optkit.registry import register_problem, scoped_registrations

    with scoped_registrations():
        register_problem("test/gridless")(lambda: LinearSystemProblem(sp.eye(8, format="csr"), np.ones(8)))
        with pytest.raises(ValueError, match="3-D metadata\\['grid'\\]"):
            train(TrainingConfig(**{**TINY, "problems": ("test/gridless",)}), tmp_path, progress=False)


def test_retraining_from_the_recorded_seed_reproduces_the_shipped_model_first_losses(tmp_path):
    _, record = load_model(DEFAULT_WEIGHTS)
    config = TrainingConfig(**json.loads(record["config"]))
    run = train(config, tmp_path, progress=False, session_steps=3)
    # same data, weights and batches; float32 convolutions may sum in another order on another CPU
    np.testing.assert_allclose(run.losses, record["first_losses"][:3], rtol=1e-4)
