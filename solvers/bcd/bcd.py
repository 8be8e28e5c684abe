"""Solver ``bcd``: block coordinate descent with swappable partition, selection and update rules.

After Nutini, Laradji and Schmidt, "Let's make block coordinate descent converge faster:
faster greedy rules, message-passing, active-set complexity, and superlinear convergence",
JMLR 23(131), 2022. The three choices are independent registries (:mod:`.partitions`,
:mod:`.selection`, :mod:`.updates`); the smooth part keeps its predictions and full
gradient up to date after every block update (:mod:`._objectives`), so one iteration costs
the block's share of the data, not a pass over it (except softmax, see there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from optkit.backend import convert, to_numpy, torch_or_none
from optkit.composite_problem import L1, CompositeProblem, L1NonNegative, LogisticDatafit, QuadraticDatafit
from optkit.finite_sum import FiniteSumProblem
from optkit.problem import LinearSystemProblem, Problem
from optkit.registry import register_solver
from optkit.result import Status
from optkit.solver import IterativeSolver
from optkit.validation import check_choice, check_int

from ._objectives import (
    LinearModelObjective,
    Objective,
    QuadraticObjective,
    SeparablePenalty,
)
from ._softmax_objective import SoftmaxObjective
from .partitions import PARTITIONS, PartitionData, PartitionRule
from .selection import SELECTIONS
from .updates import UPDATES, BlockStep

__all__ = ["BCD", "STOP_MEASURES", "RunState"]

#: what ``stop_on`` may name (besides ``"auto"``)
STOP_MEASURES = ("f_gap", "duality_gap", "optimality")
_SOFTMAX_ATTRIBUTES = ("A", "y", "n_classes", "lam", "bias")


@dataclass
class RunState:
    """The mutable state of one run (read by the rules; see :mod:`.selection`).

    ``x`` is ``objective.x``, updated in place: a callback that keeps it must copy it.
    """

    objective: Objective
    penalty: SeparablePenalty
    partition_rule: PartitionRule
    partition_data: PartitionData
    lipschitz: np.ndarray
    blocks: list | None
    block_of: np.ndarray | None
    block_lipschitz: np.ndarray | None
    block_size: int
    rng: np.random.Generator
    matrix: Any = None
    iteration: int = 0
    cache: dict = field(default_factory=dict)
    f_opt: float | None = None
    gap_problem: Any = None
    x_star: np.ndarray | None = None

    @property
    def f_gap(self) -> float:
        """``F(x) - F*``; for a quadratic with a known solution ``x*`` as ``(x - x*)^T g / 2``
        (``g = Q (x - x*)``), which has no cancellation against a large ``|F*|``."""
        if self.x_star is not None:
            return 0.5 * float((self.x - self.x_star) @ self.objective.g)
        return self.fun - self.f_opt

    @property
    def x(self) -> np.ndarray:
        return self.objective.x

    @property
    def fun(self) -> float:
        """``F(x)``: ``f`` from the maintained predictions, the penalty in ``O(n)``."""
        return self.objective.value() + self.penalty.value(self.objective.x)


def _penalty_of(problem: Problem) -> SeparablePenalty:
    if isinstance(problem, CompositeProblem):
        if isinstance(problem.penalty, L1NonNegative):
            return SeparablePenalty("l1-nonneg", problem.penalty.lam)
        return SeparablePenalty("l1", problem.penalty.lam)
    return SeparablePenalty("none")


def _is_softmax(problem: Problem) -> bool:
    return isinstance(problem, FiniteSumProblem) and all(hasattr(problem, a) for a in _SOFTMAX_ATTRIBUTES)


@register_solver("bcd")
@dataclass(frozen=True, kw_only=True)
class BCD(IterativeSolver):
    """Block coordinate descent: ``x_b <- x_b + delta_b`` on one block per iteration.

    Problems
    --------
    * :class:`~optkit.composite_problem.CompositeProblem` with a ``QuadraticDatafit`` or
      ``LogisticDatafit`` and an ``L1`` or ``L1NonNegative`` penalty (``A`` numpy or scipy sparse).
    * :class:`~optkit.problem.LinearSystemProblem` with a symmetric matrix with a positive
      diagonal (dense or scipy sparse; positive definiteness is assumed, not checked):
      ``min x^T Q x / 2 - c^T x``.
    * A linear softmax regression, any ``FiniteSumProblem`` with attributes ``A`` (N, n),
      ``y``, ``n_classes``, ``lam``, ``bias`` (``problems.linear_models.SoftmaxRegression``).

    On torch (any device, ``A`` dense): the softmax regression and the dense least-squares and
    logistic composite problems, whose updates are dense GEMVs/GEMMs (:mod:`._torch_objectives`);
    the rules run on the host. Sparse data and ``LinearSystemProblem`` run on numpy only.

    Options
    -------
    partition : str
        ``"order"``, ``"sort"``, ``"avg"`` (fixed blocks of ``block_size``) or ``"variable"``;
        see :mod:`solvers.bcd.partitions` (also lists the dynamic forest rules once wired).
    selection : str or None
        ``"cyclic"``, ``"random"``, ``"lipschitz"``, ``"gs"``, ``"gsl"``, ``"gsl-code"`` (fixed
        blocks only), ``"gsd"``, ``"gsq"`` (variable blocks: iterative hard thresholding);
        see :mod:`solvers.bcd.selection`. ``None`` (default): ``"cyclic"``; must be ``None``
        for a dynamic partition, which chooses its own blocks.
    update : str
        ``"gradient"``, ``"doubling"``, ``"matrix"``, ``"newton"``, ``"exact"``; see
        :mod:`solvers.bcd.updates` for which penalties and problems each handles.
    block_size : int
        ``tau >= 1``, at most ``n``.
    seed : int
        Seed of the numpy ``Generator`` of the random rules.
    tol : float
        Stop when the ``stop_on`` measure is ``<= tol``.
    max_iter : int
        Block updates (the paper's iteration count).
    time_limit : float or None
    stop_on : str
        ``"auto"``: ``"f_gap"`` (``F(x) - F*``) when ``metadata["f_opt"]`` is known (for a
        quadratic that also has ``metadata["x_true"]``, as ``(x - x*)^T g / 2``: ``F(x) - F*``
        formed by subtraction cannot resolve gaps below ``eps |F*|``, 2e-7 on problem D), else
        ``"duality_gap"`` (relative: ``gap / |F(x)|``) on a composite problem, else
        ``"optimality"`` (the largest distance of ``-g`` to the penalty's subdifferential,
        ``||g||_inf`` without a penalty). Or one of these names.

    Metrics per iteration (from the maintained quantities, no pass over ``A``): ``fun``,
    ``f_gap`` (known ``F*``), ``duality_gap`` (composite problems), ``optimality``.
    """

    accepts: ClassVar[tuple] = (CompositeProblem, LinearSystemProblem, FiniteSumProblem)
    backends: ClassVar[frozenset] = frozenset({"numpy", "torch"})

    partition: str = "order"
    selection: str | None = None
    update: str = "gradient"
    block_size: int = 5
    seed: int = 0
    tol: float = 1e-8
    max_iter: int = 500
    stop_on: str = "auto"

    def validate(self) -> None:
        super().validate()
        check_choice("partition", self.partition, sorted(PARTITIONS))
        if self.selection is not None:
            check_choice("selection", self.selection, sorted(SELECTIONS))
        check_choice("update", self.update, sorted(UPDATES))
        check_int("block_size", self.block_size, 1)
        check_int("seed", self.seed, 0)
        check_choice("stop_on", self.stop_on, ("auto", *STOP_MEASURES))
        kind = PARTITIONS[self.partition].kind
        if kind == "dynamic" and self.selection is not None:
            raise ValueError(
                f"selection must be None with partition={self.partition!r}, which grows its own blocks; "
                f"got selection={self.selection!r}"
            )
        if kind != "dynamic":
            rule = SELECTIONS[self._selection]
            if (rule.fixed if kind == "fixed" else rule.variable) is None:
                raise ValueError(
                    f"selection={self._selection!r} has no {kind}-block version; "
                    f"use it with a {'variable' if kind == 'fixed' else 'fixed'} partition"
                )

    @property
    def _selection(self) -> str:
        return "cyclic" if self.selection is None else self.selection

    # ------------------------------------------------------------------ compatibility

    def check(self, problem: Problem) -> str | None:
        reason = super().check(problem)
        if reason is not None:
            return reason
        reason = self._check_kind(problem)
        if reason is not None:
            return reason
        n = problem.n
        if self.block_size > n:
            return f"block_size={self.block_size} exceeds the number of variables n={n}"
        penalty = _penalty_of(problem)
        penalty_kind = "none" if penalty.smooth else penalty.kind
        update = UPDATES[self.update]
        if penalty_kind not in update.penalties:
            return (
                f"update={self.update!r} handles penalties {sorted(update.penalties)}, not {penalty_kind!r} "
                f"(lam={penalty.lam}) of problem {problem.name!r}; use update='gradient' or 'doubling'"
            )
        quadratic = isinstance(problem, LinearSystemProblem) or (
            isinstance(problem, CompositeProblem) and isinstance(problem.datafit, QuadraticDatafit)
        )
        selection = SELECTIONS[self._selection]
        if PARTITIONS[self.partition].kind != "dynamic" and penalty_kind not in selection.penalties:
            return (
                f"selection={self._selection!r} handles penalties {sorted(selection.penalties)}, not "
                f"{penalty_kind!r} of problem {problem.name!r}"
            )
        if update.quadratic_only and not quadratic:
            return f"update={self.update!r} needs a quadratic objective; use 'newton' or 'matrix' on {problem.name!r}"
        if PARTITIONS[self.partition].needs_quadratic and not (
            isinstance(problem, LinearSystemProblem) and sp.issparse(problem.matrix)
        ):
            return f"partition={self.partition!r} needs a LinearSystemProblem with a sparse matrix"
        if self.stop_on == "f_gap" and problem.metadata.get("f_opt") is None:
            return f"stop_on='f_gap' needs metadata['f_opt'], which problem {problem.name!r} lacks"
        if self.stop_on == "duality_gap" and not (isinstance(problem, CompositeProblem) and problem.has_duality_gap):
            return "stop_on='duality_gap' needs a CompositeProblem with a duality gap"
        return None

    def _check_kind(self, problem: Problem) -> str | None:
        if problem.backend == "torch":
            reason = self._check_torch(problem)
            if reason is not None:
                return reason
        if isinstance(problem, CompositeProblem):
            if not isinstance(problem.datafit, (QuadraticDatafit, LogisticDatafit)):
                return f"bcd handles QuadraticDatafit and LogisticDatafit, not {problem.datafit!r}"
            if not isinstance(problem.penalty, (L1, L1NonNegative)):
                return f"bcd handles the L1 and L1NonNegative penalties, not {problem.penalty!r}"
            return None
        if isinstance(problem, LinearSystemProblem):
            Q = problem.matrix
            if Q is None or not (sp.issparse(Q) or isinstance(Q, np.ndarray)):
                return "bcd needs the entries of A (a numpy array or scipy sparse matrix) of a LinearSystemProblem"
            values = Q.data if sp.issparse(Q) else Q
            if not np.all(np.isfinite(values)):
                return "A of the LinearSystemProblem contains NaN or inf; expected finite values"
            asymmetry = abs(Q - Q.T).max()
            if asymmetry > 1e-12 * abs(Q).max():
                return f"A of the LinearSystemProblem must be symmetric (max |A - A^T| = {asymmetry:.3g})"
            if not np.all(np.asarray(Q.diagonal()) > 0):
                return "A of the LinearSystemProblem must have a positive diagonal (symmetric positive definite)"
            return None
        if not _is_softmax(problem):
            return (
                f"bcd accepts a FiniteSumProblem only as linear softmax regression (attributes "
                f"{', '.join(_SOFTMAX_ATTRIBUTES)}); {type(problem).__name__} lacks some"
            )
        if not (isinstance(problem.A, np.ndarray) or problem.backend == "torch"):
            return "bcd needs the softmax rows A as a numpy array or a dense torch tensor"
        return None

    @staticmethod
    def _check_torch(problem: Problem) -> str | None:
        """Why a torch problem cannot run on torch (``None`` when it can)."""
        on_torch = (
            "on torch bcd runs the dense softmax regression and the dense least-squares/logistic "
            "CompositeProblem (the work there is dense GEMVs); "
        )
        if isinstance(problem, LinearSystemProblem):
            return on_torch + "a LinearSystemProblem (a sparse quadratic) runs on numpy: use problem.to('numpy')"
        data = problem.matrix if isinstance(problem, CompositeProblem) else getattr(problem, "A", None)
        if data is None or getattr(data, "layout", None) != torch_or_none().strided:
            return on_torch + f"problem {problem.name!r} has no dense torch data matrix; use problem.to('numpy')"
        return None

    # ------------------------------------------------------------------ the iteration

    def _objective(self, problem: Problem, x0: np.ndarray) -> Objective:
        if problem.backend == "torch":
            from ._torch_objectives import TorchLinearModelObjective, TorchSoftmaxObjective

            if isinstance(problem, CompositeProblem):
                kind = "quadratic" if isinstance(problem.datafit, QuadraticDatafit) else "logistic"
                return TorchLinearModelObjective(problem.matrix, problem.datafit.target, kind, x0)
            return TorchSoftmaxObjective(problem.A, problem.y, problem.n_classes, problem.lam, problem.bias, x0)
        if isinstance(problem, CompositeProblem):
            kind = "quadratic" if isinstance(problem.datafit, QuadraticDatafit) else "logistic"
            return LinearModelObjective(problem.matrix, np.asarray(problem.datafit.target), kind, x0)
        if isinstance(problem, LinearSystemProblem):
            return QuadraticObjective(problem.matrix, np.asarray(problem.b), x0)
        return SoftmaxObjective(problem.A, np.asarray(problem.y), problem.n_classes, problem.lam, problem.bias, x0)

    def init(self, problem: Problem, x0: Any) -> RunState:
        x0 = np.array(to_numpy(x0), dtype=np.float64)
        if x0.shape != (problem.n,) or not np.all(np.isfinite(x0)):
            raise ValueError(f"x0 must be a finite array of shape ({problem.n},), got shape {x0.shape}")
        penalty = _penalty_of(problem)
        if not np.isfinite(penalty.value(x0)):
            raise ValueError("x0 must be >= 0 for the L1NonNegative penalty (outside its domain)")
        objective = self._objective(problem, x0)
        lipschitz = objective.coordinate_lipschitz()
        # a zero column has L_i = 0 and a gradient entry that stays 0: any positive constant is valid
        lipschitz = np.maximum(lipschitz, np.finfo(float).eps * max(float(lipschitz.max()), 1.0))
        rule = PARTITIONS[self.partition]
        matrix = problem.matrix if isinstance(problem, LinearSystemProblem) else None
        graph = None
        if rule.needs_quadratic:
            from ._forest import graph_of

            # canonical CSR: belief propagation reads a block's rows in time linear in the block
            matrix = sp.csr_array(matrix)
            matrix.sum_duplicates()
            graph = graph_of(matrix)
        rng = np.random.default_rng(self.seed)
        data = PartitionData(lipschitz, self.block_size, matrix, rng, graph)
        blocks = block_of = block_lipschitz = None
        if rule.kind == "fixed":
            blocks = [np.asarray(b, dtype=np.int64) for b in rule.build(data)]
            block_of = np.full(objective.n, -1, dtype=np.int64)
            for index, block in enumerate(blocks):
                block_of[block] = index
            if sum(b.shape[0] for b in blocks) != objective.n or np.any(block_of < 0):
                raise ValueError(
                    f"partition={self.partition!r} must split the {objective.n} coordinates into disjoint blocks"
                )
            block_lipschitz = np.array([objective.block_lipschitz(b) for b in blocks])
        f_opt = problem.metadata.get("f_opt")
        x_star = problem.metadata.get("x_true") if isinstance(problem, LinearSystemProblem) else None
        return RunState(
            objective=objective,
            penalty=penalty,
            partition_rule=rule,
            partition_data=data,
            lipschitz=lipschitz,
            blocks=blocks,
            block_of=block_of,
            block_lipschitz=block_lipschitz,
            block_size=self.block_size,
            rng=rng,
            matrix=matrix,
            f_opt=None if f_opt is None else float(f_opt),
            gap_problem=problem if isinstance(problem, CompositeProblem) and problem.has_duality_gap else None,
            x_star=None if x_star is None or f_opt is None else np.asarray(x_star, dtype=np.float64),
        )

    def _choose(self, run: RunState) -> tuple[np.ndarray, int | None]:
        rule = run.partition_rule
        if rule.kind == "dynamic":
            return np.asarray(rule.choose(run.partition_data, run), dtype=np.int64), None
        selection = SELECTIONS[self._selection]
        if rule.kind == "fixed":
            index = selection.fixed(run)
            return run.blocks[index], index
        return np.asarray(selection.variable(run), dtype=np.int64), None

    def step(self, problem: Problem, state: RunState) -> RunState:
        block, index = self._choose(state)
        step = BlockStep(state, block, index)
        delta = UPDATES[self.update].apply(step)
        state.objective.update(block, delta)
        state.iteration += 1
        return state

    # ------------------------------------------------------------------ measures

    def _stop_measure(self, state: RunState) -> str:
        if self.stop_on != "auto":
            return self.stop_on
        if state.f_opt is not None:
            return "f_gap"
        return "duality_gap" if state.gap_problem is not None else "optimality"

    @staticmethod
    def _duality_gap(state: RunState) -> float:
        """The problem's duality gap from the maintained ``u = L'(z)`` and ``g = A^T u`` (no pass over ``A``)."""
        return state.gap_problem.duality_gap_from(state.fun, state.objective.dual_point(), state.objective.g)

    def _measure(self, state: RunState, name: str) -> float:
        if name == "f_gap":
            return state.f_gap
        if name == "duality_gap":
            return self._duality_gap(state) / max(abs(state.fun), np.finfo(float).tiny)
        return float(state.penalty.subdiff_distance(state.x, state.objective.g).max())

    def terminate(self, problem: Problem, state: RunState) -> Status | None:
        if not np.isfinite(state.fun):
            return Status.NONFINITE
        return Status.CONVERGED if self._measure(state, self._stop_measure(state)) <= self.tol else None

    def metrics(self, problem: Problem, state: RunState) -> dict[str, float]:
        out = {"fun": state.fun, "optimality": self._measure(state, "optimality")}
        if state.f_opt is not None:
            out["f_gap"] = state.f_gap
        if state.gap_problem is not None:
            out["duality_gap"] = self._duality_gap(state)
        return out

    def postprocess(self, problem: Problem, state: RunState, status: Status) -> dict[str, Any]:
        x = state.x.copy()
        if problem.backend == "torch":
            # the rules work on a float64 host copy; the solution goes back where the problem lives
            x = convert(x, "torch", problem.device, problem.dtype)
        return {
            "x": x,
            "extras": {
                "n_blocks": None if state.blocks is None else len(state.blocks),
                "stop_on": self._stop_measure(state),
            },
        }
