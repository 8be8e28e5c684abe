"""The re-implementation of the published M-FAC algorithms (``examples/mfac_reference.py``) against
dense inverses of ``F = damp I + GᵀG / m`` in float64, on tiny cases."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from mfac_cases import block_diagonal_inverse, dense_inverse

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _load_reference():
    path = Path(__file__).resolve().parents[2] / "examples" / "mfac_reference.py"
    spec = importlib.util.spec_from_file_location("mfac_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mfac_reference", module)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()

D, M = 50, 8


def tolerance(window, damp):
    """Relative accuracy to expect of an O(m)-step Woodbury product: a few hundred roundings
    amplified by the condition number of F."""
    m, d = window.shape
    return 500 * np.finfo(np.float64).eps * np.linalg.cond(damp * np.eye(d) + window.T @ window / m)


def assert_close(actual, expected, rtol):
    """Agreement relative to the largest entry of ``expected`` (entries near zero included)."""
    actual = actual.numpy() if isinstance(actual, torch.Tensor) else actual
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def t64(array):
    return torch.tensor(array, dtype=torch.float64)


def scaled_gram(window, damp):
    """The matrix ``setup`` factorises: ``G Gᵀ / damp + m I``."""
    return window @ window.T / damp + len(window) * np.eye(len(window))


@pytest.mark.parametrize(
    "matrix",
    [
        # partial pivoting exchanges no rows of these two (checked below), so scipy's factors are ours:
        # column-diagonally dominant, and the scaled Gram matrix of ``setup``
        lambda rng: rng.standard_normal((12, 12)) + np.diag(np.full(12, 30.0)),
        lambda rng: scaled_gram(rng.standard_normal((6, 40)), 1e-5),
    ],
    ids=["dominant", "scaled-gram"],
)
def test_unpivoted_lu_gives_the_factors_of_the_matrix(matrix):
    a = matrix(np.random.default_rng(0))
    lower, upper = (f.numpy() for f in ref.lu_without_pivoting(t64(a)))
    np.testing.assert_array_equal(np.triu(lower, 1), 0)
    np.testing.assert_array_equal(np.diag(lower), 1)
    np.testing.assert_array_equal(np.tril(upper, -1), 0)
    assert_close(lower @ upper, a, 1e-14)
    perm, lower_p, upper_p = scipy.linalg.lu(a)
    np.testing.assert_array_equal(perm, np.eye(len(a)))
    assert_close(lower, lower_p, 1e-12)
    assert_close(upper, upper_p, 1e-12)


@pytest.mark.parametrize("damp", [1e-2, 1e-5])
def test_dynamic_inverse_of_a_full_window_is_the_dense_inverse(damp):
    rng = np.random.default_rng(1)
    window, x = rng.standard_normal((M, D)), rng.standard_normal(D)
    inverse = ref.DynamicInverse(t64(window), damp)
    expected = dense_inverse(window, damp)
    assert_close(inverse.mul(t64(x)), expected @ x, tolerance(window, damp))
    # the window's own gradients: the products the optimizer takes
    for g in window:
        assert_close(inverse.mul(t64(g)), expected @ g, tolerance(window, damp))


def test_coefficients_and_denominators_follow_the_woodbury_recursion_after_replacements():
    """Row i of B Gᵀ is v_i = F_{i-1}⁻¹ g_i (F_{i-1}: the damped Fisher of the rows above i) and
    denom_i = m + g_iᵀ v_i, also after the ring buffer has wrapped, when ``setup`` rebuilds only
    the rows of B from the replaced one on."""
    rng = np.random.default_rng(2)
    damp = 1e-2
    inverse = ref.DynamicInverse(torch.zeros((M, D), dtype=torch.float64), damp)
    window = np.zeros((M, D))
    for k in range(2 * M + 3):
        window[k % M] = rng.standard_normal(D)
        inverse.update(t64(window[k % M]))
        assert inverse.last == (k + 1) % M
        for i in range(M):
            above = window[:i]
            f_inv = np.linalg.inv(damp * np.eye(D) + above.T @ above / M)
            v = f_inv @ window[i]
            assert_close(inverse.coef[i] @ inverse.grads, v, 1e-10)
            np.testing.assert_allclose(inverse.denom[i].item(), M + window[i] @ v, rtol=1e-12)


@pytest.mark.parametrize("damp", [1e-2, 1e-5])
def test_update_mul_on_a_zero_initialised_ring_buffer_is_the_dense_inverse(damp):
    """Before the window fills, F is damp I plus the gradients seen so far over m; then the oldest
    gradient is replaced, for 3 m + 3 steps."""
    rng = np.random.default_rng(3)
    inverse = ref.DynamicInverse(torch.zeros((M, D), dtype=torch.float64), damp)
    window = np.zeros((M, D))
    for k in range(3 * M + 3):
        g = rng.standard_normal(D)
        window[k % M] = g
        expected = dense_inverse(window, damp)
        assert_close(inverse.update_mul(t64(g)), expected @ g, tolerance(window, damp))
        x = rng.standard_normal(D)
        assert_close(inverse.mul(t64(x)), expected @ x, tolerance(window, damp))
    np.testing.assert_array_equal(inverse.grads.numpy(), window)


def test_update_then_mul_equals_update_mul():
    rng = np.random.default_rng(4)
    window = rng.standard_normal((M, D))
    first, second = ref.DynamicInverse(t64(window), 1e-3), ref.DynamicInverse(t64(window), 1e-3)
    for _ in range(M + 2):
        g = t64(rng.standard_normal(D))
        first.update(g)
        assert_close(first.mul(g), second.update_mul(g).numpy(), 1e-12)


def test_any_window_size_is_accepted():
    """The reference refuses m > 1024 even on the CPU (its guard's missing parentheses)."""
    rng = np.random.default_rng(5)
    window, x = rng.standard_normal((1100, 4)), rng.standard_normal(4)
    inverse = ref.DynamicInverse(t64(window), 1e-2)
    assert_close(inverse.mul(t64(x)), dense_inverse(window, 1e-2) @ x, tolerance(window, 1e-2))


@pytest.mark.parametrize("damp", [1e-2, 1e-5])
def test_dense_woodbury_is_the_dense_inverse(damp):
    window = np.random.default_rng(6).standard_normal((M, D))
    expected = dense_inverse(window, damp)
    assert_close(ref.DenseWoodbury(t64(window), damp).H, expected, tolerance(window, damp))


@pytest.mark.parametrize("block_size", [12, 10, 50, 64], ids=["remainder", "exact", "one-block", "larger"])
def test_static_block_inverse_mul_and_diag_are_the_block_diagonal_inverse(block_size):
    rng = np.random.default_rng(7)
    damp = 1e-3
    window, x = rng.standard_normal((M, D)), rng.standard_normal(D)
    grads = t64(window)
    inverse = ref.StaticBlockInverse(grads, block_size, damp)
    np.testing.assert_array_equal(grads.numpy(), window)  # unlike the reference's, the input is kept
    expected = block_diagonal_inverse(window, damp, block_size)
    rtol = tolerance(window, damp)
    assert_close(inverse.mul(t64(x)), expected @ x, rtol)
    assert_close(inverse.diag(), np.diag(expected), rtol)


def test_static_batch_inverse_takes_blocks_of_a_batch_independently():
    rng = np.random.default_rng(8)
    blocks, x = rng.standard_normal((3, M, 7)), rng.standard_normal((3, 7))
    inverse = ref.StaticBatchInverse(t64(blocks), 0.1)
    for b in range(3):
        expected = dense_inverse(blocks[b], 0.1)
        assert_close(inverse.mul(t64(x))[b], expected @ x[b], 1e-12)
        assert_close(inverse.diag()[b], np.diag(expected), 1e-12)


def dense_mfac_trajectory(w0, grads, lr, momentum, weight_decay, num_grads, damp, frozen=None):
    """The reference optimizer's iterates by dense inverses: numpy float64 on the flat weights."""
    w = w0.copy()
    free = np.ones(w.size, bool) if frozen is None else ~frozen
    window = np.zeros((num_grads, free.sum()))
    velocity = np.zeros(free.sum())
    trajectory = []
    for k, grad in enumerate(grads):
        g = (grad + weight_decay * w)[free]
        window[k % num_grads] = g
        update = dense_inverse(window, damp) @ g
        if momentum > 0:
            velocity = momentum * velocity + (1 - momentum) * update
            update = velocity
        w[free] -= lr * update
        trajectory.append(w.copy())
    return trajectory


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("sparse", [False, True])
def test_reference_optimizer_follows_the_dense_iteration(momentum, weight_decay, sparse):
    rng = np.random.default_rng(9)
    shapes = [(5, 4), (30,)]
    w0 = rng.standard_normal(50)
    if sparse:
        w0[rng.choice(50, 12, replace=False)] = 0.0
    grads = rng.standard_normal((2 * M + 3, 50))
    options = {"lr": 0.05, "momentum": momentum, "weight_decay": weight_decay, "num_grads": M, "damp": 1e-2}
    params = [t64(w0[:20]).reshape(shapes[0]), t64(w0[20:])]
    optimizer = ref.ReferenceMFAC(params, sparse=sparse, dtype=torch.float64, **options)
    expected = dense_mfac_trajectory(w0, grads, frozen=(w0 == 0) if sparse else None, **options)
    for grad, w_expected in zip(grads, expected):
        params[0].grad, params[1].grad = t64(grad[:20]).reshape(shapes[0]), t64(grad[20:])
        optimizer.step()
        assert_close(torch.cat([p.reshape(-1) for p in params]), w_expected, 1e-10)
    if sparse:
        np.testing.assert_array_equal(params[1].numpy()[w0[20:] == 0], 0.0)


# ---------------------------------------------------------------------------------------------
# optkit's M-FAC (solvers.curvature) against the reference, float64


@pytest.mark.parametrize("as_tensor", [True, False], ids=["torch", "numpy"])
@pytest.mark.parametrize("damp", [1e-2, 1e-5])
def test_mfac_inverse_equals_the_reference_static_algorithm(as_tensor, damp):
    from optkit.linop import diagonal
    from solvers.curvature import MFACInverse

    rng = np.random.default_rng(10)
    window, x = rng.standard_normal((M, D)), rng.standard_normal(D)
    reference = ref.StaticBatchInverse(t64(window)[None], damp)
    operator = MFACInverse(t64(window) if as_tensor else window, damp)
    rtol = tolerance(window, damp)
    as_numpy = (lambda a: a.numpy()) if as_tensor else np.asarray
    assert_close(as_numpy(operator @ (t64(x) if as_tensor else x)), reference.mul(t64(x)[None])[0].numpy(), rtol)
    assert_close(as_numpy(diagonal(operator)), reference.diag()[0].numpy(), rtol)


@pytest.mark.parametrize("block_size", [12, 10, 50, 64], ids=["remainder", "exact", "one-block", "larger"])
def test_block_mfac_inverse_equals_the_reference_blocked_static_algorithm(block_size):
    from optkit.linop import diagonal
    from solvers.curvature import BlockMFACInverse

    rng = np.random.default_rng(11)
    damp = 1e-3
    window, x = rng.standard_normal((M, D)), rng.standard_normal(D)
    reference = ref.StaticBlockInverse(t64(window), block_size, damp)
    operator = BlockMFACInverse(t64(window), damp, block_size)
    rtol = tolerance(window, damp)
    assert_close(operator @ t64(x), reference.mul(t64(x)).numpy(), rtol)
    assert_close(diagonal(operator), reference.diag().numpy(), rtol)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("sparse", [False, True])
def test_mfac_optimizer_follows_the_reference_trajectory(momentum, weight_decay, sparse):
    """2 m + 3 steps on fixed gradients over two parameters: the window fills, then wraps twice."""
    from solvers.curvature import MFAC

    rng = np.random.default_rng(12)
    w0 = rng.standard_normal(50)
    if sparse:
        w0[rng.choice(50, 12, replace=False)] = 0.0
    grads = rng.standard_normal((2 * M + 3, 50))
    options = {"lr": 0.05, "momentum": momentum, "weight_decay": weight_decay, "num_grads": M, "damp": 1e-2}

    def parameters():
        return [torch.nn.Parameter(t64(w0[:20]).reshape(5, 4)), torch.nn.Parameter(t64(w0[20:]))]

    ours, theirs = parameters(), parameters()
    optimizer = MFAC(ours, sparse=sparse, **options)
    reference = ref.ReferenceMFAC(theirs, sparse=sparse, dtype=torch.float64, **options)
    for grad in grads:
        for params in (ours, theirs):
            params[0].grad, params[1].grad = t64(grad[:20]).reshape(5, 4), t64(grad[20:])
        optimizer.step()
        reference.step()
        expected = torch.cat([p.detach().reshape(-1) for p in theirs]).numpy()
        assert_close(torch.cat([p.detach().reshape(-1) for p in ours]), expected, 1e-10)
    x = t64(rng.standard_normal(reference.hinv.d))
    assert_close(optimizer.ihvp(x), reference.hinv.mul(x).numpy(), 1e-10)
