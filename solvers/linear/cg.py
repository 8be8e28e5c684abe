"""Solvers ``cg`` and ``pcg``: (preconditioned) conjugate gradients as iterative solvers.

Both drive :class:`optkit.krylov.CGIteration` (the one implementation of the CG
recurrences) through :meth:`optkit.solver.IterativeSolver.solve`, so they get the shared
trace, callback, ``max_iter``, ``time_limit`` and Ctrl-C handling, and stop exactly where
:func:`optkit.krylov.cg` and :func:`scipy.sparse.linalg.cg` stop: after the same number of
iterations on the same problem.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from optkit.backend import optional_import, synchronize
from optkit.krylov import CGIteration, CGState
from optkit.linop import Diagonal, FunctionOperator, diagonal
from optkit.problem import LinearSystemProblem, Problem
from optkit.registry import register_solver
from optkit.result import Status
from optkit.solver import IterativeSolver

__all__ = ["CG", "PCG", "PRECONDITIONERS"]

#: The preconditioners of :class:`PCG`, with the backends they run on.
PRECONDITIONERS = {"none": {"numpy", "torch"}, "jacobi": {"numpy", "torch"}, "ichol": {"numpy"}, "ilupp": {"numpy"}}


def _ilupp_ichol0(matrix) -> FunctionOperator:
    """``ilupp``'s IC(0) of ``matrix`` as a symmetric positive definite operator (numpy, the
    matrix's dtype; ilupp factors and solves in float64)."""
    import scipy.sparse as sp

    ilupp = optional_import("ilupp", "pcg with preconditioner='ilupp'")
    # ilupp accepts only csr_matrix/csc_matrix (not sparse arrays) and sorts the indices in place: give it a copy
    factor = ilupp.IChol0Preconditioner(sp.csr_matrix(matrix, dtype=np.float64, copy=True))

    def apply(r: np.ndarray) -> np.ndarray:
        z = np.array(r, dtype=np.float64, copy=True)
        factor.apply(z)
        return z.astype(matrix.dtype, copy=False)

    return FunctionOperator(matrix.shape, apply, apply, dtype=matrix.dtype, tags=("symmetric", "psd"))


@dataclass(frozen=True)
class _Run:
    """The solver state: the CG iteration (operators, ``b``), its current state, the
    absolute stopping threshold and the preconditioner's setup facts."""

    iteration: CGIteration
    cg: CGState
    threshold: float
    b_norm: float
    setup: dict = field(default_factory=dict)

    @property
    def x(self) -> Any:
        return self.cg.x


@dataclass(frozen=True, kw_only=True)
class _ConjugateGradient(IterativeSolver):
    """Shared driver hooks of :class:`CG` and :class:`PCG`."""

    accepts: ClassVar[tuple] = (LinearSystemProblem,)
    requires: ClassVar[frozenset] = frozenset({"psd"})
    backends: ClassVar[frozenset] = frozenset({"numpy", "torch"})

    def _preconditioner(self, problem: LinearSystemProblem) -> tuple[Any, dict]:
        """``(M, setup facts)``; ``M = None`` for plain CG."""
        return None, {}

    def init(self, problem: Problem, x0: Any) -> _Run:
        assert isinstance(problem, LinearSystemProblem)
        start = time.perf_counter()
        M, setup = self._preconditioner(problem)
        if M is not None:
            synchronize(problem.device)
            setup = {**setup, "setup_time_s": time.perf_counter() - start}
        iteration = CGIteration(problem.A, problem.b, M=M)
        # b = 0: x = 0 solves the system exactly (as scipy's cg returns at once)
        state = iteration.init(None if iteration.b_norm == 0 else x0)
        b_norm = iteration.b_norm or 1.0
        return _Run(iteration, state, iteration.tolerance(rtol=self.tol), b_norm, setup)

    def step(self, problem: Problem, state: _Run) -> _Run:
        return replace(state, cg=state.iteration.step(state.cg))

    def terminate(self, problem: Problem, state: _Run) -> Status | None:
        if state.iteration.converged(state.cg, state.threshold):
            return Status.CONVERGED
        return state.cg.status

    def metrics(self, problem: Problem, state: _Run) -> dict[str, float]:
        return {"residual": state.cg.residual_norm / state.b_norm}

    def postprocess(self, problem: Problem, state: _Run, status: Status) -> dict[str, Any]:
        out: dict[str, Any] = {
            "x": state.x,
            "metrics": {**self.metrics(problem, state), **{k: v for k, v in state.setup.items() if k.endswith("_s")}},
            "counters": {"matvec": state.cg.matvecs},
            "extras": dict(state.setup),
        }
        if state.cg.status is not None and status is state.cg.status:
            out["message"] = state.cg.message
        return out


@register_solver("cg")
@dataclass(frozen=True, kw_only=True)
class CG(_ConjugateGradient):
    """Conjugate gradients for a symmetric positive definite system ``A x = b``.

    Options
    -------
    tol : float
        Relative residual: stops when ``||r_k|| < tol * ||b||``, with ``r_k`` CG's recurrence
        residual (the same test as :func:`scipy.sparse.linalg.cg` with ``rtol=tol, atol=0``).
    max_iter : int
        CG iterations.
    time_limit : float or None
        Seconds; the partial result comes back with status ``TIME_LIMIT``.

    Runs on numpy and torch problems (any device: ``problem.to("torch", device="cuda")``),
    one ``A @ p`` and two inner products per iteration. Metrics: ``residual``
    (``||r_k|| / ||b||``). Counters: ``matvec``. A non-positive curvature ``p^T A p <= 0``
    ends the run with ``BREAKDOWN`` and the last good iterate, NaN/inf with ``NONFINITE``.
    The iterate handed to a callback is updated in place by later iterations: copy it to keep it.
    """


@register_solver("pcg")
@dataclass(frozen=True, kw_only=True)
class PCG(_ConjugateGradient):
    """Preconditioned conjugate gradients for a symmetric positive definite ``A x = b``.

    Options
    -------
    tol, max_iter, time_limit :
        As :class:`CG` (``tol`` is on the unpreconditioned relative residual ``||r_k|| / ||b||``).
    preconditioner : {"jacobi", "ichol", "ilupp", "none"}
        ``"jacobi"``: ``M = diag(A)^-1`` (numpy and torch; needs a positive diagonal).
        ``"ichol"``: zero-fill incomplete Cholesky ``M = (L L^T)^-1``
        (:func:`solvers.linear.ichol.ichol`, numpy only, needs the matrix entries; on a
        non-positive pivot it refactors with a diagonal shift, reported in
        ``extras["ichol_shift"]``). ``"ilupp"``: the same IC(0) from the ``ilupp`` package
        (``ilupp.IChol0Preconditioner``, C++; numpy only, needs the matrix entries and the
        extra ``dcdm``; no shift on breakdown), the baseline the DCDM reference compares
        against. ``"none"`` (or ``None``, as the spec
        ``pcg:preconditioner=none`` reads): plain CG.

    The preconditioner is built inside the timed run; its seconds are also
    ``metrics["setup_time_s"]``.
    """

    preconditioner: str | None = "jacobi"

    @property
    def _kind(self) -> str:
        return "none" if self.preconditioner is None else self.preconditioner

    def validate(self) -> None:
        super().validate()
        if self._kind not in PRECONDITIONERS:
            raise ValueError(
                f"preconditioner must be one of {', '.join(map(repr, PRECONDITIONERS))}, got {self.preconditioner!r}"
            )

    def check(self, problem: Problem) -> str | None:
        reason = super().check(problem)
        if reason is not None or self._kind not in ("ichol", "ilupp"):
            return reason
        if problem.backend not in PRECONDITIONERS[self._kind]:
            return (
                f"pcg with preconditioner={self._kind!r} runs on numpy only (CPU triangular solves), not on backend "
                f"{problem.backend!r}; use preconditioner='jacobi' there"
            )
        if "matrix" not in problem.capabilities:
            return (
                f"pcg with preconditioner={self._kind!r} needs the matrix entries, which problem {problem.name!r} lacks"
            )
        return None

    def _preconditioner(self, problem: LinearSystemProblem) -> tuple[Any, dict]:
        if self._kind == "none":
            return None, {}
        if self._kind == "jacobi":
            d = diagonal(problem.A)
            xp = problem.A.xp
            if not bool(xp.all(d > 0)):
                raise ValueError("preconditioner='jacobi' needs a positive diagonal; A has a diagonal entry <= 0")
            return Diagonal(1.0 / d), {"preconditioner": "jacobi"}
        if self._kind == "ilupp":
            return _ilupp_ichol0(problem.matrix), {"preconditioner": "ilupp"}
        from .ichol import ichol

        factor = ichol(problem.matrix)
        return factor.as_operator(), {"preconditioner": "ichol", "ichol_shift": factor.shift}
