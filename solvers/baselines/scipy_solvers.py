"""Baselines wrapping SciPy: ``scipy-cg`` (sparse.linalg.cg), ``scipy-lbfgsb`` (L-BFGS-B) and
``scipy-spsolve`` (sparse.linalg.spsolve, a sparse direct solve).

They run the SciPy routine unchanged through :class:`optkit.blackbox.BlackBoxRun`: the trace
is recorded from SciPy's callback with the clock paused, the time limit (and a callback's
request to stop) end the routine from that callback, and the last iterate it reported is
returned; Ctrl-C returns it too. ``spsolve`` has no callback: its one iteration is the solve.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from optkit.blackbox import BlackBoxRun, LibraryVerdict, krylov_verdict
from optkit.problem import LinearSystemProblem, Problem, SmoothProblem
from optkit.registry import register_solver
from optkit.result import Result, Status
from optkit.solver import Callback, Solver
from optkit.validation import check_choice, check_int, check_nonnegative

__all__ = ["ScipyCG", "ScipyLBFGSB", "ScipySpsolve"]

_PERMUTATIONS = ("COLAMD", "MMD_AT_PLUS_A", "MMD_ATA", "NATURAL")


def _scipy_operator(A: Any, counters: dict):
    """``A`` (an optkit problem's operator or matrix) as a scipy LinearOperator that counts
    its products in ``counters["matvec"]``."""
    from scipy.sparse.linalg import LinearOperator

    def matvec(v):
        counters["matvec"] += 1
        return A @ v

    return LinearOperator(A.shape, matvec=matvec, dtype=A.dtype)


@register_solver("scipy-cg")
@dataclass(frozen=True, kw_only=True)
class ScipyCG(Solver):
    """``scipy.sparse.linalg.cg`` on a symmetric positive (semi)definite system.

    Options
    -------
    tol : float
        Relative residual: stops when ``||b - A x|| < tol * ||b||`` (SciPy's ``rtol``,
        with ``atol = 0``), ``||r||`` being CG's recurrence residual. SciPy tests optkit's
        measure itself, so its verdict decides the status (``info < 0``: ``BREAKDOWN``).
    max_iter : int
        CG iterations (SciPy's ``maxiter``).
    time_limit : float or None

    The operator is the problem's matrix when it has one (so SciPy multiplies the sparse
    matrix directly), else its LinearOperator through ``to_scipy()``; a counting wrapper
    records ``counters["matvec"]``. The trace's ``residual`` is the true relative residual
    ``||b - A x_k|| / ||b||``, computed in the callback with the clock paused.
    """

    accepts = (LinearSystemProblem,)
    requires = frozenset({"psd"})
    backends = frozenset({"numpy"})

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        from scipy.sparse.linalg import cg

        self.ensure_compatible(problem)
        assert isinstance(problem, LinearSystemProblem)
        A = problem.matrix if problem.matrix is not None else problem.A.to_scipy()
        b = np.asarray(problem.b)
        bnorm = float(np.linalg.norm(b)) or 1.0
        counters = {"matvec": 0}

        def relative_residual(v):
            return {"residual": float(np.linalg.norm(b - A @ v)) / bnorm}

        run = BlackBoxRun(self, problem, callback, measure=relative_residual)
        x = np.array(problem.x0 if x0 is None else x0, dtype=b.dtype)
        if run.begin(x) is None and relative_residual(x)["residual"] < self.tol:
            run.status = Status.CONVERGED
        verdict = x_out = None
        if run.status is None:
            with run.library():
                x_out, info = cg(
                    _scipy_operator(A, counters), b, x0=x, rtol=self.tol, atol=0.0, maxiter=self.max_iter,
                    callback=lambda xk: run.iteration(xk.copy()),
                )
                verdict = krylov_verdict(info, "scipy.sparse.linalg.cg")
        return run.finish(x=x_out, verdict=verdict, counters=counters)


@register_solver("scipy-spsolve")
@dataclass(frozen=True, kw_only=True)
class ScipySpsolve(Solver):
    """``scipy.sparse.linalg.spsolve``: a sparse LU factorisation (SuperLU) and solve of ``A x = b``.

    Options
    -------
    tol : float
        Judges the solution: ``CONVERGED`` when the relative residual ``||b - A x|| / ||b||``
        (the trace's ``residual``, as ``scipy-cg``'s) is ``<= tol``, else ``STALLED`` (an
        ill-conditioned system solved to rounding above ``tol``).
    max_iter : int
        ``0`` returns the start; otherwise the one solve is iteration 1.
    time_limit : float or None
        Checked once the solve returns (SuperLU cannot be interrupted).
    permutation : {"COLAMD", "MMD_AT_PLUS_A", "MMD_ATA", "NATURAL"}
        SuperLU's column ordering (SciPy's ``permc_spec``), default ``"COLAMD"``.

    Needs the problem's matrix as a scipy sparse matrix (a direct solve of a dense or
    matrix-free system is not this baseline); it is converted to CSC before the clock starts.
    A singular matrix gives a non-finite solution: status ``NONFINITE``. The start ``x0`` only
    gives row 0: a direct solve does not use it.
    """

    accepts = (LinearSystemProblem,)
    requires = frozenset({"matrix"})
    backends = frozenset({"numpy"})

    permutation: str = "COLAMD"

    def validate(self) -> None:
        super().validate()
        check_choice("permutation", self.permutation, _PERMUTATIONS)

    def check(self, problem: Problem) -> str | None:
        reason = super().check(problem)
        if reason is None and not sp.issparse(problem.matrix):
            reason = f"solver {self.name!r} needs a scipy sparse matrix; problem {problem.name!r} has a dense one"
        return reason

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        from scipy.sparse.linalg import MatrixRankWarning, spsolve

        self.ensure_compatible(problem)
        assert isinstance(problem, LinearSystemProblem)
        A = sp.csc_matrix(problem.matrix)
        b = np.asarray(problem.b)
        bnorm = float(np.linalg.norm(b)) or 1.0

        def relative_residual(v):
            return {"residual": float(np.linalg.norm(b - A @ v)) / bnorm}

        run = BlackBoxRun(self, problem, callback, measure=relative_residual, criterion="residual")
        verdict = None
        if run.begin(np.array(problem.x0 if x0 is None else x0, dtype=b.dtype)) is None:
            with run.library():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", MatrixRankWarning)  # its NaN solution says it
                    x = np.asarray(spsolve(A, b, permc_spec=self.permutation), dtype=b.dtype)
                run.iteration(x, nit=1, check_max_iter=False)
                verdict = LibraryVerdict(Status.CONVERGED, 0, "scipy.sparse.linalg.spsolve: solved")
        return run.finish(verdict=verdict)


@register_solver("scipy-lbfgsb")
@dataclass(frozen=True, kw_only=True)
class ScipyLBFGSB(Solver):
    """``scipy.optimize.minimize(method="L-BFGS-B")`` on an unconstrained smooth problem.

    Options
    -------
    tol : float
        SciPy's ``gtol``: stops when the projected gradient's largest entry
        ``max_i |g_i|`` is ``<= tol`` (no bounds here, so the plain gradient).
    max_iter : int
        L-BFGS-B iterations (SciPy's ``maxiter``; ``maxfun`` is ``20 * max_iter + 20``).
    time_limit : float or None
    memory : int
        Stored correction pairs (SciPy's ``maxcor``), default 10.
    ftol : float
        SciPy's relative-decrease test ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol``.
        Default 0, so that it fires only when ``f`` stops changing in floating point.

    Status (the rule of :mod:`optkit.blackbox`): ``CONVERGED`` when ``grad_inf <= tol`` at
    the returned point; ``STALLED`` when SciPy reports success on its other test (the
    relative reduction of ``f``: ``f`` no longer decreases in floating point, so ``tol`` was
    below what the problem's rounding allows), ``MAX_ITER`` at its iteration or evaluation
    limit, ``FAILED`` otherwise (e.g. an abnormal line search), each with SciPy's message.
    ``extras["library_status"]`` is SciPy's ``status`` and ``extras["hess_inv"]`` its
    ``LbfgsInvHessProduct``; ``Result.jac`` is the gradient at ``x``.

    Trace rows hold the problem's ``evaluate`` measures (``fun``, ``grad_norm``, ``f_gap`` when
    the optimum is known, a finite-sum problem's accuracies), ``grad_inf`` (the stopping measure)
    and ``epoch``: the evaluations of ``f`` and its gradient so far, each a pass over the data of a
    finite-sum problem (the unit of the torch optimizers' ``epoch``). Counters are the problem's
    (``fun``, ``grad``).
    """

    accepts = (SmoothProblem,)
    requires = frozenset({"fun", "grad"})
    backends = frozenset({"numpy"})

    tol: float = 1e-6
    memory: int = 10
    ftol: float = 0.0

    def validate(self) -> None:
        super().validate()
        check_int("memory", self.memory, 1)
        check_nonnegative("ftol", self.ftol)

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        from scipy.optimize import minimize

        self.ensure_compatible(problem)
        assert isinstance(problem, SmoothProblem)
        last: dict[str, Any] = {"evaluations": 0}

        def fun_and_grad(v):
            f, g = problem.fun_and_grad(v)
            g = np.asarray(g, dtype=float)
            last.update(x=v.copy(), f=f, g=g, evaluations=last["evaluations"] + 1)
            return f, g

        def measures(v):
            if "x" in last and np.array_equal(last["x"], v):
                f, g = last["f"], last["g"]
            else:  # a point L-BFGS-B did not evaluate (the start): measured for the trace only
                f, g = problem.fun_and_grad(v)
                g = np.asarray(g, dtype=float)
            measured["g"] = g
            row = {"fun": f, "grad_norm": float(np.linalg.norm(g)), "grad_inf": float(np.max(np.abs(g), initial=0.0))}
            row.update((k, float(m)) for k, m in problem.evaluate(v).items() if k not in row)
            return {**row, "epoch": float(last["evaluations"])}

        measured: dict[str, np.ndarray] = {}
        run = BlackBoxRun(self, problem, callback, measure=measures, criterion="grad_inf")
        x = np.array(problem.x0 if x0 is None else x0, dtype=float)
        res = verdict = None
        if run.begin(x) is None:
            options = {
                "maxiter": self.max_iter,
                "maxfun": 20 * self.max_iter + 20,
                "gtol": self.tol,
                "ftol": self.ftol,
                "maxcor": self.memory,
            }
            with run.library():
                res = minimize(
                    fun_and_grad, x, jac=True, method="L-BFGS-B", options=options,
                    callback=lambda xk: run.iteration(np.array(xk)),
                )
                outcome = {0: Status.CONVERGED, 1: Status.MAX_ITER}.get(int(res.status), Status.FAILED)
                verdict = LibraryVerdict(outcome, int(res.status), f"L-BFGS-B: {res.message}")
        extras = {} if res is None else {"hess_inv": res.hess_inv}
        result = run.finish(x=None if res is None else np.asarray(res.x), verdict=verdict, extras=extras)
        # the last measurement was taken at the returned point
        return replace(result, jac=measured["g"])
