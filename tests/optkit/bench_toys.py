"""The toy problem and solver of the benchmark-runner tests, in a module of their own so that worker
processes (joblib, Dask) import them by reference."""

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from optkit.problem import SmoothProblem
from optkit.result import Status
from optkit.solver import IterativeSolver


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


@dataclass(frozen=True)
class ToyState:
    x: Any
    g: Any
    v: Any = None


@dataclass(frozen=True, kw_only=True)
class ToyGD(IterativeSolver):
    """Gradient descent with step lr / L; stops when ||grad|| <= tol. ``pause`` seconds of sleep per
    step make a run last (deterministic otherwise: the same iterates in every process)."""

    name: ClassVar[str] = "test-gd"  # also in worker processes, which do not run the registering fixtures
    accepts: ClassVar = (SmoothProblem,)
    lr: float = 1.0
    pause: float = 0.0

    def init(self, problem, x0):
        return ToyState(x0, problem.grad(x0))

    def step(self, problem, state):
        time.sleep(self.pause)
        x = state.x - self.lr / problem.metadata["L"] * state.g
        return ToyState(x, problem.grad(x))

    def terminate(self, problem, state):
        return Status.CONVERGED if np.linalg.norm(state.g) <= self.tol else None

    def metrics(self, problem, state):
        return {"grad_norm": float(np.linalg.norm(state.g))}
