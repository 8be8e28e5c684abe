"""What the equality-constrained baselines (``scipy-trust-constr``, ``scipy-slsqp``, ``ipopt``)
share: the trace measures and the run (:class:`ConstrainedRun`, a
:class:`~optkit.blackbox.BlackBoxRun` judged by the KKT residual).

Each wrapper hands the library the problem's counted ``fun``, ``grad``, ``cons``, ``jac`` (and
``lag_hess``) and reports the library's iterates to its :class:`ConstrainedRun`, which measures
them uncounted while the clock is paused.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from optkit.blackbox import BlackBoxRun, LibraryVerdict
from optkit.constrained_problem import EqualityConstrainedProblem, kkt_residual, least_squares_multipliers
from optkit.problem import Problem
from optkit.result import Result, Status
from optkit.solver import Callback, Solver

__all__ = ["HESSIANS", "ConstrainedBaseline", "ConstrainedRun", "hessian_reason", "use_exact_hessian"]

HESSIANS = ("auto", "exact", "quasi-newton")


def hessian_reason(solver: Solver, problem: EqualityConstrainedProblem) -> str | None:
    """Why the ``hessian`` option does not fit ``problem`` (``"exact"`` needs its ``lag_hess``), or ``None``."""
    if solver.hessian == "exact" and "lag_hess" not in problem.capabilities:
        return f"solver {solver.name!r} with hessian='exact' requires 'lag_hess', which problem {problem.name!r} lacks"
    return None


def use_exact_hessian(solver: Solver, problem: EqualityConstrainedProblem) -> bool:
    """Whether the run uses the problem's ``lag_hess`` (``hessian`` "exact", or "auto" when it has one)."""
    return solver.hessian == "exact" or (solver.hessian == "auto" and "lag_hess" in problem.capabilities)


class ConstrainedRun(BlackBoxRun):
    """A :class:`~optkit.blackbox.BlackBoxRun` of a wrapped constrained solver.

    Parameters
    ----------
    solver : Solver
        The wrapper (its ``name``, ``tol``, ``max_iter``, ``time_limit``).
    problem : EqualityConstrainedProblem
    x0 : array or None
        Starting point (``problem.x0`` when ``None``).
    callback : callable or None
        The user's callback.

    Trace rows hold ``fun``, ``stationarity``, ``feasibility`` (``||c||_inf``) and ``kkt``
    (:func:`~optkit.constrained_problem.kkt_residual` with least-squares multipliers),
    measured uncounted and untimed. The criterion is ``kkt``: a returned point whose KKT
    residual (with the library's multipliers) is ``<= tol`` is ``CONVERGED``.
    """

    def __init__(self, solver: Solver, problem: EqualityConstrainedProblem, x0: Any, callback: Callback | None):
        super().__init__(solver, problem, callback, measure=self._kkt_row, criterion="kkt")
        self.start = np.array(problem.x0 if x0 is None else x0, dtype=float)
        self.jac0: Any = None

    def _kkt_row(self, x: np.ndarray, y: np.ndarray | None = None) -> dict[str, float]:
        p = self.problem
        return {"fun": p.fun(x), **kkt_residual(p.grad(x), p.jac(x), p.cons(x), y)}

    def begin(self) -> Status | None:  # type: ignore[override]
        """Record row 0 at the start and keep its Jacobian in ``jac0`` (see
        :meth:`BlackBoxRun.begin`). Raises a ``TypeError`` when the Jacobian has no entries
        (a LinearOperator): the libraries need them."""
        with self.problem.uncounted():
            self.jac0 = self.problem.jac(self.start)
        if not (isinstance(self.jac0, np.ndarray) or sp.issparse(self.jac0)):
            raise TypeError(
                f"solver {self.solver.name!r} needs the constraint Jacobian's entries (a numpy array or a scipy "
                f"sparse matrix); problem {self.problem.name!r} returns {type(self.jac0).__name__}"
            )
        return super().begin(self.start)

    def finish(  # type: ignore[override]
        self,
        verdict: LibraryVerdict | None = None,
        *,
        x: np.ndarray | None = None,
        y: np.ndarray | None = None,
        nit: int | None = None,
    ) -> Result:
        """The :class:`~optkit.result.Result` by the status rule of :mod:`optkit.blackbox`.

        Parameters
        ----------
        verdict : LibraryVerdict, optional
            The library's verdict when it returned (``None`` when the run stopped it).
        x, y : ndarray, optional
            The library's final iterate and multipliers in optkit's convention
            (``L = f + y^T c``); defaults: the last recorded iterate and least-squares
            multipliers there.
        nit : int, optional
            The library's iteration count (default: the last recorded iteration).

        ``metrics`` are ``fun`` and the KKT residual with ``y`` (what
        ``problem.evaluate(x, extras)`` reports); ``extras["y"]`` holds ``y``.
        """
        self.recorder.pause()
        point = self.x if x is None or self.status is not None else np.array(x, dtype=float)
        with self.problem.uncounted():
            g, J = self.problem.grad(point), self.problem.jac(point)
            y = least_squares_multipliers(g, J) if y is None else np.asarray(y, dtype=float).reshape(-1)
            metrics = self._kkt_row(point, y)
        return super().finish(x=point, nit=nit, verdict=verdict, metrics=metrics, extras={"y": y})


@dataclass(frozen=True, kw_only=True)
class ConstrainedBaseline(Solver):
    """A wrapped library solver of :class:`~optkit.constrained_problem.EqualityConstrainedProblem`.

    :meth:`solve` checks the problem, records the start (which may already end the run) and
    hands the :class:`ConstrainedRun` to :meth:`run_library`.
    """

    accepts: ClassVar = (EqualityConstrainedProblem,)
    requires: ClassVar = frozenset({"fun", "grad", "cons", "jac"})
    backends: ClassVar = frozenset({"numpy"})

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        self.ensure_compatible(problem)
        run = ConstrainedRun(self, problem, x0, callback)
        if run.begin() is not None:
            return run.finish()
        return self.run_library(problem, run)

    @abc.abstractmethod
    def run_library(self, problem: EqualityConstrainedProblem, run: ConstrainedRun) -> Result:
        """Run the library from ``run.start`` inside ``run.library()``, report its iterates to
        ``run.iteration`` and return ``run.finish(verdict, x=..., y=...)``."""
