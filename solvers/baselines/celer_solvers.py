"""Baselines wrapping celer (working sets with dual extrapolation): ``celer-lasso`` and ``celer-logistic``.

Both call ``celer.celer_path`` at one regularisation value with ``coef_init = x0`` and run on
the target ladder (:mod:`solvers.baselines._target_ladder`): refit at ever tighter library
tolerances from the start point, stop at the first fit whose relative duality gap (or
``f_gap``) meets ``tol``, and report that fit's time alone. celer fits no intercept here.
celer is imported when a solve starts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from optkit.backend import optional_import
from optkit.composite_problem import L1, CompositeProblem, L1NonNegative, LogisticDatafit, QuadraticDatafit
from optkit.registry import register_solver
from optkit.validation import check_int

from ._target_ladder import LadderFit, LadderSolver, library_matrix

__all__ = ["CelerLasso", "CelerLogistic"]


def _celer_inputs(problem: CompositeProblem, target: Any) -> tuple[Any, np.ndarray]:
    """``A`` in the layout celer reads without a copy (CSC, or Fortran-ordered) and the targets."""
    return library_matrix(problem), np.asarray(target, dtype=np.float64)


@dataclass(frozen=True, kw_only=True)
class _CelerSolver(LadderSolver):
    """Options shared by the celer wrappers (see :class:`CelerLasso`)."""

    max_iter: int = 1000
    p0: int = 10

    def validate(self) -> None:
        super().validate()
        check_int("p0", self.p0, 1)

    def check_terms(self, problem: CompositeProblem) -> str | None:
        if problem.penalty.lam <= 0:
            return f"solver {self.name!r} needs lam > 0 (celer divides by alpha); problem {problem.name!r} has lam = 0"
        return None

    def _path(self, data: Any, x0: np.ndarray, library_tol: float, **options: Any) -> LadderFit:
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # the ladder's status reports it
            _, coefs, _, n_iters = data["celer_path"](
                data["A"],
                data["target"],
                data["pb"],
                alphas=np.array([data["alpha"]]),
                coef_init=x0.copy(),
                max_iter=self.max_iter,
                p0=self.p0,
                tol=library_tol,
                return_n_iter=True,
                **options,
            )
        # celer's count includes the first gap check (max_iter + 1 when it ran out of iterations)
        return LadderFit(np.array(coefs[:, 0], dtype=np.float64), min(int(n_iters[0]), self.max_iter))


@register_solver("celer-lasso")
@dataclass(frozen=True, kw_only=True)
class CelerLasso(_CelerSolver):
    """celer on the Lasso and the non-negative Lasso (``celer_path(pb="lasso")``).

    celer minimises ``||b - A x||^2 / (2 m) + alpha ||x||_1``: ``alpha = lam`` exactly, and
    :class:`~optkit.composite_problem.L1NonNegative` is ``positive=True``. ``lam > 0`` is required
    (celer scales its dual point by ``1 / alpha``).

    Options
    -------
    tol, time_limit, target, library_tols
        The target ladder's (:class:`~solvers.baselines._target_ladder.LadderSolver`); the library
        tolerance is celer's ``tol`` (its duality gap).
    max_iter : int
        celer's outer iterations (working-set updates) per fit, default 1000.
    max_epochs : int
        Coordinate descent epochs on each working-set subproblem (celer's default 50,000).
    p0 : int
        First working-set size (celer's default 10).
    prune : bool
        celer's pruning of the working set (default True, as ``celer.Lasso``).

    ``nit`` is the reported fit's outer iterations.
    """

    datafits = (QuadraticDatafit,)
    penalties = (L1, L1NonNegative)

    max_epochs: int = 50_000
    prune: bool = True

    def validate(self) -> None:
        super().validate()
        check_int("max_epochs", self.max_epochs, 1)
        if not isinstance(self.prune, bool):
            raise TypeError(f"prune must be True or False, got {self.prune!r}")

    def prepare(self, problem: CompositeProblem, x0: np.ndarray) -> Any:
        celer = optional_import("celer", f"solver {self.name!r}")
        A, b = _celer_inputs(problem, problem.datafit.b)
        return {
            "celer_path": celer.celer_path,
            "A": A,
            "target": b,
            "pb": "lasso",
            "alpha": float(problem.penalty.lam),
            "positive": isinstance(problem.penalty, L1NonNegative),
        }

    def fit(self, data: Any, x0: np.ndarray, library_tol: float) -> LadderFit:
        return self._path(
            data, x0, library_tol, max_epochs=self.max_epochs, prune=int(self.prune), positive=data["positive"]
        )


@register_solver("celer-logistic")
@dataclass(frozen=True, kw_only=True)
class CelerLogistic(_CelerSolver):
    """celer's prox-Newton working-set solver on L1-logistic regression (``celer_path(pb="logreg", use_PN=True)``).

    celer minimises ``sum_i log(1 + exp(-y_i a_i^T x)) + alpha ||x||_1`` (no intercept): divided
    by ``m`` this is the problem's ``F`` at ``alpha = m lam``, so ``lam > 0`` is required.

    Options
    -------
    tol, time_limit, target, library_tols
        The target ladder's; the library tolerance is celer's ``tol``.
    max_iter : int
        celer's outer iterations per fit, default 1000.
    p0 : int
        As in :class:`CelerLasso`.

    ``nit`` is the reported fit's outer iterations.
    """

    datafits = (LogisticDatafit,)
    penalties = (L1,)

    def prepare(self, problem: CompositeProblem, x0: np.ndarray) -> Any:
        celer = optional_import("celer", f"solver {self.name!r}")
        A, y = _celer_inputs(problem, problem.datafit.y)
        return {
            "celer_path": celer.celer_path,
            "A": A,
            "target": y,
            "pb": "logreg",
            "alpha": float(problem.m * problem.penalty.lam),
        }

    def fit(self, data: Any, x0: np.ndarray, library_tol: float) -> LadderFit:
        return self._path(data, x0, library_tol, use_PN=True)
