"""Baseline ``pyamg``: PyAMG's smoothed-aggregation algebraic multigrid, by default as a
preconditioner of CG (pyamg is imported only when a solve starts)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from optkit.backend import optional_import
from optkit.blackbox import BlackBoxRun, krylov_verdict
from optkit.problem import LinearSystemProblem, Problem
from optkit.registry import register_solver
from optkit.result import Result
from optkit.solver import Callback, Solver

__all__ = ["PyAMG", "coarse_solver"]

_ACCEL = ("cg", "none")
_CYCLES = ("V", "W", "F")


#: Coarsest-level eigenvalues below this fraction of the largest diagonal entry of ``A`` count as
#: zero: they are rounding of a singular coarse operator (~1e-16 of it), never a real eigenvalue of
#: a system AMG can solve.
_COARSE_NULL = 1e-10


def coarse_solver(A) -> tuple:
    """PyAMG's ``coarse_solver`` argument: ``pinv`` with an absolute cutoff of ``1e-10 max|a_ii|``.

    PyAMG's default ``pinv`` cuts relative to the largest singular value of the coarsest
    matrix, which is itself rounding when a closed fluid region has coarsened to one unknown
    (a 1x1 matrix ``[-3e-18]`` on the bunny at 16^3): it gets inverted, every V-cycle adds a
    ``ker A`` component ~1e17 times the residual's, and CG breaks down (``p^T A p <= 0``)."""
    return ("pinv", {"atol": _COARSE_NULL * float(abs(A.diagonal()).max(initial=0.0))})


@register_solver("pyamg")
@dataclass(frozen=True, kw_only=True)
class PyAMG(Solver):
    """Smoothed-aggregation AMG (``pyamg.smoothed_aggregation_solver``) on an SPD matrix.

    Options
    -------
    tol : float
        Relative residual: PyAMG stops when ``||b - A x|| < tol * ||b||`` (its ``tol`` with
        its default ``"rr"`` criterion; with ``accel="cg"`` ``r`` is CG's residual,
        recomputed as ``b - A x`` every 8 iterations).
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

    Status (the rule of :mod:`optkit.blackbox`, on the criterion ``residual``):
    ``CONVERGED`` when the returned point's ``residual`` is ``<= tol`` (PyAMG's own test,
    so also when it converges at the ``max_iter``-th iteration; a start that meets ``tol``
    takes no iteration), ``MAX_ITER`` at the iteration limit, ``BREAKDOWN`` for a negative
    ``info`` (PyAMG's CG met an indefinite matrix or preconditioner), the same reading of
    ``info`` as ``scipy-cg`` (:func:`optkit.blackbox.krylov_verdict`); PyAMG's ``info`` and
    message are ``extras["library_status"]`` and ``["library_message"]``. The callback,
    the time limit and Ctrl-C end the run at the last iterate PyAMG reported
    (``USER_STOPPED`` for Ctrl-C).

    Singular systems. The near-nullspace candidate is PyAMG's default, the constant vector,
    also for the pressure systems of :mod:`problems.pressure` whose nullspace
    (``metadata["nullspace"]``) has one indicator per closed fluid region: aggregates grow
    inside connected components of the strength graph, so the constant restricted to each
    aggregate already spans every region's indicator on every level. Passing the indicators
    as ``B`` instead multiplies the operator complexity by their number and, where a region
    is open to air (an indicator that is zero there), leaves that region's aggregates
    without a candidate (tests/solvers/test_pressure_baselines.py measures both).

    The coarsest level is solved by a pseudo-inverse that treats eigenvalues below
    ``1e-10 max|a_ii|`` as zero (:func:`coarse_solver`), so that the singular coarse operators
    of closed regions are not inverted: with PyAMG's default relative cutoff, CG broke down on
    these systems (bunny 16^3 at ``tol=1e-8``: stuck at 3.6e-7; float32: at the first
    iteration) and stationary cycling overflowed in float32.

    ``time_s`` includes the setup; its seconds are also ``metrics["setup_time_s"]``, and
    ``extras`` holds ``levels`` and ``operator_complexity``. The trace's ``residual`` is
    PyAMG's residual norm divided by ``||b||`` (row 0: ``||b - A x0|| / ||b||``), and the
    last row's is the result's, except after a breakdown that returns a point PyAMG did
    not report, whose true residual is measured. ``counters["cycle"]`` counts multigrid
    cycles. Needs the problem's matrix (capability ``"matrix"``).
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
            return pyamg.smoothed_aggregation_solver(A, max_coarse=self.max_coarse, coarse_solver=coarse_solver(A))
        saved = np.random.get_state()
        np.random.seed(self.seed)
        try:
            return pyamg.smoothed_aggregation_solver(A, max_coarse=self.max_coarse, coarse_solver=coarse_solver(A))
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

        def relative_residual(v):
            return {"residual": float(np.linalg.norm(b - A @ v)) / bnorm}

        run = BlackBoxRun(self, problem, callback, measure=relative_residual, criterion="residual")
        # the setup is the solver's work: timed before the run's clock takes over at row 0
        run.recorder.start()
        ml = self._setup(pyamg, A)
        run.recorder.pause()
        setup_s = run.recorder.elapsed
        residuals: list[float] = []  # PyAMG's residual norms, the last one of its latest iterate
        verdict = x_out = None
        if run.begin(x) is None:
            with run.library():
                x_out, info = ml.solve(
                    b,
                    x0=x,
                    tol=self.tol,
                    maxiter=self.max_iter,
                    cycle=self.cycle,
                    accel=accel,
                    callback=lambda xk: run.iteration(xk.copy(), metrics={"residual": float(residuals[-1]) / bnorm}),
                    residuals=residuals,
                    return_info=True,
                )
                verdict = krylov_verdict(info, "pyamg")
        if x_out is not None and np.array_equal(x_out, run.x):
            x_out = None  # PyAMG's last reported iterate: its recorded residual is the final one
        cycles = run.nit + (1 if accel is not None and residuals else 0)  # CG's preconditioned start
        result = run.finish(
            x=x_out,
            verdict=verdict,
            counters={"cycle": cycles},
            extras={"levels": len(ml.levels), "operator_complexity": float(ml.operator_complexity())},
        )
        return replace(result, metrics={**result.metrics, "setup_time_s": setup_s})
