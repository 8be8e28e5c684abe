"""Baselines wrapping skglm's solvers: ``skglm-gramcd``, ``skglm-anderson`` and ``skglm-prox-newton``.

Each calls the skglm solver object's ``solve(X, y, datafit, penalty, w_init, Xw_init)`` with
``fit_intercept=False`` and runs on the target ladder (:mod:`solvers.baselines._target_ladder`):
refit at ever tighter library tolerances from the start point, stop at the first fit whose
relative duality gap (or ``f_gap``) meets ``tol``, and report that fit's time alone.

skglm's datafits are the problem's exactly: ``Quadratic`` is ``||y - X w||^2 / (2 m)`` and
``Logistic`` is ``(1/m) sum_i log(1 + exp(-y_i x_i^T w))``, with ``L1(alpha=lam)``
(``positive=True`` for :class:`~optkit.composite_problem.L1NonNegative`). skglm's solvers are
numba code compiled on first use: :meth:`prepare` runs one untimed iteration on the problem
so that compilation is not counted in the first fit's time. skglm is imported when a solve
starts.
"""

from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from optkit.backend import optional_import
from optkit.composite_problem import L1, CompositeProblem, L1NonNegative, LogisticDatafit, QuadraticDatafit
from optkit.registry import register_solver
from optkit.validation import check_choice, check_int

from ._target_ladder import LadderFit, LadderSolver, library_matrix

__all__ = ["SkglmAnderson", "SkglmGramCD", "SkglmProxNewton"]

_WS_STRATEGIES = ("subdiff", "fixpoint")


@dataclass(frozen=True, kw_only=True)
class _SkglmSolver(LadderSolver):
    """The shared sequence: skglm's inputs, the warm-up, one ``solve`` per fit."""

    @abc.abstractmethod
    def library_solver(self, skglm_solvers: Any, library_tol: float, max_iter: int) -> Any:
        """The skglm solver object for one fit."""

    def library_datafit(self, skglm_datafits: Any, problem: CompositeProblem) -> Any:
        """The skglm datafit, or ``None`` where the solver fits its own (GramCD)."""
        return skglm_datafits.Logistic() if isinstance(problem.datafit, LogisticDatafit) else skglm_datafits.Quadratic()

    def prepare(self, problem: CompositeProblem, x0: np.ndarray) -> Any:
        optional_import("skglm", f"solver {self.name!r}")
        from skglm import datafits, penalties, solvers

        A = library_matrix(problem)
        data = {
            "solvers": solvers,
            "A": A,
            "target": np.asarray(problem.datafit.target, dtype=np.float64),
            "datafit": self.library_datafit(datafits, problem),
            "penalty": penalties.L1(
                alpha=float(problem.penalty.lam), positive=isinstance(problem.penalty, L1NonNegative)
            ),
            "Ax0": np.asarray(A @ x0, dtype=np.float64),
        }
        self._solve(data, x0, self.library_tols[0], max_iter=1)  # compiles skglm's numba code, untimed
        return data

    def _solve(self, data: Any, x0: np.ndarray, library_tol: float, max_iter: int) -> LadderFit:
        from sklearn.exceptions import ConvergenceWarning

        solver = self.library_solver(data["solvers"], library_tol, max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # the ladder's status reports it
            w, objectives, _ = solver.solve(
                data["A"], data["target"], data["datafit"], data["penalty"], x0.copy(), data["Ax0"].copy()
            )
        return LadderFit(np.array(w, dtype=np.float64), len(objectives))

    def fit(self, data: Any, x0: np.ndarray, library_tol: float) -> LadderFit:
        return self._solve(data, x0, library_tol, self.max_iter)


@register_solver("skglm-gramcd")
@dataclass(frozen=True, kw_only=True)
class SkglmGramCD(_SkglmSolver):
    """skglm's ``GramCD``: coordinate descent on the Gram matrix, greedy (Gauss-Southwell) by default.

    The Lasso and the non-negative Lasso only (``QuadraticDatafit``). Each fit forms the Gram
    matrix ``A^T A / m`` (n x n, dense) and runs epochs of ``n`` coordinate updates with step
    ``1 / Q_jj``; ``greedy=True`` picks each coordinate as the argmax of the subdifferential
    distance (a GS-s rule), ``greedy=False`` cycles. The library stops when the largest
    subdifferential distance is ``<= library_tol``. Refuses a zero column of ``A`` (``1 / Q_jj``)
    with ``greedy=False``, and with ``greedy=True`` where it is column 0 (the greedy rule scores a
    zero column 0, and ``argmax`` of all-zero scores is column 0).

    Options
    -------
    tol, time_limit, target, library_tols
        The target ladder's (:class:`~solvers.baselines._target_ladder.LadderSolver`).
    max_iter : int
        Epochs per fit (skglm's ``max_iter``), default 10,000.
    greedy : bool
        skglm's ``greedy_cd`` (default True).

    ``nit`` is the reported fit's epochs.
    """

    datafits = (QuadraticDatafit,)
    penalties = (L1, L1NonNegative)

    max_iter: int = 10_000
    greedy: bool = True

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.greedy, bool):
            raise TypeError(f"greedy must be True or False, got {self.greedy!r}")

    def check_terms(self, problem: CompositeProblem) -> str | None:
        # GramCD steps by 1 / ||a_j||^2: cycling reaches every column, the greedy rule only scores a
        # zero column 0, so it picks one only as argmax of all-zero scores (column 0)
        empty = np.flatnonzero(problem.column_norms_sq() == 0)
        if empty.size and (not self.greedy or empty[0] == 0):
            return (
                f"solver {self.name!r} (greedy={self.greedy}) divides by ||a_j||^2; "
                f"column {int(empty[0])} of {problem.name!r} is zero"
            )
        return None

    def library_datafit(self, skglm_datafits: Any, problem: CompositeProblem) -> Any:
        return None  # GramCD fits the quadratic itself

    def library_solver(self, skglm_solvers: Any, library_tol: float, max_iter: int) -> Any:
        return skglm_solvers.GramCD(max_iter=max_iter, greedy_cd=self.greedy, tol=library_tol, fit_intercept=False)


@dataclass(frozen=True, kw_only=True)
class _SkglmWorkingSetSolver(_SkglmSolver):
    """The options skglm's working-set solvers share: ``p0`` and ``ws_strategy``."""

    max_iter: int = 1000
    p0: int = 10
    ws_strategy: str = "subdiff"

    def validate(self) -> None:
        super().validate()
        check_int("p0", self.p0, 1)
        check_choice("ws_strategy", self.ws_strategy, _WS_STRATEGIES)


@register_solver("skglm-anderson")
@dataclass(frozen=True, kw_only=True)
class SkglmAnderson(_SkglmWorkingSetSolver):
    """skglm's ``AndersonCD``: working sets, coordinate descent with Anderson acceleration.

    The Lasso and L1-logistic regression, with ``L1`` or ``L1NonNegative``. The library stops
    when the largest subdifferential distance (``ws_strategy="subdiff"``) is ``<= library_tol``.

    Options
    -------
    tol, time_limit, target, library_tols
        The target ladder's.
    max_iter : int
        Outer iterations (working-set updates) per fit, default 1000.
    max_epochs : int
        Coordinate descent epochs on each working-set subproblem (skglm's default 50,000).
    p0 : int
        First working-set size (skglm's default 10).
    ws_strategy : {"subdiff", "fixpoint"}
        The score that builds the working set.

    ``nit`` is the reported fit's outer iterations.
    """

    datafits = (QuadraticDatafit, LogisticDatafit)
    penalties = (L1, L1NonNegative)

    max_epochs: int = 50_000

    def validate(self) -> None:
        super().validate()
        check_int("max_epochs", self.max_epochs, 1)

    def library_solver(self, skglm_solvers: Any, library_tol: float, max_iter: int) -> Any:
        return skglm_solvers.AndersonCD(
            max_iter=max_iter,
            max_epochs=self.max_epochs,
            p0=self.p0,
            tol=library_tol,
            ws_strategy=self.ws_strategy,
            fit_intercept=False,
        )


@register_solver("skglm-prox-newton")
@dataclass(frozen=True, kw_only=True)
class SkglmProxNewton(_SkglmWorkingSetSolver):
    """skglm's ``ProxNewton``: working-set proximal Newton for L1-logistic regression.

    ``LogisticDatafit`` with ``L1`` or ``L1NonNegative``. The library stops when the largest
    subdifferential distance is ``<= library_tol``.

    Options
    -------
    tol, time_limit, target, library_tols
        The target ladder's.
    max_iter : int
        Outer iterations (working-set updates) per fit, default 1000.
    max_pn_iter : int
        Prox-Newton iterations on each working-set subproblem (skglm's default 1000).
    p0 : int
        First working-set size (skglm's default 10).
    ws_strategy : {"subdiff", "fixpoint"}

    ``nit`` is the reported fit's outer iterations.
    """

    datafits = (LogisticDatafit,)
    penalties = (L1, L1NonNegative)

    max_pn_iter: int = 1000

    def validate(self) -> None:
        super().validate()
        check_int("max_pn_iter", self.max_pn_iter, 1)

    def library_solver(self, skglm_solvers: Any, library_tol: float, max_iter: int) -> Any:
        return skglm_solvers.ProxNewton(
            p0=self.p0,
            max_iter=max_iter,
            max_pn_iter=self.max_pn_iter,
            tol=library_tol,
            ws_strategy=self.ws_strategy,
            fit_intercept=False,
        )
