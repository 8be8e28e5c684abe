"""Entropic optimal-transport problems (:class:`optkit.OTProblem`), all costs scaled to max 1.

Registered problems (parameters; ``reg = 1 / eta``):

``ot/random-assignment`` (``n``, ``eta``, ``seed``)
    ``C_ij ~ U[0, 1]`` i.i.d., divided by its maximum; uniform marginals ``a = b = 1/n``.
    The SNS paper's "random assignment" case: the unregularised optimum is a permutation.
``ot/point-clouds`` (``n``, ``m``, ``eta``, ``seed``, ``components``, ``marginals``)
    ``n`` source and ``m`` target points in 2-D, each cloud drawn from its own mixture of
    ``components`` Gaussians (random centres in [-1, 1]^2, standard deviations in
    [0.05, 0.3]); squared-Euclidean cost divided by its maximum; uniform marginals, or
    seeded random ones (``marginals="random"``).
``ot/mnist`` (``i``, ``j``, ``cost``, ``eta``, ``floor``)
    Two MNIST test digits (indices ``i`` and ``j`` of ``t10k-images-idx3-ubyte.gz``) as
    weights on the 28 x 28 pixel grid, n = m = 784. Read from the data set
    ``mnist/t10k-images`` under ``$OPTKIT_DATA`` (:mod:`optkit.data`); nothing is downloaded.
``ot/digits`` (``i``, ``j``, ``cost``, ``eta``, ``floor``)
    Two of scikit-learn's bundled 8 x 8 digits (``sklearn.datasets.load_digits``, always
    available when scikit-learn is installed), n = m = 64.

Image weights: ``w = img / sum(img)``, then ``w += floor`` and ``w /= sum(w)``, so every
weight is ``> 0`` (``floor`` default 1e-6, relative to unit mass). Grid costs on the pixel
coordinates ``(r, c)``: ``cost="l1"``: ``|r - r'| + |c - c'|`` (W1), ``cost="l2"``: the
squared Euclidean distance ``(r - r')^2 + (c - c')^2`` (W2), each divided by its maximum.

Metadata of every problem: ``eta``, ``reg``, ``n``, ``m``, ``cost`` (``"uniform"``,
``"sqeuclidean"``, ``"l1"`` or ``"l2"``), the generator's parameters, and when POT is
installed and ``n * m <= EMD_MAX_SIZE`` (or ``emd=True``) ``emd_cost``: the exact
unregularised OT cost ``ot.emd2(a, b, C, numItermax=10**7)``, as a :class:`LazyFloat`,
computed on first use (``float(...)``) and then kept, once per problem build.

Suites: ``ot-quick`` (seconds; square and rectangular, uniform and non-uniform marginals),
``ot-paper`` (the SNS paper's cases, eta = 1200: random assignment n = 500, MNIST L1 and L2,
and random assignment at n = 2000), and one entry of ``demo``. float32 runs of either:
``optkit bench ... --dtype float32``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from optkit.backend import has_module, optional_import
from optkit.ot_problem import OTProblem
from optkit.registry import register_problem, register_suite
from optkit.validation import check_choice, check_int, check_positive

from .mnist import MNIST_IMAGES, load_mnist_images

__all__ = [
    "EMD_MAX_SIZE",
    "MNIST_IMAGES",
    "LazyFloat",
    "digits",
    "grid_cost",
    "image_weights",
    "load_mnist_images",
    "mnist",
    "point_clouds",
    "random_assignment",
]

#: Above this many cost entries ``emd_cost`` is left out unless ``emd=True`` (the network
#: simplex takes seconds at n = 2000 and grows roughly cubically).
EMD_MAX_SIZE = 3000 * 3000

COSTS = ("l1", "l2")


class LazyFloat:
    """A number computed on first use and then kept: ``float(x)`` runs ``compute()`` once.

    Copies of a problem's metadata share the object, so the value is computed at most once
    per problem build. ``repr``/``str`` do not compute it (printing metadata stays cheap);
    :attr:`computed` says whether it has been.
    """

    __slots__ = ("_compute", "_lock", "_value")

    def __init__(self, compute: Callable[[], float]) -> None:
        self._compute: Callable[[], float] | None = compute
        self._value: float | None = None
        self._lock = threading.Lock()

    @property
    def computed(self) -> bool:
        """Whether the value is known."""
        return self._value is not None

    def __float__(self) -> float:
        with self._lock:
            if self._value is None:
                assert self._compute is not None
                self._value = float(self._compute())
                self._compute = None  # drop the references to the arrays
        return self._value

    def __repr__(self) -> str:
        return repr(self._value) if self._value is not None else "LazyFloat(not computed yet)"

    __str__ = __repr__

    def __getstate__(self) -> tuple:
        return (self._compute, self._value)

    def __setstate__(self, state: tuple) -> None:
        self._compute, self._value = state
        self._lock = threading.Lock()


def _emd_cost(a: np.ndarray, b: np.ndarray, C: np.ndarray) -> float:
    ot = optional_import("ot", "the emd_cost of OT problems")
    return float(ot.emd2(a, b, C, numItermax=10**7))


def _problem(name: str, a: np.ndarray, b: np.ndarray, C: np.ndarray, eta: float, emd: bool | None, **meta: Any):
    """The :class:`OTProblem` with the shared metadata (and the lazy ``emd_cost``)."""
    reg = 1.0 / eta
    metadata: dict[str, Any] = {"eta": float(eta), "reg": reg, "n": int(a.shape[0]), "m": int(b.shape[0]), **meta}
    if emd is None:
        emd = C.size <= EMD_MAX_SIZE and has_module("ot")
    if emd:
        optional_import("ot", f"the emd_cost of problem {name!r} (pass emd=False to skip it)")
        metadata["emd_cost"] = LazyFloat(functools.partial(_emd_cost, a, b, C))
    return OTProblem(a, b, C, reg, name=name, metadata=metadata)


def _check_eta(eta: Any) -> float:
    return check_positive("eta", eta)


def _check_emd(emd: Any) -> None:
    if emd is not None and not isinstance(emd, bool):
        raise ValueError(f"emd must be True, False or None (automatic), got {emd!r}")


# ----------------------------------------------------------------------------- random assignment


@register_problem("ot/random-assignment")
def random_assignment(n: int = 100, eta: float = 100.0, seed: int = 0, emd: bool | None = None) -> OTProblem:
    """Uniform marginals over ``n`` points, ``C_ij ~ U[0, 1]`` divided by its maximum.

    Parameters
    ----------
    n : int
        Points on each side (``>= 2``).
    eta : float
        Inverse regularisation, ``reg = 1 / eta`` (the SNS paper uses 1200).
    seed : int
        Seed of ``numpy.random.default_rng``.
    emd : bool or None
        Attach the lazy exact cost ``metadata["emd_cost"]``: ``None`` = when POT is installed
        and ``n * n <= EMD_MAX_SIZE``.
    """
    n = check_int("n", n, 2)
    eta = _check_eta(eta)
    seed = check_int("seed", seed, 0)
    _check_emd(emd)
    rng = np.random.default_rng(seed)
    C = rng.random((n, n))
    C /= C.max()
    a = np.full(n, 1.0 / n)
    return _problem("ot/random-assignment", a, a.copy(), C, eta, emd, cost="uniform", seed=seed)


# ----------------------------------------------------------------------------- point clouds


def _mixture(rng: np.random.Generator, size: int, components: int) -> np.ndarray:
    centres = rng.uniform(-1.0, 1.0, (components, 2))
    scales = rng.uniform(0.05, 0.3, components)
    labels = rng.integers(0, components, size)
    return centres[labels] + scales[labels, None] * rng.standard_normal((size, 2))


@register_problem("ot/point-clouds")
def point_clouds(
    n: int = 200,
    eta: float = 100.0,
    seed: int = 0,
    m: int | None = None,
    components: int = 3,
    emd: bool | None = None,
    marginals: str = "uniform",
) -> OTProblem:
    """Two 2-D Gaussian-mixture point clouds, squared-Euclidean cost divided by its maximum.

    Parameters
    ----------
    n, m : int
        Source and target points (``m`` defaults to ``n``; both ``>= 2``).
    eta, seed, emd :
        As :func:`random_assignment`.
    components : int
        Gaussians per mixture (``>= 1``); each cloud draws its own centres and widths.
    marginals : {"uniform", "random"}
        ``"random"``: weights drawn ``U[0.5, 1.5]`` (after the points, from the same seeded
        generator) and normalised to unit mass, so the largest is up to 3x the smallest.
    """
    n = check_int("n", n, 2)
    m = n if m is None else check_int("m", m, 2)
    eta = _check_eta(eta)
    seed = check_int("seed", seed, 0)
    components = check_int("components", components, 1)
    _check_emd(emd)
    check_choice("marginals", marginals, ("uniform", "random"))
    rng = np.random.default_rng(seed)
    xs = _mixture(rng, n, components)
    xt = _mixture(rng, m, components)
    C = ((xs[:, None, :] - xt[None, :, :]) ** 2).sum(axis=-1)
    C /= C.max()
    if marginals == "uniform":
        a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    else:
        a, b = rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, m)
        a, b = a / a.sum(), b / b.sum()
    meta = {"cost": "sqeuclidean", "seed": seed, "components": components, "marginals": marginals}
    return _problem("ot/point-clouds", a, b, C, eta, emd, **meta)


# ----------------------------------------------------------------------------- images


def grid_cost(rows: int, cols: int, cost: str) -> np.ndarray:
    """Ground cost between the pixels of a ``rows x cols`` grid (C order), max 1.

    ``"l1"``: ``|r - r'| + |c - c'|``; ``"l2"``: ``(r - r')^2 + (c - c')^2``. Shape
    ``(rows * cols, rows * cols)``.
    """
    check_choice("cost", cost, COSTS)
    r, c = np.divmod(np.arange(rows * cols), cols)
    dr = np.abs(r[:, None] - r[None, :]).astype(float)
    dc = np.abs(c[:, None] - c[None, :]).astype(float)
    C = dr + dc if cost == "l1" else dr**2 + dc**2
    return C / C.max()


def image_weights(img: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """An image as positive weights of unit mass: ``w = img / sum(img) + floor``, renormalised."""
    w = np.asarray(img, dtype=float).ravel()
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("image pixels must be finite and non-negative")
    total = w.sum()
    w = w / total if total > 0 else np.zeros_like(w)
    w += floor
    return w / w.sum()


def _check_image_params(i: Any, j: Any, cost: Any, eta: Any, floor: Any, emd: Any) -> tuple:
    i, j = check_int("i", i, 0), check_int("j", j, 0)
    check_choice("cost", cost, COSTS)
    eta = _check_eta(eta)
    floor = check_positive("floor", floor)
    _check_emd(emd)
    return i, j, cost, eta, floor, emd


def _image_pair(name: str, images: np.ndarray, i: int, j: int, cost: str, eta: float, floor: float, emd: Any):
    count = images.shape[0]
    for label, k in (("i", i), ("j", j)):
        if k >= count:
            raise ValueError(f"{label} must be an image index < {count}, got {k}")
    rows, cols = images.shape[1:]
    a, b = image_weights(images[i], floor), image_weights(images[j], floor)
    C = grid_cost(rows, cols, cost)
    return _problem(name, a, b, C, eta, emd, cost=cost, i=i, j=j, floor=floor)


@register_problem("ot/mnist")
def mnist(
    i: int = 0, j: int = 1, cost: str = "l2", eta: float = 100.0, floor: float = 1e-6, emd: bool | None = None
) -> OTProblem:
    """Two MNIST test digits (indices ``i``, ``j``) on the 28 x 28 grid, n = m = 784.

    Parameters
    ----------
    i, j : int
        Image indices in the test split, in ``[0, 10000)``.
    cost : {"l1", "l2"}
        ``"l1"``: Manhattan pixel distance (W1); ``"l2"``: squared Euclidean (W2); max 1.
    eta : float
        ``reg = 1 / eta`` (the SNS paper: 1200).
    floor : float
        Mass added to every pixel after normalising (then normalised again), ``> 0``.
    emd : bool or None
        As :func:`random_assignment`.

    Raises ``FileNotFoundError`` (naming ``OPTKIT_DATA``) when the images are absent.
    """
    params = _check_image_params(i, j, cost, eta, floor, emd)
    return _image_pair("ot/mnist", load_mnist_images(), *params)


@functools.lru_cache(maxsize=1)
def _digits_images() -> np.ndarray:
    datasets = optional_import("sklearn.datasets", "problem 'ot/digits'")
    images = np.asarray(datasets.load_digits().images)
    images.flags.writeable = False
    return images


@register_problem("ot/digits")
def digits(
    i: int = 0, j: int = 1, cost: str = "l2", eta: float = 100.0, floor: float = 1e-6, emd: bool | None = None
) -> OTProblem:
    """Two of scikit-learn's 8 x 8 digits (indices ``i``, ``j`` in ``[0, 1797)``), n = m = 64.

    Parameters as :func:`mnist`; the data ship with scikit-learn, so this is always available.
    """
    params = _check_image_params(i, j, cost, eta, floor, emd)
    return _image_pair("ot/digits", _digits_images(), *params)


register_suite(
    "ot-quick",
    [
        "ot/random-assignment:n=100,eta=100",
        "ot/digits:cost=l2,eta=100",
        "ot/point-clouds:n=200,eta=100",
        "ot/point-clouds:n=150,m=100,eta=100,marginals=random",
    ],
)
register_suite(
    "ot-paper",
    [
        "ot/random-assignment:n=500,eta=1200",
        "ot/mnist:cost=l1,eta=1200",
        "ot/mnist:cost=l2,eta=1200",
        "ot/random-assignment:n=2000,eta=1200",
    ],
)
register_suite("demo", ["ot/point-clouds:n=100,eta=100"], extend=True)
