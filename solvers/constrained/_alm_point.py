"""The primal-dual point, the run's state and the Newton system of the exact-ALM solvers."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from optkit.constrained_problem import EqualityConstrainedProblem
from optkit.result import Status

from ._lagrangian_hessian import LagrangianHessian

__all__ = ["KKTSolve", "KKTSystem"]


@dataclass
class KKTSystem:
    """The Newton system's blocks: ``B`` (n, n) and ``J`` (m, n), dense or scipy sparse."""

    B: Any
    J: Any

    @functools.cached_property
    def matrix(self) -> Any:
        """``[[B, J^T], [J, 0]]``: a dense array, or CSR when either block is sparse."""
        if not sp.issparse(self.B) and not sp.issparse(self.J):
            m = self.J.shape[0]
            return np.block([[self.B, self.J.T], [self.J, np.zeros((m, m))]])
        return sp.bmat([[sp.csr_array(self.B), sp.csr_array(self.J).T], [sp.csr_array(self.J), None]], format="csr")


@dataclass
class KKTSolve:
    """The outcome of one (possibly refined) Newton-system solve."""

    z: np.ndarray
    inner_iter: int
    converged: bool
    message: str = ""
    timed_out: bool = False


@dataclass
class _Point:
    """Everything evaluated at one primal-dual point."""

    x: np.ndarray
    y: np.ndarray
    f: float
    g: np.ndarray
    c: np.ndarray
    J: Any
    lag_grad: np.ndarray

    def merit(self, eta1: float, eta2: float) -> float:
        return self.f + self.y @ self.c + 0.5 * eta1 * (self.c @ self.c) + 0.5 * eta2 * (self.lag_grad @ self.lag_grad)

    def half_squared_residual(self) -> float:
        return 0.5 * float(self.c @ self.c)

    def with_multipliers(self, y: np.ndarray) -> _Point:
        return _Point(self.x, y, self.f, self.g, self.c, self.J, self.g + self.J.T @ y)

    @property
    def feasibility(self) -> float:
        return float(np.max(np.abs(self.c), initial=0.0))

    @property
    def kkt(self) -> float:
        return max(float(np.max(np.abs(self.lag_grad), initial=0.0)), self.feasibility)


@dataclass
class _State:
    point: _Point
    eta1: float
    eta2: float
    delta: float
    hessian: LagrangianHessian | None = None
    alpha: float = 0.0
    inner_iter: int = 0
    inner_total: int = 0
    hessian_mods: int = 0
    penalty_updates: int = 0
    primal_steps: int = 0
    restoration_steps: int = 0
    recoveries: int = 0
    restoration_target: float | None = None
    damping: float = 1e-3
    short_steps: int = 0
    restoration_phase_steps: int = 0
    failure: Status | None = None
    message: str = ""
    deadline: float | None = None
    scratch: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)


def _evaluate(problem: EqualityConstrainedProblem, x: np.ndarray, y: np.ndarray) -> _Point:
    g = problem.grad(x)
    J = problem.jac(x)
    return _Point(x, y, problem.fun(x), g, problem.cons(x), J, g + J.T @ y)
