"""Baseline ``pyamg``: PyAMG's smoothed-aggregation algebraic multigrid, by default as a
preconditioner of CG (pyamg is imported only when a solve starts)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from optkit.backend import optional_import
from optkit.problem import LinearSystemProblem, Problem
from optkit.registry import register_solver
from optkit.result import Result, Status
from optkit.solver import Callback, Recorder, Solver, StopSolver

__all__ = ["PyAMG"]

_ACCEL = ("cg", "none")
_CYCLES = ("V", "W", "F")


@register_solver("pyamg")
@dataclass(frozen=True, kw_only=True)
class PyAMG(Solver):
    """Smoothed-aggregation AMG (``pyamg.smoothed_aggregation_solver``) on an SPD matrix.

    Options
    -------
    tol : float
        Relative residual: stops when ``||b - A x|| < tol * ||b||`` (PyAMG's ``tol`` with its
        default ``"rr"`` criterion; with ``accel="cg"`` ``r`` is CG's residual, recomputed
        as ``b - A x`` every 8 iterations).
    max_iter : int
        Iterations: CG steps (``accel="cg"``) or multigrid cycles (``accel="none"``).
    time_limit : float or None
        Counts the setup (hierarchy construction) too.
    accel : {"cg", "none"}
        ``"cg"``: AMG-preconditioned CG (one cycle per CG step); ``"none"``: stationary cycling.
    cycle : {"V", "W", "F"}
    max_coarse : int
        Size below which the coarsest level is solved directly.
    seed : int or None
        Seed of the random vectors PyAMG's setup draws from numpy's global generator
        (spectral-radius estimates), so that runs are reproducible; numpy's global state is
        restored afterwards. ``None`` leaves the global generator alone.

    ``time_s`` includes the setup; its seconds are also ``metrics["setup_time_s"]``, and
    ``extras`` holds ``levels`` and ``operator_complexity``. The trace's ``residual`` is
    PyAMG's residual norm divided by ``||b||``. ``counters["cycle"]`` counts multigrid cycles.
    Needs the problem's matrix (capability ``"matrix"``).
    """

    accepts = (LinearSystemProblem,)
    requires = frozenset({"psd", "matrix"})
    backends = frozenset({"numpy"})

    accel: str | None = "cg"
    cycle: str = "V"
    max_coarse: int = 10
    seed: int | None = 0

    def validate(self) -> None:
        super().validate()
        if (self.accel if self.accel is not None else "none") not in _ACCEL:
            raise ValueError(f"accel must be one of {_ACCEL}, got {self.accel!r}")
        if self.cycle not in _CYCLES:
            raise ValueError(f"cycle must be one of {_CYCLES}, got {self.cycle!r}")
        if (
            isinstance(self.max_coarse, bool)
            or not isinstance(self.max_coarse, numbers.Integral)
            or self.max_coarse < 1
        ):
            raise ValueError(f"max_coarse must be a positive integer, got {self.max_coarse!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    def _setup(self, pyamg, A):
        if self.seed is None:
            return pyamg.smoothed_aggregation_solver(A, max_coarse=self.max_coarse)
        saved = np.random.get_state()
        np.random.seed(self.seed)
        try:
            return pyamg.smoothed_aggregation_solver(A, max_coarse=self.max_coarse)
        finally:
            np.random.set_state(saved)

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        self.ensure_compatible(problem)
        assert isinstance(problem, LinearSystemProblem)
        pyamg = optional_import("pyamg", "solver 'pyamg'")
        import scipy.sparse as sp

        accel = None if self.accel in (None, "none") else self.accel
        A = sp.csr_matrix(problem.matrix)
        b = np.asarray(problem.b)
        x = np.array(problem.x0 if x0 is None else x0, dtype=b.dtype)
        bnorm = float(np.linalg.norm(b)) or 1.0
        recorder = Recorder(time_limit=self.time_limit, callback=callback, device="cpu")
        recorder.start()
        ml = self._setup(pyamg, A)
        setup_s = recorder.elapsed
        recorder.pause()
        residuals: list[float] = []
        state = {"x": x, "nit": 0}
        r0 = float(np.linalg.norm(b - A @ x)) / bnorm
        status = recorder.record(0, {"residual": r0}, x)
        if status is None and (self.max_iter == 0 or r0 < self.tol):
            status = Status.CONVERGED if r0 < self.tol else Status.MAX_ITER

        def on_iteration(xk):
            recorder.pause()
            state["nit"] += 1
            state["x"] = xk.copy()
            stop = recorder.record(state["nit"], {"residual": residuals[-1] / bnorm}, xk)
            if stop is not None:
                raise StopSolver(stop)

        if status is None:
            try:
                x_out, info = ml.solve(
                    b,
                    x0=x,
                    tol=self.tol,
                    maxiter=self.max_iter,
                    cycle=self.cycle,
                    accel=accel,
                    callback=on_iteration,
                    residuals=residuals,
                    return_info=True,
                )
            except StopSolver as stop:
                status = stop.status
            else:
                state["x"] = x_out
                status = Status.CONVERGED if info == 0 else Status.MAX_ITER if info > 0 else Status.BREAKDOWN
        recorder.pause()
        nit = state["nit"]
        cycles = nit + (1 if accel is not None and residuals else 0)
        final = residuals[-1] / bnorm if residuals else r0
        return Result(
            x=state["x"],
            status=status,
            nit=nit,
            counters={"cycle": cycles},
            time_s=recorder.elapsed,
            metrics={"residual": final, "setup_time_s": setup_s},
            trace=recorder.rows,
            solver=self.name,
            problem=problem.name,
            extras={"levels": len(ml.levels), "operator_complexity": float(ml.operator_complexity())},
        )
