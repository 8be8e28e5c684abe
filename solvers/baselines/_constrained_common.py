"""What the equality-constrained baselines (``scipy-trust-constr``, ``scipy-slsqp``, ``ipopt``)
share: the trace measures, the record of one run, and the :class:`~optkit.result.Result`.

Each wrapper hands the library the problem's counted ``fun``, ``grad``, ``cons``, ``jac`` (and
``lag_hess``) and reports the library's iterates to a :class:`ConstrainedRun`, which measures
them with the problem's uncounted callables while the clock is paused.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from optkit.constrained_problem import EqualityConstrainedProblem, kkt_residual, least_squares_multipliers
from optkit.problem import Problem
from optkit.result import Result, Status
from optkit.solver import Callback, Recorder, Solver

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


class ConstrainedRun:
    """The clock, trace and counters of one run of a wrapped constrained solver.

    Parameters
    ----------
    solver : Solver
        The wrapper (its ``name``, ``tol``, ``max_iter``, ``time_limit``).
    problem : EqualityConstrainedProblem
    x0 : array or None
        Starting point (``problem.x0`` when ``None``).
    callback : callable or None
        The user's callback, run by the :class:`~optkit.solver.Recorder`.

    Trace rows hold ``fun``, ``stationarity``, ``feasibility`` (``||c||_inf``) and ``kkt``
    (:func:`~optkit.constrained_problem.kkt_residual` with least-squares multipliers), computed
    with the problem's private callables, so they count neither in the problem's counters nor
    in the clock.
    """

    def __init__(self, solver: Solver, problem: EqualityConstrainedProblem, x0: Any, callback: Callback | None):
        self.solver = solver
        self.problem = problem
        self.x = np.array(problem.x0 if x0 is None else x0, dtype=float)
        self.nit = 0
        self.jac0: Any = None
        self._counters_before = dict(problem.counters)
        self.recorder = Recorder(time_limit=solver.time_limit, callback=callback, device="cpu")

    def _point(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, Any]:
        p = self.problem
        return (float(p._fun(x)), np.asarray(p._grad(x), dtype=float), np.asarray(p._cons(x), dtype=float), p._jac(x))

    def begin(self) -> Status | None:
        """Record row 0 at the starting point and keep its Jacobian in ``jac0``.

        Returns the status that ends the run before the library starts (callback, time limit,
        ``max_iter = 0``, or a start that already meets ``tol``), else ``None``. Raises a
        ``TypeError`` when the Jacobian has no entries (a LinearOperator): the libraries need them.
        """
        self.recorder.start()
        self.recorder.pause()
        f, g, c, self.jac0 = self._point(self.x)
        if not (isinstance(self.jac0, np.ndarray) or sp.issparse(self.jac0)):
            raise TypeError(
                f"solver {self.solver.name!r} needs the constraint Jacobian's entries (a numpy array or a scipy "
                f"sparse matrix); problem {self.problem.name!r} returns {type(self.jac0).__name__}"
            )
        row = {"fun": f, **kkt_residual(g, self.jac0, c)}
        status = self.recorder.record(0, row, self.x)
        if status is None and (self.solver.max_iter == 0 or row["kkt"] <= self.solver.tol):
            status = Status.CONVERGED if row["kkt"] <= self.solver.tol else Status.MAX_ITER
        return status

    def iteration(self, x: np.ndarray, nit: int) -> Status | None:
        """Record iterate ``nit`` (the clock is paused first); the status that ends the run, or ``None``."""
        self.recorder.pause()
        self.x = np.array(x, dtype=float)
        self.nit = nit
        f, g, c, J = self._point(self.x)
        return self.recorder.record(nit, {"fun": f, **kkt_residual(g, J, c)}, self.x)

    def finish(
        self,
        status: Status | None,
        *,
        x: np.ndarray | None = None,
        y: np.ndarray | None = None,
        nit: int | None = None,
        success: bool = False,
        max_iter_reached: bool = False,
        message: str = "",
    ) -> Result:
        """Stop the clock and build the :class:`~optkit.result.Result`.

        Parameters
        ----------
        status : Status or None
            The status when the run was ended by :meth:`begin` or :meth:`iteration`; ``None``
            when the library returned, and then: ``CONVERGED`` if it reported ``success`` and the
            final ``kkt`` is ``<= tol``, ``MAX_ITER`` if it reached its iteration limit, else
            ``FAILED`` with the library's ``message``.
        x, y : ndarray, optional
            The library's final iterate and multipliers in optkit's convention
            (``L = f + y^T c``); defaults: the last recorded iterate and least-squares multipliers.
        nit : int, optional
            The library's iteration count (default: the last recorded iteration).
        success, max_iter_reached, message :
            The library's verdict, used when ``status`` is ``None``.

        ``metrics`` are ``fun`` and :func:`~optkit.constrained_problem.kkt_residual` with ``y``
        (what ``problem.evaluate(x, extras)`` reports); ``extras["y"]`` holds ``y``.
        """
        self.recorder.pause()
        if x is not None:
            self.x = np.array(x, dtype=float)
        if nit is not None:
            self.nit = nit
        f, g, c, J = self._point(self.x)
        y = least_squares_multipliers(g, J) if y is None else np.asarray(y, dtype=float).reshape(-1)
        metrics = {"fun": f, **kkt_residual(g, J, c, y)}
        tol = self.solver.tol
        if status is None:
            if success and metrics["kkt"] <= tol:
                status = Status.CONVERGED
            elif max_iter_reached:
                status = Status.MAX_ITER
            else:
                status = Status.FAILED
                if success:
                    message = f"{message} (but the KKT residual {metrics['kkt']:.3g} > tol = {tol:g})"
        counters = {k: v - self._counters_before.get(k, 0) for k, v in self.problem.counters.items()}
        return Result(
            x=self.x,
            fun=f,
            status=status,
            message=message if status is Status.FAILED else "",
            nit=self.nit,
            counters=counters,
            time_s=self.recorder.elapsed,
            metrics=metrics,
            trace=self.recorder.rows,
            solver=self.solver.name,
            problem=self.problem.name,
            extras={"y": y},
        )


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
        status = run.begin()
        if status is not None:
            return run.finish(status)
        return self.run_library(problem, run)

    @abc.abstractmethod
    def run_library(self, problem: EqualityConstrainedProblem, run: ConstrainedRun) -> Result:
        """Run the library from ``run.x``, report its iterates to ``run`` and return ``run.finish(...)``."""
