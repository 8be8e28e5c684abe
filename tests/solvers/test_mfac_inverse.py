"""M-FAC's static algorithm (MFACInverse, BlockMFACInverse) against dense inverses of the damped empirical Fisher."""

import numpy as np
import pytest
from mfac_cases import block_diagonal_inverse, dense_inverse

from optkit.backend import has_module
from optkit.linop import diagonal, dottest, materialize
from solvers.curvature import BlockMFACInverse, MFACInverse, empirical_fisher
from solvers.curvature._gram_factor import shifted_inverse_root, shifted_solve

torch = pytest.importorskip("torch") if has_module("torch") else None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


def gradients(m, d, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal((m, d))


@pytest.mark.parametrize("m", [1, 64, 2048])
def test_products_and_diagonal_equal_the_dense_inverse(m):
    # m = 2048 is beyond the reference's guard (m <= 1024) and larger than d
    d, damp = 2000, 1e-2
    G = gradients(m, d, seed=m)
    Finv = dense_inverse(G, damp)
    op = MFACInverse(G, damp)
    X = np.random.default_rng(1).standard_normal((d, 3))
    np.testing.assert_allclose(op @ X[:, 0], Finv @ X[:, 0], rtol=1e-10, atol=1e-10 * np.abs(Finv @ X[:, 0]).max())
    np.testing.assert_allclose(op.matmat(X), Finv @ X, rtol=1e-10, atol=1e-10 * np.abs(Finv @ X).max())
    np.testing.assert_allclose(diagonal(op), np.diag(Finv), rtol=1e-10)
    assert op.shape == (d, d) and op.num_grads == m and op.damp == damp and {"symmetric", "psd"} <= op.tags


def test_dense_oracle_is_the_damped_empirical_fisher():
    G = gradients(3, 4)
    np.testing.assert_allclose(empirical_fisher(G, 0.5), 0.5 * np.eye(4) + sum(np.outer(g, g) for g in G) / 3)


def test_adjoint_and_materialised_inverse():
    G = gradients(7, 40)
    op = MFACInverse(G, 0.1)
    assert dottest(op)
    np.testing.assert_allclose(materialize(op) @ empirical_fisher(G, 0.1), np.eye(40), atol=1e-12)


@pytest.mark.parametrize("B", [1, 12, 16, 50, 80])
def test_blocked_variant_equals_the_dense_block_diagonal_inverse(B):
    # 50 = 4 * 12 + 2: a short last block; B >= d is the unblocked operator
    G, damp = gradients(16, 50, seed=B), 0.1
    expected = block_diagonal_inverse(G, damp, min(B, 50))
    op = BlockMFACInverse(G, damp, B)
    X = np.random.default_rng(2).standard_normal((50, 4))
    np.testing.assert_allclose(op @ X, expected @ X, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(diagonal(op), np.diag(expected), rtol=1e-10)
    assert op.block_size == min(B, 50) and dottest(op)


def test_blocked_variant_batches_its_gram_matrices(monkeypatch):
    import solvers.curvature.mfac_inverse as module

    G = gradients(6, 70)
    whole = BlockMFACInverse(G, 0.2, 10)
    monkeypatch.setattr(module, "_GRAM_BATCH_BYTES", 3 * 8 * 6 * 6)  # three blocks per batch
    batched = BlockMFACInverse(G, 0.2, 10)
    x = np.arange(70.0)
    np.testing.assert_allclose(batched @ x, whole @ x, rtol=1e-13)
    np.testing.assert_allclose(diagonal(batched), diagonal(whole), rtol=1e-13)


@needs_torch
@pytest.mark.parametrize("cls", ["full", "blocked"])
def test_torch_matches_numpy(cls):
    G, damp = gradients(24, 300, scale=0.3), 1e-3
    make = (lambda g: MFACInverse(g, damp)) if cls == "full" else (lambda g: BlockMFACInverse(g, damp, 64))
    ref = make(G)
    x = np.random.default_rng(3).standard_normal(300)
    op64 = make(torch.tensor(G))
    assert op64.backend == "torch" and op64.dtype == torch.float64
    np.testing.assert_allclose(op64.matvec(torch.tensor(x)).numpy(), ref @ x, rtol=1e-12)
    np.testing.assert_allclose(diagonal(op64).numpy(), diagonal(ref), rtol=1e-12)
    op32 = make(torch.tensor(G, dtype=torch.float32))
    y32 = op32.matvec(torch.tensor(x, dtype=torch.float32))
    assert y32.dtype == torch.float32
    np.testing.assert_allclose(y32.numpy(), ref @ x, rtol=2e-4, atol=2e-4 * np.abs(ref @ x).max())
    np.testing.assert_allclose(diagonal(op32).numpy(), diagonal(ref), rtol=2e-4)
    moved = op64.to(backend="numpy")
    np.testing.assert_allclose(moved @ x, ref @ x, rtol=1e-12)


def test_float32_numpy():
    G = gradients(10, 200, scale=0.5)
    ref = MFACInverse(G, 1e-2)
    op = MFACInverse(G.astype(np.float32), 1e-2)
    x = np.ones(200)
    assert op.dtype == np.float32
    np.testing.assert_allclose(op @ x.astype(np.float32), ref @ x, rtol=1e-4)


@pytest.mark.parametrize(
    ("grads", "damp", "match"),
    [
        (np.zeros((0, 5)), 1.0, r"at least one gradient \(m >= 1\)"),
        (np.zeros((3, 0)), 1.0, r"at least one coordinate"),
        (np.zeros(5), 1.0, r"2-D array of shape \(m, d\)"),
        (np.ones((2, 5), dtype=np.int64), 1.0, "float32 or float64"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), 1.0, r"NaN or inf \(first in row 0\)"),
        (np.array([[1.0, 0.0], [np.inf, 1.0]]), 1.0, r"NaN or inf \(first in row 1\)"),
        (np.ones((2, 5)), 0.0, "damp must be a positive finite number"),
        (np.ones((2, 5)), -1.0, "damp must be a positive finite number"),
        (np.ones((2, 5)), float("nan"), "damp must be a positive finite number"),
    ],
)
def test_bad_inputs(grads, damp, match):
    with pytest.raises(ValueError, match=match):
        MFACInverse(grads, damp)
    with pytest.raises(ValueError, match=match):
        BlockMFACInverse(grads, damp, 2)


def test_bad_block_size_and_shape_mismatch():
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        BlockMFACInverse(np.ones((2, 5)), 1.0, 0)
    with pytest.raises(ValueError):
        MFACInverse(np.ones((2, 5)), 1.0) @ np.ones(4)


@needs_torch
def test_nan_tensor_gradients_are_refused():
    G = torch.ones(3, 4)
    G[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"row 2"):
        MFACInverse(G, 1.0)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_factorisation_falls_back_to_the_eigendecomposition(backend):
    if backend == "torch" and torch is None:
        pytest.skip("needs torch")
    # a "Gram" matrix with an eigenvalue of -2 (what float32 rounding can produce) makes
    # Cholesky of gram + 1 I fail; the fallback clamps that eigenvalue of gram + I to 1
    Q = np.linalg.qr(np.random.default_rng(4).standard_normal((5, 5)))[0]
    gram = Q @ np.diag([-2.0, 0.0, 1.0, 3.0, 10.0]) @ Q.T
    expected = Q @ np.diag(1 / np.array([1.0, 1.0, 2.0, 4.0, 11.0])) @ Q.T
    arg = torch.tensor(gram) if backend == "torch" else gram
    R = shifted_inverse_root(arg, 1.0)
    R = R.numpy() if backend == "torch" else R
    np.testing.assert_allclose(R.T @ R, expected, atol=1e-12)
    if backend == "torch":
        b = np.arange(1.0, 6.0)
        np.testing.assert_allclose(shifted_solve(arg, 1.0, torch.tensor(b)).numpy(), expected @ b, rtol=1e-12)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    G = torch.randn(32, 1000, dtype=torch.float64)
    x = torch.randn(1000, dtype=torch.float64)
    cpu = MFACInverse(G, 1e-2)
    gpu = MFACInverse(G.cuda(), 1e-2)
    assert gpu.device.startswith("cuda")
    np.testing.assert_allclose(gpu.matvec(x.cuda()).cpu().numpy(), cpu.matvec(x).numpy(), rtol=1e-10)
    np.testing.assert_allclose(diagonal(gpu).cpu().numpy(), diagonal(cpu).numpy(), rtol=1e-10)
