"""Baseline ``scipy-least-squares``: :func:`scipy.optimize.least_squares` on the constraints of a
feasibility problem, i.e. ``min ||c(x)||_2^2``, which solves ``c(x) = 0`` when the system has a
solution.

A feasibility problem is an :class:`~optkit.constrained_problem.EqualityConstrainedProblem` whose
objective is constant (``problem.metadata["feasibility"]`` True: the CUTEst ``...NE`` systems and
the others S2MPJ marks so); on any other problem ``check`` gives the reason it does not apply. The
run is a :class:`~solvers.baselines._constrained_common.ConstrainedRun`: its trace rows and
criterion (``kkt``, which is ``||c||_inf`` here: the objective's gradient is zero) are those of
the other constrained baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from optkit.blackbox import LibraryVerdict
from optkit.constrained_problem import EqualityConstrainedProblem, gauss_newton_fraction
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.result import Result, Status
from optkit.validation import check_choice

from ._constrained_common import ConstrainedBaseline, ConstrainedRun

__all__ = ["ScipyLeastSquares"]

METHODS = ("trf", "lm", "dogbox")
#: SciPy's ftol, xtol and gtol never looser than its defaults (see the class notes)
SCIPY_TOL_CEILING = 1e-8


def least_squares_curvature(problem: EqualityConstrainedProblem, x: np.ndarray, c: np.ndarray, J) -> float | None:
    """The smallest eigenvalue of the Hessian of ``||c||^2 / 2`` at ``x``, relative to its largest
    entry: ``J^T J + sum_i c_i hess c_i`` (``lag_hess(x, c, 0)``, uncounted; dense). ``None``
    when the problem has no ``lag_hess``."""
    if "lag_hess" not in problem.capabilities:
        return None
    with problem.uncounted():
        second = problem.lag_hess(x, c, 0.0)
    J = J.toarray() if sp.issparse(J) else np.asarray(J, dtype=float)
    H = J.T @ J + (second.toarray() if sp.issparse(second) else np.asarray(second, dtype=float))
    return float(np.linalg.eigvalsh(H)[0]) / max(1.0, float(np.abs(H).max()))


@register_solver("scipy-least-squares")
@dataclass(frozen=True, kw_only=True)
class ScipyLeastSquares(ConstrainedBaseline):
    """``scipy.optimize.least_squares(c, x0, jac=J, method=...)`` on a feasibility problem.

    Options
    -------
    tol : float
        The target ``||c(x)||_inf``: SciPy is stopped (from its callback; for ``"lm"``, from
        its Jacobian call) at the first iterate that meets it, and the status is ``CONVERGED``.
        SciPy's own tests ``ftol``, ``xtol`` and ``gtol`` are all ``min(tol, 1e-8)``: they end
        a run that cannot reach ``tol`` (a system without a solution, or stalled progress), and
        are never looser than SciPy's defaults, so that a loose ``tol`` does not stop SciPy
        short of a stationary point of ``||c||^2`` it could still reach.
    max_iter : int
        Iterations; SciPy's ``max_nfev`` is ``max_iter + 1`` (the start's evaluation, then at
        least one per iteration; steps SciPy rejects cost more).
    time_limit : float or None
    method : {"trf", "lm", "dogbox"}
        SciPy's method. ``"trf"`` (default) and ``"dogbox"`` report their iterates through
        SciPy's callback; ``"lm"`` (MINPACK) has none, so its iterates are recorded where it
        evaluates the Jacobian (once per iteration, at the new iterate), and it needs ``m >= n``.

    Status when SciPy returns: ``CONVERGED`` when ``||c||_inf <= tol``; ``INFEASIBLE`` when SciPy
    reports convergence (``status > 0``) at a stationary point of ``||c||^2`` with
    ``||c||_inf > tol`` — stationary meaning that a Gauss–Newton step would remove at most a
    fraction ``sqrt(ftol)`` of ``||c||^2`` (:func:`gauss_newton_fraction`; SciPy's ``ftol`` test
    bounds the reduction of a trust-region step, the Gauss–Newton prediction has no trust region
    and is up to ~100 times larger at SciPy's stop, hence the square root) and, when the problem
    has ``lag_hess``, not a saddle point or maximum (:func:`least_squares_curvature` at least
    ``-sqrt(ftol)``); ``STALLED`` when SciPy reports convergence elsewhere; ``MAX_ITER`` when it
    reaches ``max_nfev``; ``FAILED`` otherwise. A problem without ``lag_hess`` gets the
    first-order test only, which a maximum passes too. ``metrics["residual"]`` is ``||c(x)||_2`` at the returned point (SciPy's ``cost``
    is half its square). ``extras["y"]`` is zeros: with a constant objective the least-squares
    multipliers ``argmin_y ||grad f + J^T y||`` are 0. Counters are the problem's (``cons``,
    ``jac``; SciPy asks both at one point, which a CUTEst problem evaluates once).
    """

    method: str = "trf"

    def validate(self) -> None:
        super().validate()
        check_choice("method", self.method, METHODS)

    def check(self, problem: Problem) -> str | None:
        reason = super().check(problem)
        if reason is not None:
            return reason
        if not problem.metadata.get("feasibility"):
            return (
                f"solver {self.name!r} solves c(x) = 0 (a feasibility problem, constant objective); "
                f"problem {problem.name!r} has an objective (metadata 'feasibility' is not True)"
            )
        if self.method == "lm" and problem.m < problem.n:
            return f"method 'lm' (MINPACK) needs m >= n residuals, got m={problem.m} < n={problem.n}"
        return None

    @property
    def scipy_tol(self) -> float:
        """SciPy's ``ftol``, ``xtol`` and ``gtol``: ``min(tol, 1e-8)``."""
        return min(self.tol, SCIPY_TOL_CEILING)

    def run_library(self, problem: EqualityConstrainedProblem, run: ConstrainedRun) -> Result:
        from scipy.optimize import least_squares

        def record(x: np.ndarray, nit: int | None = None, *, final: bool = False) -> None:
            # the final iterate of a finished run is recorded even at max_iter
            run.iteration(np.array(x), nit, check_max_iter=not final)
            if run.converged(run.metrics):
                run.stop(Status.CONVERGED)

        def on_iteration(intermediate_result):
            record(intermediate_result.x, intermediate_result.nit)

        def jac(x):
            J = problem.jac(x)
            return J.toarray() if sp.issparse(J) else J

        def lm_jac(x):
            # MINPACK evaluates J once per iteration, at its new iterate (the start is row 0)
            if not np.array_equal(x, run.x):
                record(x)
            return jac(x)

        lm = self.method == "lm"
        with run.library():
            res = least_squares(
                problem.cons,
                run.start,
                jac=lm_jac if lm else problem.jac,
                method=self.method,
                ftol=self.scipy_tol,
                xtol=self.scipy_tol,
                gtol=self.scipy_tol,
                max_nfev=self.max_iter + 1,
                callback=None if lm else on_iteration,
            )
            if lm and not np.array_equal(res.x, run.x):
                record(res.x, final=True)
        y = np.zeros(problem.m)
        if run.status is not None:
            return self._with_residual(run.finish(y=y), problem)
        verdict = self._verdict(res, problem)
        return self._with_residual(run.finish(verdict, x=res.x, y=y, nit=run.nit), problem)

    def _verdict(self, res, problem: EqualityConstrainedProblem) -> LibraryVerdict:
        """SciPy's outcome: its convergence is INFEASIBLE at a stationary point of ||c||^2, else STALLED."""
        # SciPy's status: 0 max_nfev, 1 gtol, 2 ftol, 3 xtol, 4 ftol and xtol, -1 MINPACK's bad input
        if res.status <= 0:
            outcome = Status.MAX_ITER if res.status == 0 else Status.FAILED
            return LibraryVerdict(outcome, int(res.status), f"least_squares: {res.message}")
        with problem.uncounted():
            c, J = problem.cons(res.x), problem.jac(res.x)
        fraction = gauss_newton_fraction(J, c)
        residual = float(np.linalg.norm(c))
        threshold = np.sqrt(self.scipy_tol)
        curvature = least_squares_curvature(problem, res.x, c, J) if fraction <= threshold else None
        if curvature is not None and curvature < -threshold:
            message = (
                f"least_squares: {res.message} at ||c||_2 = {residual:.6g}, a saddle point or maximum of ||c||^2 "
                f"(its Hessian has the relative eigenvalue {curvature:.2e}), not a least-squares solution"
            )
            return LibraryVerdict(Status.STALLED, int(res.status), message)
        if fraction <= threshold:
            message = (
                f"least-squares residual ||c||_2 = {residual:.6g}, not a solution of c(x) = 0 "
                f"(a stationary point of ||c||^2: a Gauss-Newton step would remove a fraction {fraction:.1e} of it)"
            )
            return LibraryVerdict(Status.INFEASIBLE, int(res.status), message)
        message = (
            f"least_squares: {res.message} at ||c||_2 = {residual:.6g}, where a Gauss-Newton step would "
            f"remove a fraction {fraction:.1e} of ||c||^2 (> sqrt(ftol) = {np.sqrt(self.scipy_tol):.1e})"
        )
        return LibraryVerdict(Status.STALLED, int(res.status), message)

    @staticmethod
    def _with_residual(result: Result, problem: EqualityConstrainedProblem) -> Result:
        with problem.uncounted():
            residual = float(np.linalg.norm(problem.cons(result.x)))
        return replace(result, metrics={**result.metrics, "residual": residual})
