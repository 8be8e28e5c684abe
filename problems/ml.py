"""Smooth machine-learning objectives: least squares, logistic and softmax regression.

Every problem's ``fun``, ``grad`` and ``hvp`` are written once against the array namespace,
so ``problem.to("torch")`` gives the same problem on torch tensors (CPU or CUDA).

Registered problems
    ``ml/least-squares`` (seeded Gaussian), ``ml/logistic`` (scikit-learn's breast-cancer
    data, or synthetic): entries of the ``demo`` suite.
Registered families (finite-sum problems of :mod:`problems.linear_models`)
    ``ml/logistic/<name>`` and ``ml/softmax/<name>`` for ``<name>`` in :data:`CLASSIFICATION_SETS`:
    every LIBSVM set of :data:`problems.libsvm.DATASETS` but ``a9a.t`` (a9a's test file),
    ``mnist`` and ``digits``. Parameters ``lam`` (L2 weight, default 1e-4), ``split_seed``
    (default 0) and ``bias`` (default True); see :func:`classification_data` for the data
    and the splits, :func:`logistic_regression` and :func:`softmax_regression` for the problems.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from optkit.backend import device_of, get_namespace, optional_import
from optkit.problem import SmoothProblem
from optkit.registry import register_problem, register_problem_family, register_suite
from optkit.validation import check_int, check_nonnegative

from .libsvm import DATASETS, load_libsvm
from .linear_models import LogisticRegression, SoftmaxRegression
from .mnist import load_mnist_images, load_mnist_labels

__all__ = [
    "CLASSIFICATION_SETS",
    "TEST_FRACTION",
    "ClassificationData",
    "LeastSquaresProblem",
    "LogisticProblem",
    "classification_data",
    "least_squares",
    "logistic",
    "logistic_regression",
    "softmax_regression",
    "stratified_split",
]


class LeastSquaresProblem(SmoothProblem):
    """``f(x) = ||A x - b||^2 / (2 m) + lam / 2 ||x||^2`` for ``A`` of shape (m, n).

    Capabilities: ``fun``, ``grad``, ``hvp``, ``hess`` (the constant dense
    ``A^T A / m + lam I``).
    """

    def __init__(self, A: Any, b: Any, lam: float, x0: Any, *, name: str, metadata: Mapping | None = None) -> None:
        super().__init__(None, None, x0, name=name, metadata=metadata)
        self.A, self.b, self.lam = A, b, float(lam)

    def _residual(self, x: Any) -> Any:
        return self.A @ x - self.b

    def _f(self, x: Any) -> Any:
        r = self._residual(x)
        return (r @ r) / (2 * self.A.shape[0]) + 0.5 * self.lam * (x @ x)

    def _g(self, x: Any) -> Any:
        return self.A.T @ self._residual(x) / self.A.shape[0] + self.lam * x

    def fun_and_grad(self, x: Any) -> tuple[float, Any]:
        self.counters["fun"] += 1
        self.counters["grad"] += 1
        r = self._residual(x)
        f = (r @ r) / (2 * self.A.shape[0]) + 0.5 * self.lam * (x @ x)
        return float(f), self.A.T @ r / self.A.shape[0] + self.lam * x

    def _hvp(self, x: Any, v: Any) -> Any:
        return self.A.T @ (self.A @ v) / self.A.shape[0] + self.lam * v

    def _hess(self, x: Any) -> Any:
        xp = get_namespace(self.A)
        n = self.A.shape[1]
        return self.A.T @ self.A / self.A.shape[0] + self.lam * xp.eye(n, dtype=self.A.dtype, device=device_of(self.A))

    def _converted(self, conv: Callable[[Any], Any]) -> LeastSquaresProblem:
        return LeastSquaresProblem(
            conv(self.A), conv(self.b), self.lam, conv(self.x0), name=self.name, metadata=self.metadata
        )


#: ``ml/logistic``'s class, kept under its first name: the problem is a :class:`LogisticRegression`.
LogisticProblem = LogisticRegression


@register_problem("ml/least-squares")
def least_squares(
    m: int = 200, n: int = 50, lam: float = 0.0, noise: float = 0.1, seed: int = 0
) -> LeastSquaresProblem:
    """Dense seeded least squares ``||A x - b||^2 / (2m) + lam/2 ||x||^2``.

    ``A`` is (m, n) standard Gaussian, ``b = A x* + noise * e`` with ``x*`` and ``e``
    standard Gaussian. ``metadata`` holds ``x_opt`` and ``f_opt`` from the closed form
    (a least-squares solve of the stacked system ``[A / sqrt(m); sqrt(lam) I]``, which is
    also right for ``m < n`` when ``lam = 0``: the minimum-norm minimiser), and the parameters.
    ``x0 = 0``.
    """
    m = check_int("m", m, 1)
    n = check_int("n", n, 1)
    lam = check_nonnegative("lam", lam)
    noise = check_nonnegative("noise", noise)
    seed = check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    x_star = rng.standard_normal(n)
    b = A @ x_star + noise * rng.standard_normal(m)
    stacked = np.vstack([A / np.sqrt(m), np.sqrt(lam) * np.eye(n)])
    x_opt = np.linalg.lstsq(stacked, np.concatenate([b / np.sqrt(m), np.zeros(n)]), rcond=None)[0]
    r = A @ x_opt - b
    f_opt = float(r @ r / (2 * m) + 0.5 * lam * x_opt @ x_opt)
    metadata = {
        "source": "seeded Gaussian least squares",
        "m": m,
        "n": n,
        "lam": lam,
        "noise": noise,
        "seed": seed,
        "x_opt": x_opt,
        "f_opt": f_opt,
    }
    return LeastSquaresProblem(A, b, lam, np.zeros(n), name="ml/least-squares", metadata=metadata)


def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    datasets = optional_import("sklearn.datasets", "problem 'ml/logistic' with dataset='breast-cancer'")
    X, t = datasets.load_breast_cancer(return_X_y=True)
    return X, 2.0 * t - 1.0


@register_problem("ml/logistic")
def logistic(
    dataset: str = "breast-cancer", lam: float = 1e-3, m: int = 500, n: int = 20, seed: int = 0
) -> LogisticProblem:
    """L2-regularised mean logistic loss, no intercept (a LogisticRegression; features standardised).

    Parameters
    ----------
    dataset : {"breast-cancer", "synthetic"}
        ``"breast-cancer"``: scikit-learn's bundled Wisconsin data (569 x 30, read from the
        package, no download), labels malignant -> -1, benign -> +1. ``"synthetic"``: ``A``
        (m, n) standard Gaussian and ``y_i = +1`` with probability
        ``sigma(a_i^T w / sqrt(n))`` for a seeded Gaussian ``w``.
    lam : float
        L2 weight (>= 0).
    m, n, seed : int
        Size and seed of the synthetic data (ignored for ``"breast-cancer"``).

    Features are standardised (zero mean, unit variance per column; constant columns are
    left centred). ``x0 = 0``. The optimal value is not computed here (see the tests).
    """
    if dataset not in ("breast-cancer", "synthetic"):
        raise ValueError(f"dataset must be 'breast-cancer' or 'synthetic', got {dataset!r}")
    lam = check_nonnegative("lam", lam)
    if dataset == "breast-cancer":
        X, y = _breast_cancer()
        meta = {"source": "scikit-learn load_breast_cancer (UCI Wisconsin diagnostic)"}
    else:
        m = check_int("m", m, 1)
        n = check_int("n", n, 1)
        seed = check_int("seed", seed, 0)
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((m, n))
        w = rng.standard_normal(n)
        p = 1.0 / (1.0 + np.exp(-X @ w / np.sqrt(n)))
        y = np.where(rng.random(m) < p, 1.0, -1.0)
        meta = {"source": "seeded synthetic logistic data", "seed": seed}
    std = X.std(axis=0)
    A = (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)
    metadata = {**meta, "dataset": dataset, "m": A.shape[0], "n": A.shape[1], "lam": lam}
    return LogisticProblem(A, y, lam, np.zeros(A.shape[1]), name="ml/logistic", metadata=metadata)


# ----------------------------------------------------------------------------- classification sets

#: The members of the families ``ml/logistic/<name>`` and ``ml/softmax/<name>``.
CLASSIFICATION_SETS: tuple[str, ...] = (*(name for name in DATASETS if name != "a9a.t"), "mnist", "digits")

#: The share of each class held out as the test split (when the set has no test file).
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class ClassificationData:
    """A classification set as dense float64 features and integer classes, split in two.

    Attributes
    ----------
    X, X_test : ndarray of float64, shapes (N, d) and (M, d)
    labels, labels_test : ndarray of int64, shapes (N,) and (M,)
        Classes ``0 .. n_classes-1``.
    n_classes : int
    positive : tuple of int
        The classes that binary (logistic) regression labels ``+1``; the others are ``-1``.
    source, split : str
        Where the data come from; how the test split was made.
    """

    X: np.ndarray
    labels: np.ndarray
    X_test: np.ndarray
    labels_test: np.ndarray
    n_classes: int
    positive: tuple[int, ...]
    source: str
    split: str


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified hold-out: ``round(test_fraction * count)`` rows of each class for testing.

    Parameters
    ----------
    labels : ndarray of shape (N,)
        Class of each row.
    test_fraction : float
        In ``[0, 1]``.
    seed : int
        Seed of ``numpy.random.default_rng``; the classes are visited in increasing order and
        each draws one permutation of its rows, whose first rows go to the test split.

    Returns
    -------
    train, test : ndarray of int64
        Sorted row indices; together a partition of ``range(N)``.
    """
    rng = np.random.default_rng(seed)
    test = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        test.append(rng.permutation(rows)[: int(round(test_fraction * rows.size))])
    held = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(labels.shape[0]), held), held


def _hold_out(X: np.ndarray, labels: np.ndarray, split_seed: int) -> tuple[np.ndarray, ...]:
    train, test = stratified_split(labels, TEST_FRACTION, split_seed)
    return X[train], labels[train], X[test], labels[test]


def classification_data(name: str, split_seed: int = 0) -> ClassificationData:
    """The data of ``ml/logistic/<name>`` and ``ml/softmax/<name>``.

    Parameters
    ----------
    name : str
        One of :data:`CLASSIFICATION_SETS`:

        - a LIBSVM set (:func:`problems.libsvm.load_libsvm`, ``$OPTKIT_DATA/libsvm/``): the
          sparse rows densified to float64 (the largest, covtype, is 581012 x 54: 250 MB),
          values as in the file (the ``_scale`` sets are already in [-1, 1]); class 1 is
          the label +1, class 0 the label -1. ``a9a`` is tested on ``a9a.t`` (same 123
          features); the others on a seeded stratified 20% hold-out.
        - ``"mnist"``: the 10000 MNIST test images and labels (:mod:`problems.mnist`, the only
          MNIST split in optkit's data) as 784 pixels scaled to [0, 1], split 8000 / 2000 by
          a seeded stratified 20% hold-out; binary task: digits 5-9 against 0-4.
        - ``"digits"``: scikit-learn's bundled 8 x 8 digits (1797 x 64), pixels 0..16 scaled
          to [0, 1], seeded stratified 20% hold-out (1438 / 359); binary task as MNIST.
    split_seed : int
        Seed of the hold-out (:func:`stratified_split`); unused for a9a.

    Raises
    ------
    KeyError
        An unknown name (naming close matches).
    FileNotFoundError
        The data files are absent (nothing is downloaded); the message names ``OPTKIT_DATA``.
    """
    split_seed = check_int("split_seed", split_seed, 0)
    key = name.lower()
    if key not in CLASSIFICATION_SETS:
        close = difflib.get_close_matches(key, CLASSIFICATION_SETS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown classification set {name!r}{hint} (known: {', '.join(CLASSIFICATION_SETS)})")
    hold_out = f"seeded stratified {TEST_FRACTION:.0%} hold-out (split_seed={split_seed})"
    if key in ("mnist", "digits"):
        if key == "mnist":
            X = load_mnist_images().reshape(-1, 28 * 28) / 255.0
            classes = load_mnist_labels().astype(np.int64)
            if classes.shape[0] != X.shape[0]:
                raise ValueError(f"MNIST has {X.shape[0]} test images but {classes.shape[0]} labels")
            source = "MNIST test split (t10k images and labels), pixels / 255"
        else:
            datasets = optional_import("sklearn.datasets", "the problems ml/logistic/digits and ml/softmax/digits")
            bunch = datasets.load_digits()
            X, classes = bunch.data / 16.0, bunch.target.astype(np.int64)
            source = "scikit-learn load_digits (UCI optical digits, 8 x 8), pixels / 16"
        parts = _hold_out(X, classes, split_seed)
        return ClassificationData(*parts, n_classes=10, positive=(5, 6, 7, 8, 9), source=source, split=hold_out)
    X_sparse, y = load_libsvm(key)
    X, classes = X_sparse.toarray(), (y > 0).astype(np.int64)
    source = f"LIBSVM {key} ({DATASETS[key].description})"
    if key == "a9a":
        X_test, y_test = load_libsvm("a9a.t")
        parts = (X, classes, X_test.toarray(), (y_test > 0).astype(np.int64))
        split = "the LIBSVM test file a9a.t"
    else:
        parts, split = _hold_out(X, classes, split_seed), hold_out
    return ClassificationData(*parts, n_classes=2, positive=(1,), source=source, split=split)


def _metadata(name: str, data: ClassificationData, lam: float, bias: bool, split_seed: int) -> dict[str, Any]:
    return {
        "source": data.source,
        "dataset": name.lower(),
        "classes": data.n_classes,
        "n_train": int(data.X.shape[0]),
        "n_test": int(data.X_test.shape[0]),
        "n_features": int(data.X.shape[1]),
        "split": data.split,
        "split_seed": split_seed,
        "lam": lam,
        "bias": bias,
    }


def _check_bias(bias: Any) -> bool:
    if not isinstance(bias, bool):
        raise ValueError(f"bias must be true or false, got {bias!r}")
    return bias


def logistic_regression(name: str, lam: float = 1e-4, split_seed: int = 0, bias: bool = True) -> LogisticRegression:
    """``ml/logistic/<name>``: L2-regularised binary logistic regression on a classification set.

    Parameters
    ----------
    name : str
        One of :data:`CLASSIFICATION_SETS` (data and split: :func:`classification_data`;
        the ten-class sets become "digit >= 5").
    lam : float
        The L2 weight ``>= 0``, absolute (scikit-learn's ``C = 1 / (N lam)``); intercepts
        are not regularised.
    split_seed : int
        Seed of the test split.
    bias : bool
        Fit an intercept (a ones column).

    Returns
    -------
    LogisticRegression
        numpy float64, ``x0 = 0``; ``metadata``: source, dataset, classes (2), n_train,
        n_test, n_features, split, split_seed, lam, bias.
    """
    lam, bias = check_nonnegative("lam", lam), _check_bias(bias)
    data = classification_data(name, split_seed)
    sign = np.array([1.0 if c in data.positive else -1.0 for c in range(data.n_classes)])
    metadata = {**_metadata(name, data, lam, bias, split_seed), "classes": 2}
    return LogisticRegression(
        data.X, sign[data.labels], lam, bias=bias, A_test=data.X_test, y_test=sign[data.labels_test],
        name=f"ml/logistic/{name.lower()}", metadata=metadata,
    )  # fmt: skip


def softmax_regression(name: str, lam: float = 1e-4, split_seed: int = 0, bias: bool = True) -> SoftmaxRegression:
    """``ml/softmax/<name>``: L2-regularised softmax regression on a classification set.

    Parameters as :func:`logistic_regression`; the binary LIBSVM sets have two classes
    (0 for the label -1, 1 for +1), MNIST and digits ten. Returns a
    :class:`SoftmaxRegression` (numpy float64, ``x0 = 0``, ``x_shape = (classes, d + bias)``)
    with the same metadata.
    """
    lam, bias = check_nonnegative("lam", lam), _check_bias(bias)
    data = classification_data(name, split_seed)
    return SoftmaxRegression(
        data.X, data.labels, lam, n_classes=data.n_classes, bias=bias, A_test=data.X_test,
        y_test=data.labels_test, name=f"ml/softmax/{name.lower()}",
        metadata=_metadata(name, data, lam, bias, split_seed),
    )  # fmt: skip


def _family(kind: str, build: Callable[..., Any]) -> Callable[[str], Callable]:
    """The family resolver of ``ml/<kind>/<name>``: a member's factory ``(lam, split_seed, bias)``."""

    def resolve(member: str) -> Callable:
        key = member.lower()
        if key not in CLASSIFICATION_SETS:
            close = difflib.get_close_matches(key, CLASSIFICATION_SETS, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(f'ml/{kind}/{c}' for c in close)}?" if close else ""
            raise KeyError(f"unknown problem 'ml/{kind}/{member}'{hint} (members: {', '.join(CLASSIFICATION_SETS)})")

        def factory(lam: float = 1e-4, split_seed: int = 0, bias: bool = True) -> Any:
            return build(key, lam=lam, split_seed=split_seed, bias=bias)

        factory.__name__ = factory.__qualname__ = f"{kind}_{key.replace('.', '_')}"
        factory.__doc__ = build.__doc__.splitlines()[0].replace("<name>", key)
        return factory

    resolve.__doc__ = (
        f"L2-regularised {kind} regression (lam=1e-4, split_seed=0, bias=true) on a classification set: "
        f"{', '.join(CLASSIFICATION_SETS)} (see problems.ml.classification_data)."
    )
    return resolve


register_problem_family("ml/logistic", _family("logistic", logistic_regression))
register_problem_family("ml/softmax", _family("softmax", softmax_regression))
register_suite("demo", ["ml/least-squares", "ml/logistic", "ml/softmax/digits"], extend=True)
