"""Baselines wrapping SciPy's equality-constrained methods: ``scipy-trust-constr``
(``minimize(method="trust-constr")``, the Byrd–Omojokun SQP when all constraints are
equalities) and ``scipy-slsqp`` (``minimize(method="SLSQP")``, Kraft's SQP).

Both run the SciPy routine unchanged on an
:class:`~optkit.constrained_problem.EqualityConstrainedProblem` and record the optkit trace from
its callback (see :class:`~solvers.baselines._constrained_common.ConstrainedRun`); the time
limit and a callback's request to stop end the routine by raising
:class:`~optkit.solver.StopSolver` from that callback. Multipliers are returned in
``Result.extras["y"]`` in optkit's convention ``L = f + y^T c``: SciPy's when it returns, the
least-squares ones at the last iterate when the run was stopped before.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from optkit.blackbox import LibraryVerdict
from optkit.constrained_problem import EqualityConstrainedProblem
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.result import Result, Status
from optkit.validation import check_choice, check_positive

from ._constrained_common import HESSIANS, ConstrainedBaseline, ConstrainedRun, hessian_reason, use_exact_hessian

__all__ = ["ScipySLSQP", "ScipyTrustConstr"]


@register_solver("scipy-trust-constr")
@dataclass(frozen=True, kw_only=True)
class ScipyTrustConstr(ConstrainedBaseline):
    """``scipy.optimize.minimize(method="trust-constr")`` on an equality-constrained problem.

    Options
    -------
    tol : float
        SciPy's ``gtol``: stops when both ``||grad f + J^T v||_inf`` (with SciPy's multipliers
        ``v``) and ``||c||_inf`` are below ``tol`` — the KKT residual.
    max_iter : int
        SQP iterations (SciPy's ``maxiter`` is ``max_iter + 1``: SciPy counts the start as one).
    time_limit : float or None
    hessian : {"auto", "exact", "quasi-newton"}
        ``"exact"``: the objective's Hessian is ``lag_hess(x, 0, 1)`` and the constraints'
        ``lag_hess(x, v, 0)``; ``"quasi-newton"``: SciPy's dense ``BFGS`` for both (its
        warning that a linear constraint's gradient does not change is silenced);
        ``"auto"`` (default): exact when the problem has ``lag_hess``.
    xtol : float
        SciPy's ``xtol``: it also stops (reporting success) when the trust radius falls below
        it; the status is then ``CONVERGED`` only if the KKT residual is ``<= tol``, else
        ``STALLED``. Default 1e-8.

    The Jacobian (dense or scipy sparse) is passed as the problem returns it, so sparse
    Jacobians use SciPy's sparse factorisation. ``extras["y"]`` is SciPy's ``v``, which has
    optkit's sign (``L = f + v^T c``). Counters are the problem's (``fun``, ``grad``, ``cons``,
    ``jac``, ``lag_hess``; the exact Hessian costs two ``lag_hess`` calls per iteration).
    """

    hessian: str = "auto"
    xtol: float = 1e-8

    def validate(self) -> None:
        super().validate()
        check_choice("hessian", self.hessian, HESSIANS)
        check_positive("xtol", self.xtol)

    def check(self, problem: Problem) -> str | None:
        return super().check(problem) or hessian_reason(self, problem)

    def run_library(self, problem: EqualityConstrainedProblem, run: ConstrainedRun) -> Result:
        from scipy.optimize import BFGS, NonlinearConstraint, minimize

        if use_exact_hessian(self, problem):
            no_multipliers = np.zeros(problem.m)

            def hess(x):
                return problem.lag_hess(x, no_multipliers, 1.0)

            def cons_hess(x, v):
                return problem.lag_hess(x, v, 0.0)

        else:
            hess, cons_hess = BFGS(), BFGS()
        constraint = NonlinearConstraint(problem.cons, 0.0, 0.0, jac=problem.jac, hess=cons_hess)

        def on_iteration(intermediate_result):
            nit = intermediate_result.nit - 1  # SciPy's first call is at the start, recorded by begin()
            if nit > 0:
                run.iteration(np.array(intermediate_result.x), nit)

        options = {"gtol": self.tol, "xtol": self.xtol, "maxiter": self.max_iter + 1, "verbose": 0}
        with run.library(), warnings.catch_warnings():
            # BFGS on a linear constraint sees no change of its gradient: SciPy warns at each update
            warnings.filterwarnings("ignore", message="delta_grad == 0.0", category=UserWarning)
            res = minimize(
                problem.fun,
                run.start,
                jac=problem.grad,
                hess=hess,
                method="trust-constr",
                constraints=[constraint],
                options=options,
                callback=on_iteration,
            )
        if run.status is not None:
            return run.finish()
        # SciPy's status: 0 iteration limit, 1 gtol met, 2 xtol met (both "success"), 3 callback, -1 error
        outcome = {0: Status.MAX_ITER, 1: Status.CONVERGED, 2: Status.CONVERGED}.get(res.status, Status.FAILED)
        verdict = LibraryVerdict(outcome, int(res.status), f"trust-constr: {res.message}")
        return run.finish(verdict, x=res.x, y=res.v[0], nit=res.nit - 1)


@register_solver("scipy-slsqp")
@dataclass(frozen=True, kw_only=True)
class ScipySLSQP(ConstrainedBaseline):
    """``scipy.optimize.minimize(method="SLSQP")`` on an equality-constrained problem.

    Options
    -------
    tol : float
        The KKT residual ``max(||grad f + J^T y||_inf, ||c||_inf)`` (with SLSQP's multipliers)
        that ``CONVERGED`` requires at the returned point. SLSQP itself has no stationarity test
        (see ``ftol``): when it reports success with a larger residual the status is ``FAILED``.
    max_iter : int
        SQP iterations (SciPy's ``maxiter``).
    time_limit : float or None
    ftol : float or None
        SLSQP's accuracy goal ``acc`` (SciPy's ``ftol``): it stops when the objective change
        ``|f_k - f_{k-1}|`` (or the step norm) is below ``ftol`` and the summed constraint
        violation ``sum |c_i|`` is too. Default ``None``: ``ftol = tol``.

    Trace row ``k`` is SLSQP's iterate ``x_k``, recorded when iteration ``k + 1`` starts (SciPy's
    callback then reports a trial point, not the iterate); the final row is recorded after SLSQP
    returns. SLSQP is dense: a sparse Jacobian is converted to a dense array at each evaluation,
    and its quasi-Newton matrix is ``n x n``; it uses no Hessian. ``extras["y"]`` is minus SciPy's
    ``multipliers`` (SLSQP's Lagrangian is ``f - lambda^T c``), i.e. optkit's ``L = f + y^T c``
    (least-squares multipliers with SciPy < 1.15, which does not return them).
    Counters are the problem's (``fun``, ``grad``, ``cons``, ``jac``).
    """

    ftol: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.ftol is not None:
            check_positive("ftol", self.ftol)

    def check(self, problem: Problem) -> str | None:
        reason = super().check(problem)
        if reason is None and problem.m > problem.n:
            # SciPy 1.17's SLSQP reports "more equality constraints than independent variables"
            # but first writes past its work arrays: the process later dies of heap corruption
            return f"SLSQP needs at most n equality constraints, got m={problem.m} > n={problem.n}"
        return reason

    def run_library(self, problem: EqualityConstrainedProblem, run: ConstrainedRun) -> Result:
        from scipy.optimize import minimize

        # SciPy calls back when SLSQP starts iteration k, at its first trial point; the iterate
        # x_{k-1} is where the Jacobian was last evaluated
        last = {"x": run.start, "started": 0}

        def jac(x):
            last["x"] = x.copy()  # SLSQP updates its x in place
            J = problem.jac(x)
            return J.toarray() if sp.issparse(J) else J

        def on_iteration(_trial):
            last["started"] += 1
            if last["started"] > 1:
                run.iteration(last["x"], last["started"] - 1)

        constraint = {"type": "eq", "fun": problem.cons, "jac": jac}
        options = {"ftol": self.tol if self.ftol is None else self.ftol, "maxiter": self.max_iter}
        with run.library():
            res = minimize(
                problem.fun,
                run.start,
                jac=problem.grad,
                method="SLSQP",
                constraints=[constraint],
                options=options,
                callback=on_iteration,
            )
            if res.nit > run.nit:  # the final iterate, recorded once SLSQP has returned
                run.iteration(np.array(res.x), res.nit)
        if run.status is not None:
            return run.finish()
        y = -np.asarray(res["multipliers"]) if "multipliers" in res else None
        # SLSQP's status: 0 success, 9 iteration limit, others failures (a singular LSQ subproblem ...)
        outcome = {0: Status.CONVERGED, 9: Status.MAX_ITER}.get(res.status, Status.FAILED)
        verdict = LibraryVerdict(outcome, int(res.status), f"SLSQP: {res.message}")
        return run.finish(verdict, x=res.x, y=y, nit=res.nit)
