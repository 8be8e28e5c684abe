"""Update rules of ``bcd``: the step ``delta_b`` on the chosen block.

A rule is an :class:`UpdateRule` in :data:`UPDATES`: ``apply(step) -> delta`` for a
:class:`BlockStep`, which exposes the block, ``x_b``, ``g_b``, the penalty and, computed on
demand and cached across iterations for fixed blocks, ``lipschitz`` (``L_b``),
``bound_matrix`` (``H_b``), its solver ``H_b^+`` and the block ``hessian``.

=========== ==========================================================================
rule        step
=========== ==========================================================================
gradient    ``x_b+ = prox(x_b - g_b / L_b, 1 / L_b)`` (``L_b = lambda_max(H_b)``); any penalty
doubling    as ``gradient`` with an estimate ``L`` of ``L_b``: start from half the last
            accepted ``L`` of this block (first: ``max L_i`` on it), double until
            ``f(x+) <= f(x) + g_b^T d + L/2 ||d||^2``; capped at ``sum_b L_i >= L_b``
            (where the test must hold), so it ends; any penalty
matrix      ``d = -H_b^+ g_b`` (Newton-upper-bound step); no penalty (``lam = 0``, no
            constraint): its proximal version is a QP, the ``"pn"`` update
newton      ``hessian_b d = -g_b`` with Armijo backtracking (``c = 1e-4``, halving); no penalty
exact       minimises ``f`` over the block of a quadratic: ``Q_bb d = -g_b`` (dense Cholesky,
            or the partition's ``block_solver``, e.g. belief propagation on forests)
prox-newton proximal Newton: minimises ``g_b^T d + d^T hessian_b d / 2 + g(x_b + d)`` by
            cyclic Gram-form coordinate sweeps (:func:`~._kernels.minimize_gram_l1`, to a
            decrease ``1e-10`` times the first sweep's), then Armijo backtracking on ``F``
            (Tseng and Yun's decrease measure; none for a quadratic, whose model is exact);
            any penalty. With the ``working-set``
            selection this is the fast configuration for the Lasso and L1-logistic
pg          projected gradient ``x_b+ = max(x_b - (g_b + lam) / L_b, 0)``; non-negative L1
tmp         two-metric projection (Bertsekas): Newton on the free coordinates, scaled
            gradient on those near the bound, Armijo along the projection arc on ``H_b``;
            non-negative L1 (:func:`~._nonneg_l1.two_metric_projection`)
pn          proximal Newton on ``H_b``: the exact minimiser of the block model over
            ``x_b + d >= 0`` by an active-set method; non-negative L1
            (:func:`~._nonneg_l1.proximal_newton`; the exact block minimiser for least squares)
=========== ==========================================================================

Extension point: one entry in :data:`UPDATES`. ``UpdateRule.penalties`` lists the penalty
kinds it handles (``"none"``, ``"l1"``, ``"l1-nonneg"``; ``lam = 0`` L1 counts as
``"none"``), ``quadratic_only`` restricts it to quadratic objectives; both are checked by
``BCD.check`` with a message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._nonneg_l1 import projected_gradient, proximal_newton, two_metric_projection
from ._objectives import kernels, psd_solver

__all__ = ["ARMIJO_C", "UPDATES", "BlockStep", "UpdateRule"]

#: sufficient-decrease constant of the Newton line search
ARMIJO_C = 1e-4
#: cap on the halvings of the line search and the doublings of ``L``
_MAX_TRIALS = 60
#: the proximal Newton model's sweeps: at most this many, until the largest decrease of a sweep is
#: this fraction of the first sweep's (tight: the outer convergence is then Newton's)
PROX_NEWTON_MAX_SWEEPS = 500
PROX_NEWTON_RTOL = 1e-10


class BlockStep:
    """One block update's inputs; the curvature quantities are formed on first use.

    Parameters
    ----------
    run : RunState
        The solver state (objective, penalty, caches, partition rule).
    block : int64 array (b,)
    index : int or None
        The fixed block's index (its ``H_b``, factor and ``L_b`` are cached), ``None`` for a
        variable or dynamic block.
    """

    def __init__(self, run: Any, block: np.ndarray, index: int | None) -> None:
        self.run = run
        self.block = block
        self.index = index
        self.objective = run.objective
        self.penalty = run.penalty
        self.lam = run.penalty.lam
        self.x_b = run.objective.x[block].copy()
        self.g_b = run.objective.g[block].copy()
        self._this_step: dict[str, Any] = {}

    def _cached(self, what: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per step, or once per run for a fixed block (kept in ``run.cache``)."""
        if self.index is None:
            if what not in self._this_step:
                self._this_step[what] = make()
            return self._this_step[what]
        store = self.run.cache.setdefault(what, {})
        if self.index not in store:
            store[self.index] = make()
        return store[self.index]

    @property
    def bound_matrix(self) -> np.ndarray:
        """``H_b``, shape (b, b)."""
        return self._cached("bound_matrix", lambda: self.objective.bound_matrix(self.block))

    @property
    def bound_solve(self) -> Callable[[np.ndarray], np.ndarray]:
        """``rhs -> H_b^+ rhs`` (Cholesky, or the pseudo-inverse when ``H_b`` is singular)."""
        return self._cached("bound_solve", lambda: psd_solver(self.bound_matrix))

    @property
    def lipschitz(self) -> float:
        """``L_b = lambda_max(H_b)``."""
        if self.index is not None:
            return float(self.run.block_lipschitz[self.index])
        return self._cached("lipschitz", lambda: self.objective.block_lipschitz(self.block))

    def hessian(self) -> np.ndarray:
        """The exact block Hessian at the current ``x``."""
        return self.objective.hessian(self.block)

    def change(self, delta: np.ndarray) -> float:
        """``f(x + delta on the block) - f(x)``."""
        return self.objective.change(self.block, delta)

    def block_value(self, x_b_new: np.ndarray) -> float:
        """``F`` with the block replaced by ``x_b_new``, minus ``F(x)``: both parts' changes formed
        from the step, so a decrease below ``F``'s own rounding is still seen."""
        delta = x_b_new - self.x_b
        return self.change(delta) + self.penalty.change(self.x_b, delta)

    def prox_step(self, L: float) -> np.ndarray:
        """``prox(x_b - g_b / L, 1 / L) - x_b``."""
        return self.penalty.prox(self.x_b - self.g_b / L, 1.0 / L) - self.x_b


@dataclass(frozen=True)
class UpdateRule:
    """One update rule: ``apply(step) -> delta`` and what it handles (see the module docstring)."""

    apply: Callable[[BlockStep], np.ndarray]
    penalties: frozenset = frozenset({"none", "l1", "l1-nonneg"})
    quadratic_only: bool = False


def gradient_update(step: BlockStep) -> np.ndarray:
    return step.prox_step(step.lipschitz)


def doubling_update(step: BlockStep) -> np.ndarray:
    memory = step.run.cache.setdefault("doubling", {})
    cap = float(step.run.lipschitz[step.block].sum())
    L = min(memory[step.index] / 2 if step.index in memory else float(step.run.lipschitz[step.block].max()), cap)
    for _ in range(_MAX_TRIALS):
        delta = step.prox_step(L)
        if L >= cap or step.change(delta) <= step.g_b @ delta + 0.5 * L * (delta @ delta):
            break
        L = min(2 * L, cap)
    memory[step.index] = L
    return delta


def matrix_update(step: BlockStep) -> np.ndarray:
    return -step.bound_solve(step.g_b)


def newton_update(step: BlockStep) -> np.ndarray:
    direction = -psd_solver(step.hessian())(step.g_b)
    slope = float(step.g_b @ direction)
    t = 1.0
    for _ in range(_MAX_TRIALS):
        if step.change(t * direction) <= ARMIJO_C * t * slope:
            return t * direction
        t *= 0.5
    return np.zeros_like(direction)


def exact_update(step: BlockStep) -> np.ndarray:
    solver = step.run.partition_rule.block_solver
    if solver is not None:
        return -solver(step.run.matrix, step.g_b, step.block)
    return -step.bound_solve(step.g_b)


def prox_newton_update(step: BlockStep) -> np.ndarray:
    hessian = np.ascontiguousarray(step.hessian(), dtype=np.float64)
    v, model_gradient = step.x_b.copy(), step.g_b.copy()
    nonneg = step.penalty.kind == "l1-nonneg"
    kernels().minimize_gram_l1(
        hessian, v, model_gradient, step.lam, nonneg=nonneg, max_sweeps=PROX_NEWTON_MAX_SWEEPS, rtol=PROX_NEWTON_RTOL
    )
    direction = v - step.x_b
    decrease = float(step.g_b @ direction) + step.penalty.change(step.x_b, direction)
    if not decrease < 0.0:
        return np.zeros_like(direction)
    if step.objective.is_quadratic:
        # the model is F on the block: its minimiser needs no line search, and near the solution
        # the smooth and penalty changes cancel below F's rounding, where a test could only refuse it
        return direction
    t = 1.0
    for _ in range(_MAX_TRIALS):
        if step.change(t * direction) + step.penalty.change(step.x_b, t * direction) <= ARMIJO_C * t * decrease:
            return t * direction
        t *= 0.5
    return np.zeros_like(direction)


def projected_gradient_update(step: BlockStep) -> np.ndarray:
    return projected_gradient(step.x_b, step.g_b, step.lipschitz, step.lam) - step.x_b


def two_metric_update(step: BlockStep) -> np.ndarray:
    x_new, _ = two_metric_projection(step.x_b, step.g_b, step.bound_matrix, step.lam, step.block_value)
    return x_new - step.x_b


def proximal_newton_nonneg_update(step: BlockStep) -> np.ndarray:
    return proximal_newton(step.x_b, step.g_b, step.bound_matrix, step.lam) - step.x_b


_NONNEG = frozenset({"l1-nonneg"})

#: name -> rule; unknown names are refused by ``BCD.validate`` with this list.
UPDATES: dict[str, UpdateRule] = {
    "gradient": UpdateRule(gradient_update),
    "doubling": UpdateRule(doubling_update),
    "matrix": UpdateRule(matrix_update, penalties=frozenset({"none"})),
    "newton": UpdateRule(newton_update, penalties=frozenset({"none"})),
    "exact": UpdateRule(exact_update, penalties=frozenset({"none"}), quadratic_only=True),
    "prox-newton": UpdateRule(prox_newton_update),
    "pg": UpdateRule(projected_gradient_update, penalties=_NONNEG),
    "tmp": UpdateRule(two_metric_update, penalties=_NONNEG),
    "pn": UpdateRule(proximal_newton_nonneg_update, penalties=_NONNEG),
}
