"""The curvature experiments' problems: the mixture, the MLP, the diagonal network, colored MNIST."""

import numpy as np
import pytest

from problems.curvature import DiagonalNetwork, colored_mnist_environments, diagonal_network_data, gaussian_mixture

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def test_gaussian_mixture_is_seeded_balanced_and_clustered():
    X, y = gaussian_mixture(4, 10, 402, separation=20.0, seed=1)
    assert X.shape == (402, 10) and X.dtype == np.float64 and y.dtype == np.int64
    assert sorted(np.bincount(y)) == [100, 100, 101, 101]
    X2, y2 = gaussian_mixture(4, 10, 402, separation=20.0, seed=1)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    # well separated: every point is nearest to its own class mean
    means = np.array([X[y == c].mean(0) for c in range(4)])
    assert np.all(np.argmin(((X[:, None, :] - means[None]) ** 2).sum(2), axis=1) == y)
    with pytest.raises(ValueError, match="k"):
        gaussian_mixture(1, 10, 100)


def test_mlp_has_the_stated_size_and_is_seeded():
    torch = pytest.importorskip("torch")
    from problems.curvature import mlp

    model = mlp(20, 10, hidden=32, depth=2, seed=3, dtype=torch.float64)
    assert sum(p.numel() for p in model.parameters()) == 2058
    assert all(p.dtype == torch.float64 for p in model.parameters())
    again = mlp(20, 10, hidden=32, depth=2, seed=3, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_gauss_newton_trace_is_the_hessian_trace_at_an_interpolating_point():
    torch = pytest.importorskip("torch")
    X, y, beta = diagonal_network_data(8, 12, 2, seed=0)
    np.testing.assert_allclose(X @ beta, y)
    net = DiagonalNetwork(X, y)
    rng = np.random.default_rng(1)
    v = rng.uniform(0.1, 1.0, 12)
    w = np.concatenate([np.sqrt(beta + v**2), v])  # u*u - v*v = beta: zero loss
    assert net.loss(w) < 1e-28

    def loss(w):
        r = torch.from_numpy(X) @ (w[:12] ** 2 - w[12:] ** 2) - torch.from_numpy(y)
        return 0.5 * (r * r).mean()

    H = torch.func.hessian(loss)(torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(net.gauss_newton_trace(w), np.trace(H), rtol=1e-12)


def test_sgd_takes_the_batch_one_gradient_step():
    X, y, _ = diagonal_network_data(5, 6, 2, seed=2)
    net = DiagonalNetwork(X, y)
    w0 = net.init(0.7)
    j = np.random.default_rng(4).integers(0, 5, 1)[0]
    r = X[j] @ net.beta(w0) - y[j]
    grad = r * net.jacobian(w0)[j]
    np.testing.assert_allclose(net.sgd(w0, 0.01, 1, seed=4), w0 - 0.01 * grad, rtol=1e-14)
    assert net.loss(net.sgd(w0, 10.0, 50, seed=0)) == float("inf")


def test_colored_mnist_colors_follow_the_label_at_each_environment_rate():
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (6000, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, 6000).astype(np.uint8)
    envs = colored_mnist_environments((0.1, 0.5, 0.9), images=images, labels=labels, seed=0)
    assert [x.shape for x, _ in envs] == [(2000, 2, 14, 14)] * 3
    for (x, y), flip in zip(envs, (0.1, 0.5, 0.9)):
        green = (x[:, 1].sum((1, 2)) > 0).numpy()
        assert np.all((x[:, 0].sum((1, 2)) > 0).numpy() != green)  # exactly one channel carries the digit
        disagreement = np.mean(green != y.numpy().astype(bool))
        assert abs(disagreement - flip) < 0.04
    with pytest.raises(ValueError, match="flips"):
        colored_mnist_environments((1.5,), images=images, labels=labels)
