"""Baseline ``ipopt``: the interior-point solver IPOPT through cyipopt's ``cyipopt.Problem``
(cyipopt is imported only when a solve starts).

The problem's Jacobian and Lagrangian Hessian are handed to IPOPT in its sparse triplet
format: every entry when the problem returns dense arrays, the pattern of the matrix at the
starting point when it returns scipy sparse ones (so large sparse problems stay sparse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from optkit.backend import has_module, optional_import
from optkit.blackbox import LibraryVerdict
from optkit.constrained_problem import EqualityConstrainedProblem
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.result import Result, Status
from optkit.solver import Callback, StopSolver
from optkit.validation import check_choice, check_int

from ._constrained_common import HESSIANS, ConstrainedBaseline, ConstrainedRun, hessian_reason, use_exact_hessian

__all__ = ["Ipopt"]

_INSTALL = (
    "pip install 'optkit[ipopt]' (cyipopt builds against a system Ipopt; on Debian/Ubuntu first "
    "apt-get install coinor-libipopt-dev liblapack-dev libblas-dev pkg-config)"
)
# IPOPT's ApplicationReturnStatus values the wrapper interprets
_SUCCESS = (0, 1)  # Solve_Succeeded, Solved_To_Acceptable_Level
_MAX_ITER = -1  # Maximum_Iterations_Exceeded


def _cyipopt():
    try:
        return optional_import("cyipopt", "solver 'ipopt'")
    except ImportError as err:
        raise ImportError(f"{err}; the full recipe: {_INSTALL}") from None


class _Pattern:
    """The fixed positions ``(rows, cols)`` at which IPOPT receives a matrix's entries.

    Parameters
    ----------
    matrix : ndarray or scipy sparse
        The matrix at the starting point: a dense one gives every entry (row-major), a sparse
        one its stored entries.
    lower : bool
        Keep the lower triangle only (IPOPT's convention for the symmetric Hessian).
    what : str
        The matrix's name, for the error when a later sparse matrix leaves the pattern.
    """

    def __init__(self, matrix: Any, *, lower: bool, what: str) -> None:
        self.lower, self.what = lower, what
        if sp.issparse(matrix):
            coo = sp.coo_array(sp.tril(matrix) if lower else matrix)
            coo.sum_duplicates()
            self.rows, self.cols = coo.row.astype(np.int64), coo.col.astype(np.int64)
        elif lower:
            self.rows, self.cols = np.tril_indices(matrix.shape[0])
        else:
            self.rows, self.cols = (i.ravel() for i in np.indices(matrix.shape))

    def structure(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)``, as IPOPT's structure callbacks return them."""
        return self.rows, self.cols

    def values(self, matrix: Any) -> np.ndarray:
        """``matrix``'s entries at the pattern; a ``ValueError`` if a sparse one has entries outside it."""
        if not sp.issparse(matrix):
            return np.asarray(matrix, dtype=float)[self.rows, self.cols]
        matrix = sp.csr_array(matrix)
        values = np.asarray(matrix[self.rows, self.cols], dtype=float).ravel()
        inside = float(np.abs(values).sum())
        total = float(abs(sp.tril(matrix) if self.lower else matrix).sum())
        if total > inside * (1 + 1e-12):
            raise ValueError(
                f"the sparsity pattern of {self.what} changed: it has entries outside its pattern at the "
                "starting point (give the matrix a fixed pattern, storing explicit zeros where needed)"
            )
        return values


class _Callbacks:
    """The ``problem_obj`` of ``cyipopt.Problem`` (quasi-Newton: no Hessian callbacks).

    ``jacobian`` keeps its point: IPOPT evaluates the Jacobian at each new iterate before it
    calls ``intermediate``, and Ipopt < 3.14 cannot report the iterate itself.
    """

    def __init__(self, problem: EqualityConstrainedProblem, run: ConstrainedRun, jac: _Pattern) -> None:
        self.problem, self.run, self.jac = problem, run, jac
        self.x = run.start

    def objective(self, x):
        return self.problem.fun(x)

    def gradient(self, x):
        return self.problem.grad(x)

    def constraints(self, x):
        return self.problem.cons(x)

    def jacobian(self, x):
        self.x = x
        return self.jac.values(self.problem.jac(x))

    def jacobianstructure(self):
        return self.jac.structure()

    def intermediate(self, alg_mod, iter_count, *_):
        if iter_count > 0:  # iteration 0 is the start, recorded by run.begin()
            try:
                self.run.iteration(np.array(self.x), iter_count)
            except StopSolver:  # run.status says why; IPOPT stops when this returns False
                return False
        return True


class _ExactHessianCallbacks(_Callbacks):
    """:class:`_Callbacks` with IPOPT's ``hessian(x, lambda, obj_factor)`` = the problem's ``lag_hess``."""

    def __init__(self, problem: EqualityConstrainedProblem, run: ConstrainedRun, jac: _Pattern, hess: _Pattern):
        super().__init__(problem, run, jac)
        self.hess = hess

    def hessian(self, x, lagrange, obj_factor):
        return self.hess.values(self.problem.lag_hess(x, lagrange, obj_factor))

    def hessianstructure(self):
        return self.hess.structure()


@register_solver("ipopt")
@dataclass(frozen=True, kw_only=True)
class Ipopt(ConstrainedBaseline):
    """IPOPT (interior point, filter line search) through ``cyipopt.Problem``.

    Options
    -------
    tol : float
        IPOPT's ``tol``, ``dual_inf_tol`` and ``constr_viol_tol``: it stops when (besides its
        scaled error) ``||grad f + J^T y||_inf <= tol`` and ``||c||_inf <= tol`` on the
        unscaled problem — the KKT residual.
    max_iter : int
        IPOPT's ``max_iter``.
    time_limit : float or None
        Checked in IPOPT's ``intermediate`` callback, which then stops it.
    hessian : {"auto", "exact", "quasi-newton"}
        ``"exact"``: the problem's ``lag_hess(x, lambda, obj_factor)``; ``"quasi-newton"``:
        IPOPT's limited-memory BFGS (``hessian_approximation="limited-memory"``); ``"auto"``
        (default): exact when the problem has ``lag_hess``.
    memory : int
        Stored pairs of the limited-memory approximation (``limited_memory_max_history``),
        default 6 (IPOPT's).

    The Jacobian and Hessian structures are fixed from the starting point: all entries (the
    Hessian's lower triangle) when the problem returns dense arrays, the stored entries when it
    returns scipy sparse matrices — whose pattern must then stay the same (explicit zeros
    allowed). IPOPT prints nothing (``print_level=0``, ``sb="yes"``). ``extras["y"]`` is
    IPOPT's ``mult_g``, which has optkit's sign (``L = f + y^T c``). Status ``CONVERGED`` needs
    IPOPT's success (``Solve_Succeeded`` or ``Solved_To_Acceptable_Level``) and a KKT residual
    ``<= tol``. Counters are the problem's (``fun``, ``grad``, ``cons``, ``jac``, ``lag_hess``).
    Needs cyipopt: ``pip install 'optkit[ipopt]'`` on top of Debian's ``coinor-libipopt-dev``.
    """

    hessian: str = "auto"
    memory: int = 6

    def validate(self) -> None:
        super().validate()
        check_choice("hessian", self.hessian, HESSIANS)
        check_int("memory", self.memory, 1)

    def check(self, problem: Problem) -> str | None:
        if not has_module("cyipopt"):
            return f"solver {self.name!r} needs cyipopt, which is not installed: {_INSTALL}"
        return super().check(problem) or hessian_reason(self, problem)

    def _options(self, exact: bool) -> dict[str, Any]:
        options: dict[str, Any] = {
            "print_level": 0,
            "sb": "yes",
            "tol": float(self.tol),
            "dual_inf_tol": float(self.tol),
            "constr_viol_tol": float(self.tol),
            "max_iter": int(self.max_iter),
        }
        if not exact:
            options.update(hessian_approximation="limited-memory", limited_memory_max_history=int(self.memory))
        return options

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        _cyipopt()  # without cyipopt: the ImportError with install hints, before the compatibility check
        return super().solve(problem, x0=x0, callback=callback)

    def run_library(self, problem: EqualityConstrainedProblem, run: ConstrainedRun) -> Result:
        cyipopt = _cyipopt()
        jac = _Pattern(run.jac0, lower=False, what="jac")
        exact = use_exact_hessian(self, problem)
        if exact:
            # the pattern of f's Hessian and of every constraint's (structural zeros kept)
            with problem.uncounted():
                hess = _Pattern(problem.lag_hess(run.start, np.ones(problem.m), 1.0), lower=True, what="lag_hess")
            callbacks: _Callbacks = _ExactHessianCallbacks(problem, run, jac, hess)
        else:
            callbacks = _Callbacks(problem, run, jac)
        zeros = np.zeros(problem.m)
        nlp = cyipopt.Problem(n=int(problem.n), m=int(problem.m), problem_obj=callbacks, cl=zeros, cu=zeros)
        for key, value in self._options(exact).items():
            nlp.add_option(key, value)
        info = None
        with run.library():
            try:
                x, info = nlp.solve(run.start)
            finally:
                nlp.close()
        if run.status is not None:  # IPOPT's multipliers belong to the iterate it was stopped at
            return run.finish(y=None if info is None else info["mult_g"])
        code = int(info["status"])
        outcome = Status.CONVERGED if code in _SUCCESS else Status.MAX_ITER if code == _MAX_ITER else Status.FAILED
        verdict = LibraryVerdict(outcome, code, "IPOPT: " + info["status_msg"].decode(errors="replace"))
        return run.finish(verdict, x=x, y=info["mult_g"])
