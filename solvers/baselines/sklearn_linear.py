"""Baselines wrapping scikit-learn's sparse linear models: ``sklearn-lasso`` and ``sklearn-l1-logistic``.

Both run on the target ladder (:mod:`solvers.baselines._target_ladder`): refit at ever tighter
library tolerances from the start point, stop at the first fit whose relative duality gap
(or ``f_gap``) meets ``tol``, and report that fit's time alone. No intercept is fitted: the
problems have none. scikit-learn is imported when a solve starts.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from optkit.backend import optional_import
from optkit.composite_problem import L1, CompositeProblem, L1NonNegative, LogisticDatafit, QuadraticDatafit
from optkit.registry import register_solver
from optkit.validation import check_choice

from ._target_ladder import LadderFit, LadderSolver, library_matrix

__all__ = ["SklearnL1Logistic", "SklearnLasso"]

_SELECTIONS = ("cyclic", "random")
_LOGISTIC_SOLVERS = ("liblinear", "saga")


def _check_seed(seed: Any) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")


def _quiet(call):
    """``call()`` without scikit-learn's non-convergence warnings (the ladder's status reports
    them) and its advice to use LinearRegression at ``alpha = 0`` (problem A has ``lam = 0``)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="With alpha=0, this algorithm does not converge well")
        return call()


@register_solver("sklearn-lasso")
@dataclass(frozen=True, kw_only=True)
class SklearnLasso(LadderSolver):
    """``sklearn.linear_model.Lasso`` (coordinate descent) on the Lasso and the non-negative Lasso.

    Fits ``||A x - b||^2 / (2 m) + alpha ||x||_1`` with ``alpha = lam``: scikit-learn's objective
    is the problem's :class:`~optkit.composite_problem.QuadraticDatafit` plus its
    :class:`~optkit.composite_problem.L1` penalty exactly; :class:`L1NonNegative` is
    ``positive=True``. ``fit_intercept=False``. A start ``x0 != 0`` is scikit-learn's warm start
    (``coef_ = x0``); every fit starts there.

    Options
    -------
    tol, time_limit, target, library_tols
        The target ladder's (:class:`~solvers.baselines._target_ladder.LadderSolver`); the library
        tolerance is scikit-learn's ``tol`` (its duality gap, scaled by ``||b||^2 / m``).
    max_iter : int
        Coordinate descent epochs per fit (scikit-learn's ``max_iter``), default 10,000.
    selection : {"cyclic", "random"}
        scikit-learn's coordinate order.
    seed : int or None
        ``random_state`` of ``selection="random"``, default 0.

    ``nit`` is scikit-learn's ``n_iter_`` (epochs) of the reported fit.
    """

    datafits = (QuadraticDatafit,)
    penalties = (L1, L1NonNegative)

    max_iter: int = 10_000
    selection: str = "cyclic"
    seed: int | None = 0

    def validate(self) -> None:
        super().validate()
        check_choice("selection", self.selection, _SELECTIONS)
        _check_seed(self.seed)

    def prepare(self, problem: CompositeProblem, x0: np.ndarray) -> Any:
        linear_model = optional_import("sklearn.linear_model", f"solver {self.name!r}")
        return {
            "estimator": linear_model.Lasso,
            "A": library_matrix(problem),
            "b": np.asarray(problem.datafit.b, dtype=np.float64),
            "alpha": float(problem.penalty.lam),
            "positive": isinstance(problem.penalty, L1NonNegative),
        }

    def fit(self, data: Any, x0: np.ndarray, library_tol: float) -> LadderFit:
        warm = bool(np.any(x0))
        estimator = data["estimator"](
            alpha=data["alpha"],
            fit_intercept=False,
            tol=library_tol,
            max_iter=self.max_iter,
            positive=data["positive"],
            selection=self.selection,
            random_state=self.seed,
            warm_start=warm,
        )
        if warm:
            estimator.coef_ = x0.copy()
        _quiet(lambda: estimator.fit(data["A"], data["b"]))
        return LadderFit(np.array(estimator.coef_, dtype=np.float64), int(estimator.n_iter_))


def _l1_option() -> dict[str, Any]:
    """The L1 penalty in this scikit-learn's terms: ``l1_ratio=1`` from 1.8 (``penalty`` is
    deprecated there), ``penalty="l1"`` before."""
    from sklearn.linear_model import LogisticRegression

    if inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated":
        return {"l1_ratio": 1.0}
    return {"penalty": "l1"}


@register_solver("sklearn-l1-logistic")
@dataclass(frozen=True, kw_only=True)
class SklearnL1Logistic(LadderSolver):
    """``sklearn.linear_model.LogisticRegression`` with the L1 penalty (liblinear or SAGA).

    scikit-learn minimises ``C sum_i log(1 + exp(-y_i a_i^T x)) + ||x||_1``; divided by ``C m``
    this is the problem's ``F`` at ``C = 1 / (m lam)``, so ``lam > 0`` is required.
    ``fit_intercept=False``: liblinear then appends no synthetic bias feature
    (``intercept_scaling`` is unused), so it fits exactly ``F``.

    Options
    -------
    tol, time_limit, target, library_tols
        The target ladder's; the library tolerance is scikit-learn's ``tol``.
    max_iter : int
        Per fit: liblinear's outer (newGLMNET) iterations or SAGA's epochs, default 10,000.
    solver : {"liblinear", "saga"}
    seed : int or None
        ``random_state`` (liblinear's and SAGA's sample order), default 0.

    liblinear cannot start anywhere but 0: a start ``x0 != 0`` is refused with ``solver="liblinear"``;
    SAGA warm-starts there. ``nit`` is scikit-learn's ``n_iter_`` of the reported fit.
    """

    datafits = (LogisticDatafit,)
    penalties = (L1,)

    max_iter: int = 10_000
    solver: str = "liblinear"
    seed: int | None = 0

    def validate(self) -> None:
        super().validate()
        check_choice("solver", self.solver, _LOGISTIC_SOLVERS)
        _check_seed(self.seed)

    def check_terms(self, problem: CompositeProblem) -> str | None:
        if problem.penalty.lam <= 0:
            return f"solver {self.name!r} needs lam > 0 (C = 1 / (m lam)); problem {problem.name!r} has lam = 0"
        return None

    def prepare(self, problem: CompositeProblem, x0: np.ndarray) -> Any:
        linear_model = optional_import("sklearn.linear_model", f"solver {self.name!r}")
        if self.solver == "liblinear" and np.any(x0):
            raise ValueError("x0 must be 0 with solver='liblinear' (liblinear has no warm start)")
        return {
            "estimator": linear_model.LogisticRegression,
            "A": library_matrix(problem, "csr"),  # liblinear and SAGA read rows
            "y": np.asarray(problem.datafit.y, dtype=np.float64),
            "C": 1.0 / (problem.m * problem.penalty.lam),
            "l1": _l1_option(),
        }

    def fit(self, data: Any, x0: np.ndarray, library_tol: float) -> LadderFit:
        warm = bool(np.any(x0))
        estimator = data["estimator"](
            C=data["C"],
            solver=self.solver,
            fit_intercept=False,
            tol=library_tol,
            max_iter=self.max_iter,
            random_state=self.seed,
            warm_start=warm,
            **data["l1"],
        )
        if warm:
            estimator.coef_ = x0[None, :].copy()
        _quiet(lambda: estimator.fit(data["A"], data["y"]))
        return LadderFit(np.array(estimator.coef_[0], dtype=np.float64), int(np.max(estimator.n_iter_)))
