"""Problems of the curvature experiments (``optkit.analysis``): plain functions, not registered.

- :func:`gaussian_mixture`: a seeded ``k``-class Gaussian mixture (Sagun et al.'s bulk-and-outliers data);
- :func:`digits`, :func:`mnist_classification`: real classification data (scikit-learn's 8 x 8
  digits, a seeded subsample of the MNIST test images) as torch tensors, for the same experiment;
- :func:`mlp`: a small ReLU multilayer perceptron;
- :func:`diagonal_network_data`, :class:`DiagonalNetwork`: the diagonal linear network
  ``f(x) = x . (u*u - v*v)`` on a sparse regression (Wu & Su's stability experiment), with its
  batch-1 SGD and the exact Gauss-Newton trace;
- :func:`colored_mnist_environments`: colored-MNIST environments (Arjovsky et al.'s recipe) from the
  MNIST test images, for the alignment penalties.

torch is imported only by :func:`digits`, :func:`mnist_classification`, :func:`mlp` and
:func:`colored_mnist_environments`; scikit-learn only by :func:`digits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from optkit.backend import optional_import
from optkit.validation import check_int, check_positive

__all__ = [
    "DiagonalNetwork",
    "colored_mnist_environments",
    "diagonal_network_data",
    "digits",
    "gaussian_mixture",
    "mlp",
    "mnist_classification",
]

MNIST_TEST_SIZE = 10_000


def gaussian_mixture(
    k: int, dim: int, n: int, *, separation: float = 3.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of a ``k``-class Gaussian mixture in ``dim`` dimensions.

    The class means are ``separation`` times independent standard normal vectors divided by
    ``sqrt(dim)`` (so their distance is about ``separation * sqrt(2)``); each point is its class mean
    plus standard normal noise. Classes are balanced (``n`` split as evenly as possible).

    Returns
    -------
    X : ndarray (n, dim), float64
    y : ndarray (n,), int64, labels ``0 .. k-1``
    """
    k = check_int("k", k, minimum=2)
    dim = check_int("dim", dim, minimum=1)
    n = check_int("n", n, minimum=k)
    separation = check_positive("separation", separation)
    rng = np.random.default_rng(seed)
    means = separation * rng.standard_normal((k, dim)) / np.sqrt(dim)
    y = rng.permutation(np.arange(n) % k)
    X = means[y] + rng.standard_normal((n, dim))
    return X, y.astype(np.int64)


def digits(*, seed: int = 0, dtype: Any = None) -> tuple[Any, Any]:
    """scikit-learn's 8 x 8 handwritten digits (``load_digits``, bundled: no file is read from
    ``$OPTKIT_DATA``) as torch tensors, rows in a seeded random order.

    Parameters
    ----------
    seed : int
        The order of the rows: ``numpy.random.default_rng(seed).permutation(1797)``.
    dtype : torch.dtype, optional
        Of ``X``; default torch's default dtype.

    Returns
    -------
    X : tensor (1797, 64), ``dtype``, the 17 grey levels ``0 .. 16`` divided by 16 (in [0, 1])
    y : tensor (1797,), int64, the digits ``0 .. 9`` (174 to 183 of each)
    """
    torch = optional_import("torch", "problems.curvature.digits")
    sklearn_datasets = optional_import("sklearn.datasets", "problems.curvature.digits")
    seed = check_int("seed", seed, minimum=0)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    data = sklearn_datasets.load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    X = torch.from_numpy(data.data[order] / 16.0).to(dtype)
    return X, torch.from_numpy(data.target[order].astype(np.int64))


def mnist_classification(
    n: int | None = None, *, seed: int = 0, dtype: Any = None, images: Any = None, labels: Any = None
) -> tuple[Any, Any]:
    """A seeded subsample of ``n`` MNIST test images, flattened, as torch tensors.

    Parameters
    ----------
    n : int, optional
        ``1 <= n <= 10000``; default all 10000 (in a seeded order).
    seed : int
        The subsample: the first ``n`` of ``numpy.random.default_rng(seed).permutation(10000)``.
    dtype : torch.dtype, optional
        Of ``X``; default torch's default dtype.
    images, labels : arrays (10000, 28, 28) and (10000,), optional
        Default: :func:`problems.mnist.load_mnist_images` / ``load_mnist_labels`` (``$OPTKIT_DATA``;
        ``FileNotFoundError`` naming it when absent).

    Returns
    -------
    X : tensor (n, 784), ``dtype``, the pixels divided by 255 (in [0, 1]), rows of the images
        read row-major
    y : tensor (n,), int64, the digits ``0 .. 9``
    """
    torch = optional_import("torch", "problems.curvature.mnist_classification")
    if n is not None:
        n = check_int("n", n, minimum=1)
        if n > MNIST_TEST_SIZE:
            raise ValueError(f"n must be at most the {MNIST_TEST_SIZE} MNIST test images, got {n}")
    seed = check_int("seed", seed, minimum=0)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if images is None or labels is None:
        from .mnist import load_mnist_images, load_mnist_labels

        images, labels = load_mnist_images(), load_mnist_labels()
    images, labels = np.asarray(images), np.asarray(labels)
    if images.shape != (MNIST_TEST_SIZE, 28, 28) or labels.shape != (MNIST_TEST_SIZE,):
        raise ValueError(
            f"images and labels must have shapes (10000, 28, 28) and (10000,), got {images.shape} and {labels.shape}"
        )
    pick = np.random.default_rng(seed).permutation(MNIST_TEST_SIZE)[: MNIST_TEST_SIZE if n is None else n]
    X = torch.from_numpy(images[pick].reshape(len(pick), 784) / 255.0).to(dtype)
    return X, torch.from_numpy(labels[pick].astype(np.int64))


def mlp(dim: int, classes: int, hidden: int = 32, depth: int = 2, *, seed: int = 0, dtype: Any = None) -> Any:
    """A ReLU perceptron ``dim -> hidden (x depth) -> classes`` (``torch.nn.Sequential``), seeded.

    ``dtype`` defaults to torch's default dtype. With ``dim = 20``, ``hidden = 32``, ``depth = 2``
    and 10 classes it has 2,058 parameters.
    """
    torch = optional_import("torch", "problems.curvature.mlp")
    dim = check_int("dim", dim, minimum=1)
    classes = check_int("classes", classes, minimum=1)
    hidden = check_int("hidden", hidden, minimum=1)
    depth = check_int("depth", depth, minimum=1)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers, width = [], dim
        for _ in range(depth):
            layers += [torch.nn.Linear(width, hidden, dtype=dtype), torch.nn.ReLU()]
            width = hidden
        layers.append(torch.nn.Linear(width, classes, dtype=dtype))
        return torch.nn.Sequential(*layers)
    finally:
        torch.random.set_rng_state(gen_state)


def diagonal_network_data(n: int = 20, d: int = 40, sparsity: int = 3, *, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A sparse noiseless regression: ``X`` standard normal ``(n, d)``, ``beta*`` with ``sparsity``
    entries equal to 1, ``y = X beta*``. Over-parametrised when ``n < d``: a manifold of interpolating
    minima, among which SGD's stability selects (Wu & Su, section 14 of the notes).

    Returns
    -------
    X : ndarray (n, d), y : ndarray (n,), beta : ndarray (d,); float64
    """
    n = check_int("n", n, minimum=1)
    d = check_int("d", d, minimum=1)
    sparsity = check_int("sparsity", sparsity, minimum=1)
    if sparsity > d:
        raise ValueError(f"sparsity must be at most d = {d}, got {sparsity}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    beta = np.zeros(d)
    beta[rng.choice(d, sparsity, replace=False)] = 1.0
    return X, X @ beta, beta


@dataclass
class DiagonalNetwork:
    """The diagonal linear network ``f(x) = x . (u*u - v*v)`` with loss ``(1/2n) sum_j (f(x_j) - y_j)^2``.

    The variable is ``w = (u, v)`` of length ``2d``; numpy, float64.
    """

    X: np.ndarray
    y: np.ndarray

    def init(self, scale: float = 1.0) -> np.ndarray:
        """``u = v = scale``: ``beta = 0``, the usual balanced start."""
        return np.full(2 * self.X.shape[1], float(scale))

    def beta(self, w: np.ndarray) -> np.ndarray:
        d = self.X.shape[1]
        return w[:d] ** 2 - w[d:] ** 2

    def loss(self, w: np.ndarray) -> float:
        """``(1/2n) ||X beta(w) - y||^2``; ``inf`` where it overflows (a diverged run)."""
        with np.errstate(over="ignore", invalid="ignore"):
            r = self.X @ self.beta(w) - self.y
            value = float(0.5 * np.mean(r * r))
        return value if np.isfinite(value) else float("inf")

    def jacobian(self, w: np.ndarray) -> np.ndarray:
        """``J (n, 2d)``: row ``j`` is ``grad f(x_j) = (2 x_j * u, -2 x_j * v)``."""
        d = self.X.shape[1]
        return np.hstack([2 * self.X * w[:d], -2 * self.X * w[d:]])

    def gauss_newton_trace(self, w: np.ndarray) -> float:
        """``tr((1/n) J^T J) = (1/n) sum_j ||grad f(x_j)||^2``: the Hessian's trace at an
        interpolating point (where the residual term vanishes)."""
        J = self.jacobian(w)
        return float(np.sum(J * J) / J.shape[0])

    def sgd(self, w: np.ndarray, eta: float, steps: int, *, seed: int = 0) -> np.ndarray:
        """Batch-1 SGD on ``(1/2) (f(x_j) - y_j)^2``, ``j`` drawn uniformly with replacement.

        Returns the last iterate (a copy); a diverging run returns non-finite entries.
        """
        eta = check_positive("eta", eta)
        steps = check_int("steps", steps, minimum=0)
        rng = np.random.default_rng(seed)
        d = self.X.shape[1]
        u, v = w[:d].copy(), w[d:].copy()
        X, y = self.X, self.y
        with np.errstate(over="ignore", invalid="ignore"):
            for j in rng.integers(0, X.shape[0], steps):
                x = X[j]
                r = x @ (u * u - v * v) - y[j]
                if not np.isfinite(r):
                    break
                gx = (2 * eta * r) * x
                u, v = u - gx * u, v + gx * v
        return np.concatenate([u, v])


def colored_mnist_environments(
    flips: tuple[float, ...] = (0.1, 0.2, 0.9),
    *,
    label_noise: float = 0.25,
    seed: int = 0,
    images: Any = None,
    labels: Any = None,
) -> list[tuple[Any, Any]]:
    """Colored-MNIST environments (Arjovsky et al. 2019) from the MNIST test images.

    The 10,000 test images are shuffled (seeded) and split evenly into ``len(flips)`` environments.
    In each: the binary label is ``digit < 5`` flipped with probability ``label_noise``; the color is
    the label flipped with the environment's probability ``flips[e]``; the image (downsampled to
    14 x 14, scaled to [0, 1]) goes into the red or the green channel by its color. The color predicts
    the label well in the first environments and badly in the last (the test environment).

    Parameters
    ----------
    flips : tuple of floats in [0, 1]
    label_noise : float in [0, 1]
    seed : int
    images, labels : arrays, optional
        Default: :func:`problems.mnist.load_mnist_images` / ``load_mnist_labels`` (``$OPTKIT_DATA``).

    Returns
    -------
    list of ``(x, y)``: x a float32 tensor ``(m, 2, 14, 14)``, y a float32 tensor ``(m,)`` of 0/1.
    """
    torch = optional_import("torch", "problems.curvature.colored_mnist_environments")
    if not flips or not all(0.0 <= float(f) <= 1.0 for f in flips):
        raise ValueError(f"flips must be a non-empty tuple of probabilities in [0, 1], got {flips!r}")
    if not 0.0 <= float(label_noise) <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise!r}")
    if images is None or labels is None:
        from .mnist import load_mnist_images, load_mnist_labels

        images, labels = load_mnist_images(), load_mnist_labels()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    small = np.asarray(images, dtype=np.float32)[order][:, ::2, ::2] / 255.0
    digits = np.asarray(labels)[order]
    envs = []
    for e, idx in enumerate(np.array_split(np.arange(len(digits)), len(flips))):
        y = (digits[idx] < 5).astype(np.float32)
        y = np.abs(y - (rng.random(len(idx)) < label_noise))
        color = np.abs(y - (rng.random(len(idx)) < float(flips[e]))).astype(np.int64)
        x = np.zeros((len(idx), 2, 14, 14), dtype=np.float32)
        x[np.arange(len(idx)), color] = small[idx]
        envs.append((torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))))
    return envs
