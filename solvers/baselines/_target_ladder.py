"""The target ladder: a library's sparse-linear-model solver stopped on optkit's measure, not its own.

scikit-learn, skglm and celer each stop on a test of their own (scaled duality gaps, the largest
subdifferential distance, ...) at their own ``tol``. To compare them with every other solver
at one stopping measure, a wrapper refits the library at a decreasing sequence of its own
tolerances, ``library_tols`` (default ``1e-2, 1e-3, ..., 1e-14``), each fit **from the start
point** (no warm start between rungs, so that each fit's time is what reaching its point costs),
measures optkit's criterion after each fit with the clock paused, and stops at the first fit
that meets ``tol``:

- ``target="gap"``: the relative duality gap ``duality_gap(x) / |F(x)|`` (``duality_gap(x)``
  where ``F(x) = 0``), :meth:`~optkit.composite_problem.CompositeProblem.duality_gap`;
- ``target="f_gap"``: ``F(x) - metadata["f_opt"]``, for problems whose optimum is known.

**The reported time is that fit's time alone**: ``Result.time_s`` and the trace (row 0 at the
start, then the row of the fit's point, ``iter`` its library iteration count) are those of the
fit that met ``tol`` (each fit is one :meth:`optkit.blackbox.BlackBoxRun.attempt`).
``Result.extras`` holds ``ladder_time_s`` (every fit's seconds: the cost of not knowing which
library tolerance suffices), ``library_tol`` (the tolerance of the reported fit) and ``ladder``
(one dict per fit: ``library_tol``, ``time_s``, ``nit`` and the criterion's value).

Status (the rule of :mod:`optkit.blackbox`): ``CONVERGED`` at the first fit meeting ``tol``;
``MAX_ITER`` when a fit used ``max_iter`` library iterations without meeting it (a tighter rung
would run the same iterations); ``STALLED`` when every rung returned without meeting it (the
library met its own test every time), reporting the fit with the best criterion; the time limit
counts every fit and is checked after each; the callback sees each fit's row; Ctrl-C during a
fit returns the previous fit. Reading the matrix into the library's layout and compiling its
numba code (one untimed warm-up iteration, where it has such code) happen before the clock
starts.
"""

from __future__ import annotations

import abc
import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from optkit.blackbox import BlackBoxRun, LibraryVerdict
from optkit.composite_problem import L1, CompositeProblem, L1NonNegative
from optkit.problem import Problem
from optkit.result import Result, Status
from optkit.solver import Callback, Solver
from optkit.validation import check_choice

__all__ = ["DEFAULT_LIBRARY_TOLS", "LadderFit", "LadderSolver", "library_matrix", "relative_gap_measure", "run_ladder"]

#: The library tolerances tried in turn, loosest first.
DEFAULT_LIBRARY_TOLS = tuple(10.0**-k for k in range(2, 15))

#: The trace measure each ``target`` stops on.
CRITERIA = {"gap": "rel_duality_gap", "f_gap": "f_gap"}


@dataclass(frozen=True)
class LadderFit:
    """What one library fit returned.

    Attributes
    ----------
    x : ndarray of shape (n,)
        The library's solution (float64).
    n_iter : int
        Its iteration count, in the unit of the wrapper's ``max_iter``.
    """

    x: np.ndarray
    n_iter: int


def library_matrix(problem: CompositeProblem, sparse_format: str = "csc") -> Any:
    """The problem's ``A`` as the libraries read it without a copy.

    A sparse ``A`` becomes a ``scipy.sparse`` matrix in ``sparse_format`` (``"csc"`` or ``"csr"``)
    with 32-bit indices (scikit-learn and celer refuse 64-bit ones; the LIBSVM loader makes
    them); a dense one becomes Fortran-ordered float64 (columns contiguous, as coordinate
    descent reads them).
    """
    A = problem.matrix
    if not sp.issparse(A):
        return np.asfortranarray(A, dtype=np.float64)
    A = sp.csc_matrix(A) if sparse_format == "csc" else sp.csr_matrix(A)
    if A.nnz < np.iinfo(np.int32).max:
        A.indices = A.indices.astype(np.int32, copy=False)
        A.indptr = A.indptr.astype(np.int32, copy=False)
    return A


def relative_gap_measure(problem: CompositeProblem) -> Callable[[Any], dict[str, float]]:
    """The trace row of a composite problem's iterate: ``problem.evaluate(x)`` plus ``rel_duality_gap``."""

    def measure(x: Any) -> dict[str, float]:
        row = problem.evaluate(x)
        gap, fun = row["duality_gap"], row["fun"]
        row["rel_duality_gap"] = gap / abs(fun) if fun != 0 else gap
        return row

    return measure


def run_ladder(
    solver: LadderSolver,
    problem: CompositeProblem,
    x0: np.ndarray,
    callback: Callback | None,
    prepare: Callable[[], Callable[[float], LadderFit]],
) -> Result:
    """Run ``fit(library_tol)`` down ``solver.library_tols`` until the criterion meets ``solver.tol``.

    Parameters
    ----------
    solver : LadderSolver
        Its ``tol``, ``max_iter``, ``time_limit``, ``target`` and ``library_tols`` are used.
    problem : CompositeProblem
    x0 : ndarray of shape (n,)
        The start of every fit (``fit`` must start there).
    callback : callable or None
        The user's callback, called with each fit's row.
    prepare : callable ``() -> fit``
        Untimed, called once unless the start ends the run: returns ``fit``, the callable
        ``library_tol -> LadderFit`` of one library fit from ``x0`` (timed).

    Returns
    -------
    Result
        See the module docstring for its time, trace, status and extras.
    """
    criterion = CRITERIA[solver.target]
    run = BlackBoxRun(solver, problem, callback, measure=relative_gap_measure(problem), criterion=criterion)
    verdict = None
    if run.begin(x0) is None:
        fit = prepare()
        for library_tol in solver.library_tols:
            with run.attempt():
                out = fit(library_tol)
                run.iteration(out.x, nit=int(out.n_iter))
                if run.converged(run.metrics):
                    run.stop(Status.CONVERGED)
            if run.status is not None:
                break
        else:
            values = [a.metrics[criterion] for a in run.attempts]
            best = int(np.argmin([v if math.isfinite(v) else math.inf for v in values]))
            run.use_attempt(best)
            verdict = LibraryVerdict(
                Status.CONVERGED,
                solver.library_tols[best],
                f"{solver.name}: the library met its own tolerance at every rung down to {solver.library_tols[-1]:g}",
            )
    ladder = [
        {"library_tol": library_tol, "time_s": a.time_s, "nit": a.nit, criterion: a.metrics[criterion]}
        for library_tol, a in zip(solver.library_tols, run.attempts)
    ]
    reported = next((k for k, a in enumerate(run.attempts) if a.recorder is run.recorder), None)
    extras = {
        "ladder_time_s": run.spent_s,
        "library_tol": None if reported is None else solver.library_tols[reported],
        "ladder": ladder,
    }
    return run.finish(verdict=verdict, extras=extras)


@dataclass(frozen=True, kw_only=True)
class LadderSolver(Solver):
    """Base of the sparse-linear-model baselines run on the target ladder (see the module docstring).

    Options
    -------
    tol : float
        Stop at the first fit whose criterion is ``<= tol`` (default 1e-6).
    max_iter : int
        The library's iteration limit for each fit, in its own unit (see each wrapper).
    time_limit : float or None
        Seconds of every fit together, checked after each fit.
    target : {"gap", "f_gap"}
        The criterion: the relative duality gap, or ``F(x) - metadata["f_opt"]``.
    library_tols : tuple of float
        The library's own tolerances, strictly decreasing and positive.

    Subclasses set ``datafits`` and ``penalties`` (the term types they fit) and ``library``
    (the import name, for :meth:`check`), and implement :meth:`prepare` (untimed: the matrix
    in the library's layout, numba compilation) and :meth:`fit` (one timed fit).
    """

    accepts = (CompositeProblem,)
    requires = frozenset({"matrix", "duality_gap"})
    backends = frozenset({"numpy"})
    datafits: ClassVar[tuple[type, ...]] = ()
    penalties: ClassVar[tuple[type, ...]] = (L1, L1NonNegative)

    target: str = "gap"
    library_tols: tuple[float, ...] = DEFAULT_LIBRARY_TOLS

    def validate(self) -> None:
        super().validate()
        check_choice("target", self.target, tuple(CRITERIA))
        tols = self.library_tols
        if (
            not isinstance(tols, tuple)
            or not tols
            or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < math.inf for t in tols)
            or any(a <= b for a, b in itertools.pairwise(tols))
        ):
            raise ValueError(
                f"library_tols must be a non-empty tuple of positive finite numbers, strictly decreasing, got {tols!r}"
            )

    def check(self, problem: Problem) -> str | None:
        reason = super().check(problem)
        if reason is not None:
            return reason
        assert isinstance(problem, CompositeProblem)
        if not isinstance(problem.datafit, self.datafits):
            kinds = ", ".join(k.__name__ for k in self.datafits)
            return f"solver {self.name!r} fits the datafit {kinds}, not {type(problem.datafit).__name__}"
        if not isinstance(problem.penalty, self.penalties):
            kinds = ", ".join(k.__name__ for k in self.penalties)
            return f"solver {self.name!r} fits the penalty {kinds}, not {type(problem.penalty).__name__}"
        if self.target == "f_gap" and problem.metadata.get("f_opt") is None:
            return f"solver {self.name!r} with target='f_gap' needs metadata['f_opt'], which {problem.name!r} lacks"
        return self.check_terms(problem)

    def check_terms(self, problem: CompositeProblem) -> str | None:
        """Why the library cannot fit this datafit and penalty (e.g. ``lam = 0``), or ``None``."""
        return None

    @abc.abstractmethod
    def prepare(self, problem: CompositeProblem, x0: np.ndarray) -> Any:
        """The library's inputs (untimed): the matrix in its layout, the targets; compiles numba code."""

    @abc.abstractmethod
    def fit(self, data: Any, x0: np.ndarray, library_tol: float) -> LadderFit:
        """One library fit from ``x0`` at the library's tolerance ``library_tol`` (timed)."""

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        self.ensure_compatible(problem)
        assert isinstance(problem, CompositeProblem)
        start = np.array(problem.x0 if x0 is None else x0, dtype=np.float64)
        if start.shape != (problem.n,):
            raise ValueError(f"x0 must have shape ({problem.n},), got {start.shape}")
        return run_ladder(
            self, problem, start, callback, lambda: functools.partial(self.fit, self.prepare(problem, start), start)
        )
