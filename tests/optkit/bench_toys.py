"""The toy problem of the benchmark-runner tests, in a module of its own so that worker processes
(joblib, Dask) import it by reference."""

import numpy as np

from optkit.problem import SmoothProblem


def quadratic(n: int = 6, cond: float = 10.0) -> SmoothProblem:
    """f(x) = 1/2 sum d_i x_i^2 - sum x_i with d log-spaced in [1, cond]; f* = -1/2 sum 1/d_i."""
    d = np.logspace(0, np.log10(cond), n)
    return SmoothProblem(
        lambda x: 0.5 * float(d @ (x * x)) - float(x.sum()),
        lambda x: d * x - 1.0,
        np.zeros(n),
        name="test/quadratic",
        metadata={"f_opt": -0.5 * float((1.0 / d).sum()), "L": float(d.max())},
    )
