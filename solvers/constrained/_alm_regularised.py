"""The exact-ALM solvers' steps for what the Newton step cannot handle: singular Jacobians,
m > n, merit stalls (see :mod:`~solvers.constrained._alm_merit` for the rules)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from optkit.constrained_problem import EqualityConstrainedProblem, gauss_newton_fraction, least_squares_multipliers
from optkit.result import Status

from ._alm_point import _Point, _State

__all__ = ["RegularisedSteps"]

# A restoration phase ends at its target or after this many steps, whichever comes first.
RESTORATION_STEPS = 20


def _regularised_solve(M: Any, rhs: np.ndarray, delta0: float) -> tuple[np.ndarray, float] | None:
    """``(M + delta D)^{-1} rhs`` and ``delta``, with Marquardt's scaling ``D = diag(max(|M_ii|,
    1e-10 max_j |M_jj|))`` (so badly scaled variables are damped alike) and the smallest
    ``delta = delta0 * 10^k`` (at least 1e-10) that makes ``M + delta D`` positive definite; None
    when none up to 1e20 does. Dense: Cholesky; sparse: the smallest eigenvalue, then SuperLU."""
    diagonal = np.abs(np.asarray(M.diagonal(), dtype=float))
    D = np.maximum(diagonal, 1e-10 * max(float(np.max(diagonal, initial=0.0)), 1e-300))
    delta = max(delta0, 1e-10)
    if sp.issparse(M):
        scaled = sp.csc_array(sp.diags_array(D**-0.5) @ M @ sp.diags_array(D**-0.5))
        delta = max(delta, 1e-8 - _smallest_eigenvalue_bound(scaled))
        try:
            return spla.splu(sp.csc_array(M + delta * sp.diags_array(D))).solve(rhs), delta
        except RuntimeError:
            return None
    while delta <= 1e20:
        try:
            factor = sla.cho_factor(M + delta * np.diag(D))
        except sla.LinAlgError:
            delta *= 10.0
            continue
        return sla.cho_solve(factor, rhs), delta
    return None


def _smallest_eigenvalue_bound(A: Any) -> float:
    """A lower bound (or the value) of the smallest eigenvalue of sparse symmetric ``A``: ARPACK's
    when it converges, Gershgorin's bound ``min_i (a_ii - sum_j!=i |a_ij|)`` when it does not."""
    if A.shape[0] > 1:
        try:
            return float(spla.eigsh(A, k=1, which="SA", return_eigenvectors=False)[0])
        except spla.ArpackNoConvergence:
            pass
    radius = np.asarray(abs(A).sum(axis=1)).ravel() - np.abs(A.diagonal())
    return float(np.min(A.diagonal() - radius))


class RegularisedSteps:
    """Mixin of :class:`~solvers.constrained._alm_merit.AugmentedLagrangianNewton`: the
    regularised primal step, restoration, recovery and reset (its options ``tol``,
    ``max_recoveries``, ``eta1``, ``eta2``, ``delta`` and its ``_line_search``)."""

    def _primal_step(self, problem: EqualityConstrainedProblem, state: _State) -> _State:
        """The regularised step with ``y`` held at its least-squares value (``_alm_merit``'s docstring)."""
        p = state.point.with_multipliers(least_squares_multipliers(state.point.g, state.point.J))
        state.point = p
        H = state.hessian.matrix(problem, p.x, p.y, p.lag_grad)
        eta1, eta2 = state.eta1, state.eta2
        grad_x = p.lag_grad + eta1 * (p.J.T @ p.c) + eta2 * state.hessian.product(problem, H, p.x, p.y, p.lag_grad)
        M = H + eta1 * (p.J.T @ p.J)
        solved = _regularised_solve(M, -grad_x, state.damping)
        if solved is None:
            state.failure = Status.BREAKDOWN
            state.message = "the regularised Newton matrix H + eta1 J^T J + delta D stays indefinite up to delta = 1e20"
            return state
        state.primal_steps += 1
        return self._least_squares_move(problem, state, solved[0], float(grad_x @ solved[0]), eta1, eta2)

    def _restoration_step(self, problem: EqualityConstrainedProblem, state: _State) -> _State:
        """One Levenberg-Marquardt step on ``||c||^2 / 2``; ends the restoration at its target."""
        p = state.point
        grad = p.J.T @ p.c
        solved = _regularised_solve(p.J.T @ p.J, -grad, state.damping)
        if solved is None:
            state.failure = Status.BREAKDOWN
            state.message = "the restoration matrix J^T J + delta D stays indefinite up to delta = 1e20"
            return state
        state.restoration_steps += 1
        state = self._least_squares_move(problem, state, solved[0], float(grad @ solved[0]), None, None)
        state.restoration_phase_steps += 1
        done = state.point.feasibility <= state.restoration_target
        if state.failure is None and (done or state.restoration_phase_steps >= RESTORATION_STEPS):
            self._reset(state)
        return state

    def _least_squares_move(self, problem, state: _State, dx: np.ndarray, slope: float, eta1, eta2) -> _State:
        """Line search along ``(dx, 0)`` on ``L_eta`` (or on ``||c||^2 / 2`` when ``eta1`` is None),
        then the infeasibility test of ``_alm_merit``'s docstring."""
        before = float(np.linalg.norm(state.point.c))
        merit = _Point.half_squared_residual if eta1 is None else (lambda q: q.merit(eta1, eta2))
        z = np.concatenate([dx, np.zeros(problem.m)])
        moved = slope < 0 and self._line_search(problem, state, z, slope, merit) is not None
        # Levenberg-Marquardt's rule on the line search's verdict: a full step lowers the damping
        state.damping = float(np.clip(state.damping * (0.1 if moved and state.alpha == 1.0 else 10.0), 1e-12, 1e12))
        p = state.point
        c_norm = float(np.linalg.norm(p.c))
        if p.feasibility > self.tol and c_norm >= 0.99 * before:
            reducible = float(np.sqrt(gauss_newton_fraction(p.J, p.c))) * c_norm
            if reducible <= self.tol * c_norm:
                state.failure = Status.INFEASIBLE
                state.message = (
                    f"||c|| stalls at a stationary point of ||c||^2: least-squares residual ||c||_2 = {c_norm:.6e} "
                    f"(its part in range(J): {reducible:.3e}); not a solution of c(x) = 0"
                )
                return state
        if not moved:
            what = "||c||^2" if eta1 is None else "the merit function"
            return self._recover(problem, state, f"a regularised step could not decrease {what}")
        return state

    def _recover(self, problem: EqualityConstrainedProblem, state: _State, reason: str) -> _State:
        """Restoration and reset (``_alm_merit``'s docstring), or ``FAILED`` with ``reason`` once they are spent."""
        if state.recoveries >= self.max_recoveries or state.restoration_target is not None:
            state.failure = Status.FAILED
            spent = f" (after {state.recoveries} recoveries)" if state.recoveries else ""
            state.message = reason + spent
            return state
        state.recoveries += 1
        if state.point.feasibility > self.tol:
            state.restoration_target = max(self.tol, 0.1 * state.point.feasibility)
            state.restoration_phase_steps = 0
        else:
            self._reset(state)
        return state

    def _reset(self, state: _State) -> None:
        """Least-squares multipliers, initial penalties and accuracy; leaves restoration."""
        state.point = state.point.with_multipliers(least_squares_multipliers(state.point.g, state.point.J))
        state.eta1, state.eta2, state.delta = self.eta1, self.eta2, self.delta
        state.restoration_target = None
