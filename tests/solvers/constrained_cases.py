"""Small equality-constrained problems written out by hand, with their known solutions."""

import numpy as np

from optkit import EqualityConstrainedProblem


def hs28() -> EqualityConstrainedProblem:
    """Hock-Schittkowski 28: f = (x1+x2)^2 + (x2+x3)^2, x1 + 2 x2 + 3 x3 = 1; x* = (.5, -.5, .5), f* = 0."""
    A = np.array([[1.0, 2.0, 3.0]])
    H = np.array([[2.0, 2.0, 0.0], [2.0, 4.0, 2.0], [0.0, 2.0, 2.0]])
    return EqualityConstrainedProblem(
        lambda x: (x[0] + x[1]) ** 2 + (x[1] + x[2]) ** 2,
        lambda x: H @ x,
        lambda x: A @ x - 1.0,
        lambda x: A,
        np.array([-4.0, 1.0, 1.0]),
        lag_hess=lambda x, y, s: s * H,
        name="hs28",
        metadata={"f_opt": 0.0, "x_opt": np.array([0.5, -0.5, 0.5])},
    )


def hs6() -> EqualityConstrainedProblem:
    """Hock-Schittkowski 6: f = (1 - x1)^2, 10 (x2 - x1^2) = 0; x* = (1, 1), f* = 0."""
    return EqualityConstrainedProblem(
        lambda x: (1 - x[0]) ** 2,
        lambda x: np.array([-2 * (1 - x[0]), 0.0]),
        lambda x: np.array([10 * (x[1] - x[0] ** 2)]),
        lambda x: np.array([[-20 * x[0], 10.0]]),
        np.array([-1.2, 1.0]),
        lag_hess=lambda x, y, s: np.array([[2 * s - 20 * y[0], 0.0], [0.0, 0.0]]),
        name="hs6",
        metadata={"f_opt": 0.0, "x_opt": np.array([1.0, 1.0])},
    )


def hs7() -> EqualityConstrainedProblem:
    """Hock-Schittkowski 7: f = log(1 + x1^2) - x2, (1 + x1^2)^2 + x2^2 = 4; f* = -sqrt(3) at (0, sqrt(3))."""
    return EqualityConstrainedProblem(
        lambda x: np.log1p(x[0] ** 2) - x[1],
        lambda x: np.array([2 * x[0] / (1 + x[0] ** 2), -1.0]),
        lambda x: np.array([(1 + x[0] ** 2) ** 2 + x[1] ** 2 - 4]),
        lambda x: np.array([[4 * x[0] * (1 + x[0] ** 2), 2 * x[1]]]),
        np.array([2.0, 2.0]),
        lag_hess=lambda x, y, s: np.array(
            [[s * 2 * (1 - x[0] ** 2) / (1 + x[0] ** 2) ** 2 + y[0] * (4 + 12 * x[0] ** 2), 0.0], [0.0, 2 * y[0]]]
        ),
        name="hs7",
        metadata={"f_opt": -np.sqrt(3.0), "x_opt": np.array([0.0, np.sqrt(3.0)])},
    )


def min_norm_on_hyperplane(a: np.ndarray) -> EqualityConstrainedProblem:
    """min ||x||^2 / 2 s.t. a^T x = 1: x* = a / ||a||^2, y* = -1 / ||a||^2 (L = f + y c)."""
    a = np.asarray(a, dtype=float)
    return EqualityConstrainedProblem(
        lambda x: 0.5 * x @ x,
        lambda x: x.copy(),
        lambda x: np.array([a @ x - 1.0]),
        lambda x: a[None, :],
        np.zeros(a.size),
        lag_hess=lambda x, y, s: s * np.eye(a.size),
        name="min-norm",
        metadata={"f_opt": 0.5 / (a @ a), "x_opt": a / (a @ a), "y_opt": np.array([-1.0 / (a @ a)])},
    )
