"""Smooth machine-learning objectives: regularised least squares and logistic regression.

Both are :class:`~optkit.problem.SmoothProblem` subclasses whose ``fun``, ``grad`` and
``hvp`` are written once against the array namespace, so ``problem.to("torch")`` gives
the same problem on torch tensors (CPU or CUDA).

Registered problems: ``ml/least-squares``, ``ml/logistic``; entries of the ``demo`` suite.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from optkit.backend import device_of, get_namespace, optional_import
from optkit.problem import SmoothProblem
from optkit.registry import register_problem, register_suite
from optkit.validation import check_int, check_nonnegative

__all__ = ["LeastSquaresProblem", "LogisticProblem", "least_squares", "logistic"]


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


class LogisticProblem(SmoothProblem):
    """``f(x) = mean_i log(1 + exp(-y_i a_i^T x)) + lam / 2 ||x||^2``, labels ``y_i = +-1``.

    No intercept (append a column of ones to ``A`` for one; it is then regularised too).
    Evaluated stably through ``logaddexp``. Capabilities: ``fun``, ``grad``, ``hvp``, ``hess``.
    """

    def __init__(self, A: Any, y: Any, lam: float, x0: Any, *, name: str, metadata: Mapping | None = None) -> None:
        super().__init__(None, None, x0, name=name, metadata=metadata)
        self.A, self.y, self.lam = A, y, float(lam)

    def _margins(self, x: Any) -> Any:
        return self.y * (self.A @ x)

    def _loss(self, z: Any, x: Any) -> Any:
        xp = get_namespace(z)
        return xp.mean(xp.logaddexp(xp.zeros_like(z), -z)) + 0.5 * self.lam * (x @ x)

    def _grad_from(self, z: Any, x: Any) -> Any:
        xp = get_namespace(z)
        # sigma(-z) = exp(-log(1 + exp(z))), safe for large |z|
        s = xp.exp(-xp.logaddexp(xp.zeros_like(z), z))
        return -(self.A.T @ (self.y * s)) / self.A.shape[0] + self.lam * x

    def _f(self, x: Any) -> Any:
        return self._loss(self._margins(x), x)

    def _g(self, x: Any) -> Any:
        return self._grad_from(self._margins(x), x)

    def fun_and_grad(self, x: Any) -> tuple[float, Any]:
        self.counters["fun"] += 1
        self.counters["grad"] += 1
        z = self._margins(x)
        return float(self._loss(z, x)), self._grad_from(z, x)

    def _weights(self, x: Any) -> Any:
        """``sigma(z) sigma(-z)`` at the margins ``z``: the diagonal of the loss Hessian."""
        xp = get_namespace(x)
        z = self._margins(x)
        zeros = xp.zeros_like(z)
        return xp.exp(-xp.logaddexp(zeros, z) - xp.logaddexp(zeros, -z))

    def _hvp(self, x: Any, v: Any) -> Any:
        return self.A.T @ (self._weights(x) * (self.A @ v)) / self.A.shape[0] + self.lam * v

    def _hess(self, x: Any) -> Any:
        xp = get_namespace(x)
        n = self.A.shape[1]
        w = self._weights(x)
        eye = xp.eye(n, dtype=self.A.dtype, device=device_of(self.A))
        return self.A.T @ (w[:, None] * self.A) / self.A.shape[0] + self.lam * eye

    def _converted(self, conv: Callable[[Any], Any]) -> LogisticProblem:
        return LogisticProblem(
            conv(self.A), conv(self.y), self.lam, conv(self.x0), name=self.name, metadata=self.metadata
        )


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
    """L2-regularised mean logistic loss (see :class:`LogisticProblem`).

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


register_suite("demo", ["ml/least-squares", "ml/logistic"], extend=True)
