"""The curvature experiments' problems: the mixture, the MLP, the diagonal network, colored MNIST."""

from pathlib import Path

import numpy as np
import pytest

from problems.curvature import (
    DiagonalNetwork,
    colored_mnist_environments,
    diagonal_network_data,
    digits,
    gaussian_mixture,
    mnist_classification,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HAS_MNIST = all(
    (SHARED_DATA / "mnist" / f"t10k-{kind}-idx{d}-ubyte.gz").exists() for kind, d in (("images", 3), ("labels", 1))
)
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=f"MNIST test images not in {SHARED_DATA}")


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


def test_digits_are_sklearns_in_a_seeded_order():
    torch = pytest.importorskip("torch")
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    X, y = digits(seed=3, dtype=torch.float64)
    assert X.shape == (1797, 64) and X.dtype == torch.float64 and y.shape == (1797,) and y.dtype == torch.int64
    assert X.min().item() == 0.0 and X.max().item() == 1.0
    assert torch.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    raw = sklearn_datasets.load_digits()
    order = np.random.default_rng(3).permutation(1797)
    np.testing.assert_array_equal(X.numpy() * 16, raw.data[order])
    np.testing.assert_array_equal(y.numpy(), raw.target[order])
    X2, y2 = digits(seed=3, dtype=torch.float64)
    assert torch.equal(X, X2) and torch.equal(y, y2)
    X4, _ = digits(seed=4)
    assert X4.dtype == torch.get_default_dtype() and not torch.equal(X4.double(), X)
    with pytest.raises(ValueError, match="seed"):
        digits(seed=-1)


@pytest.fixture(scope="module")
def fake_mnist():
    """Random 'images' and labels of MNIST's test shapes: any row can be told apart from the others."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (10_000, 28, 28)).astype(np.uint8), rng.integers(0, 10, 10_000).astype(np.uint8)


def test_mnist_classification_is_a_seeded_subsample_of_the_images(fake_mnist):
    torch = pytest.importorskip("torch")
    images, labels = fake_mnist
    X, y = mnist_classification(500, seed=2, images=images, labels=labels, dtype=torch.float64)
    assert X.shape == (500, 784) and X.dtype == torch.float64 and y.shape == (500,) and y.dtype == torch.int64
    pixels = np.rint(X.numpy() * 255).astype(np.uint8)
    np.testing.assert_allclose(X.numpy(), pixels / 255.0, rtol=0, atol=1e-15)
    # every row is one image (flattened row-major) with its label, no image twice
    index = {row.tobytes(): i for i, row in enumerate(images.reshape(10_000, 784))}
    picked = [index[row.tobytes()] for row in pixels]
    assert len(set(picked)) == 500
    np.testing.assert_array_equal(y.numpy(), labels[picked])
    X2, y2 = mnist_classification(500, seed=2, images=images, labels=labels, dtype=torch.float64)
    assert torch.equal(X, X2) and torch.equal(y, y2)
    X3, _ = mnist_classification(500, seed=3, images=images, labels=labels, dtype=torch.float64)
    assert not torch.equal(X, X3)
    Xall, yall = mnist_classification(images=images, labels=labels)
    assert Xall.shape == (10_000, 784) and Xall.dtype == torch.get_default_dtype()
    assert sorted(yall.tolist()) == sorted(labels.tolist())


@pytest.mark.parametrize("n", [0, -5, 10_001, 2.5, True])
def test_mnist_classification_rejects_a_bad_n(n, fake_mnist):
    pytest.importorskip("torch")
    images, labels = fake_mnist
    with pytest.raises(ValueError, match="n must"):
        mnist_classification(n, images=images, labels=labels)


def test_mnist_classification_rejects_wrong_shapes(fake_mnist):
    pytest.importorskip("torch")
    images, labels = fake_mnist
    with pytest.raises(ValueError, match="images and labels"):
        mnist_classification(10, images=images[:, :14], labels=labels)


def test_mnist_classification_names_optkit_data_when_absent(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    monkeypatch.setenv("OPTKIT_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="OPTKIT_DATA"):
        mnist_classification(10)


@needs_mnist
def test_mnist_classification_matches_the_raw_test_images(monkeypatch):
    torch = pytest.importorskip("torch")
    from problems.mnist import load_mnist_images, load_mnist_labels

    monkeypatch.setenv("OPTKIT_DATA", str(SHARED_DATA))
    X, y = mnist_classification(2000, seed=0, dtype=torch.float32)
    assert X.shape == (2000, 784) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert X.min().item() == 0.0 and X.max().item() == 1.0
    images, labels = load_mnist_images(), load_mnist_labels()
    pick = np.random.default_rng(0).permutation(10_000)[:2000]
    np.testing.assert_array_equal(np.rint(X.numpy() * 255).astype(np.uint8), images[pick].reshape(2000, 784))
    np.testing.assert_array_equal(y.numpy(), labels[pick])
    assert torch.bincount(y, minlength=10).min().item() >= 150  # every digit is there (about 200 each)
    X2, y2 = mnist_classification(2000, seed=0, dtype=torch.float32)
    assert torch.equal(X, X2) and torch.equal(y, y2)
    assert torch.bincount(mnist_classification(seed=0)[1]).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
