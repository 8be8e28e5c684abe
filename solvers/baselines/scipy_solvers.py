"""Baselines wrapping SciPy: ``scipy-cg`` (sparse.linalg.cg) and ``scipy-lbfgsb`` (L-BFGS-B).

Both run the SciPy routine unchanged and record the optkit trace from its callback, with
the clock paused while a row is recorded; the time limit (and a callback's request to
stop) ends the routine by raising :class:`~optkit.solver.StopSolver` from that callback,
and the last iterate it reported is returned.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from optkit.problem import LinearSystemProblem, Problem, SmoothProblem
from optkit.registry import register_solver
from optkit.result import Result, Status
from optkit.solver import Callback, Recorder, Solver, StopSolver

__all__ = ["ScipyCG", "ScipyLBFGSB"]


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
        with ``atol = 0``), ``||r||`` being CG's recurrence residual.
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
        x = np.array(problem.x0 if x0 is None else x0, dtype=b.dtype)
        bnorm = float(np.linalg.norm(b)) or 1.0
        counters = {"matvec": 0}
        op = _scipy_operator(A, counters)
        recorder = Recorder(time_limit=self.time_limit, callback=callback, device="cpu")
        state = {"x": x, "nit": 0}

        def relres(v):
            return float(np.linalg.norm(b - A @ v)) / bnorm

        def on_iteration(xk):
            recorder.pause()
            state["nit"] += 1
            state["x"] = xk.copy()
            status = recorder.record(state["nit"], {"residual": relres(xk)}, xk)
            if status is not None:
                raise StopSolver(status)

        # the clock starts when record() returns: measuring x0 is not the solver's work
        r0 = relres(x)
        status = recorder.record(0, {"residual": r0}, x)
        if status is None and self.max_iter == 0:
            status = Status.CONVERGED if r0 < self.tol else Status.MAX_ITER
        if status is None:
            try:
                x_out, info = cg(op, b, x0=x, rtol=self.tol, atol=0.0, maxiter=self.max_iter, callback=on_iteration)
            except StopSolver as stop:
                status = stop.status
            else:
                state["x"] = x_out
                status = Status.CONVERGED if info == 0 else Status.MAX_ITER if info > 0 else Status.FAILED
        recorder.pause()
        residual = recorder.rows[-1]["residual"] if recorder.rows[-1]["iter"] == state["nit"] else relres(state["x"])
        return Result(
            x=state["x"],
            status=status,
            nit=state["nit"],
            counters=counters,
            time_s=recorder.elapsed,
            metrics={"residual": residual},
            trace=recorder.rows,
            solver=self.name,
            problem=problem.name,
        )


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
        Default 0: only ``tol`` ends a run as converged. When SciPy stops for any other
        reason (``ftol``, a failed line search) the status is ``CONVERGED`` only if the
        gradient test holds, else ``FAILED`` with SciPy's message.

    Trace rows hold ``fun``, ``grad_norm`` (Euclidean, as ``problem.evaluate``) and
    ``grad_inf`` (the stopping measure). Counters are the problem's (``fun``, ``grad``).
    """

    accepts = (SmoothProblem,)
    requires = frozenset({"fun", "grad"})
    backends = frozenset({"numpy"})

    tol: float = 1e-6
    memory: int = 10
    ftol: float = 0.0

    def validate(self) -> None:
        super().validate()
        if isinstance(self.memory, bool) or not isinstance(self.memory, numbers.Integral) or self.memory < 1:
            raise ValueError(f"memory must be a positive integer, got {self.memory!r}")
        if isinstance(self.ftol, bool) or not isinstance(self.ftol, numbers.Real) or not 0 <= self.ftol < math.inf:
            raise ValueError(f"ftol must be a finite number >= 0, got {self.ftol!r}")

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        from scipy.optimize import minimize

        self.ensure_compatible(problem)
        assert isinstance(problem, SmoothProblem)
        counters_before = dict(problem.counters)
        recorder = Recorder(time_limit=self.time_limit, callback=callback, device="cpu")
        x = np.array(problem.x0 if x0 is None else x0, dtype=float)
        last: dict[str, Any] = {}

        def fun_and_grad(v):
            f, g = problem.fun_and_grad(v)
            g = np.asarray(g, dtype=float)
            last.update(x=v.copy(), f=f, g=g)
            return f, g

        def measures(v):
            if "x" in last and np.array_equal(last["x"], v):
                f, g = last["f"], last["g"]
            else:  # not counted: an evaluation for the trace only
                f, g = float(problem._f(v)), np.asarray(problem._g(v), dtype=float)
            return {"fun": f, "grad_norm": float(np.linalg.norm(g)), "grad_inf": float(np.max(np.abs(g), initial=0.0))}

        state = {"x": x, "nit": 0, "metrics": None}

        def on_iteration(intermediate_result):
            recorder.pause()
            xk = np.array(intermediate_result.x)
            state["nit"] += 1
            state["x"] = xk
            state["metrics"] = measures(xk)
            status = recorder.record(state["nit"], state["metrics"], xk)
            if status is not None:
                raise StopSolver(status)

        recorder.start()
        recorder.pause()
        state["metrics"] = measures(x)
        status = recorder.record(0, state["metrics"], x)
        message = ""
        if status is None and (self.max_iter == 0 or state["metrics"]["grad_inf"] <= self.tol):
            status = Status.CONVERGED if state["metrics"]["grad_inf"] <= self.tol else Status.MAX_ITER
        if status is None:
            options = {
                "maxiter": self.max_iter,
                "maxfun": 20 * self.max_iter + 20,
                "gtol": self.tol,
                "ftol": self.ftol,
                "maxcor": self.memory,
            }
            try:
                res = minimize(fun_and_grad, x, jac=True, method="L-BFGS-B", options=options, callback=on_iteration)
            except StopSolver as stop:
                status = stop.status
            else:
                recorder.pause()
                state["x"] = np.asarray(res.x)
                state["metrics"] = measures(state["x"])
                message = str(res.message)
                if state["metrics"]["grad_inf"] <= self.tol:
                    status = Status.CONVERGED
                elif res.status == 1:
                    status = Status.MAX_ITER
                else:
                    status = Status.FAILED
        recorder.pause()
        counters = {k: v - counters_before.get(k, 0) for k, v in problem.counters.items()}
        return Result(
            x=state["x"],
            fun=state["metrics"]["fun"],
            status=status,
            message=message if status is Status.FAILED else "",
            nit=state["nit"],
            counters=counters,
            time_s=recorder.elapsed,
            metrics=state["metrics"],
            trace=recorder.rows,
            solver=self.name,
            problem=problem.name,
        )
