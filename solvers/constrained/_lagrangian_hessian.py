"""Where the exact-ALM solvers get the Lagrangian Hessian ``H = hess_x (f + y^T c)``.

- :class:`ExactHessian`: the problem's ``lag_hess`` (dense or scipy sparse);
- :class:`FiniteDifferenceHessian`: ``n`` forward differences of ``grad_x L(., y)``, one per
  column, symmetrised; costs ``n`` gradient and Jacobian evaluations per iteration;
- :class:`QuasiNewtonHessian`: a dense damped-BFGS (Powell, 1978) or SR1 approximation updated from
  the change of ``grad_x L`` over each accepted step, with both ends at the new multipliers.

The merit function's gradient also needs ``H grad_x L``; an approximate ``H`` would make its
slope wrong, so the approximations give that product by a forward difference of ``grad_x L``
(:func:`lagrangian_gradient_difference`, one gradient and one Jacobian evaluation).
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from optkit.constrained_problem import EqualityConstrainedProblem

__all__ = [
    "HESSIAN_SOURCES",
    "ExactHessian",
    "FiniteDifferenceHessian",
    "LagrangianHessian",
    "QuasiNewtonHessian",
    "lagrangian_gradient_difference",
    "make_hessian",
]

HESSIAN_SOURCES = ("auto", "exact", "bfgs", "sr1", "fd")


def _lagrangian_gradient(problem: EqualityConstrainedProblem, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return problem.grad(x) + problem.jac(x).T @ y


def lagrangian_gradient_difference(
    problem: EqualityConstrainedProblem, x: np.ndarray, y: np.ndarray, lag_grad: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """``H v`` by the forward difference ``(grad_x L(x + h v, y) - grad_x L(x, y)) / h``.

    ``h = sqrt(eps) (1 + ||x||) / ||v||``: the usual balance of truncation and rounding error
    for a step along ``v``. ``lag_grad`` is ``grad_x L(x, y)``, already known. Shapes (n,).
    """
    v_norm = float(np.linalg.norm(v))
    if v_norm == 0.0:
        return np.zeros_like(v)
    h = np.sqrt(np.finfo(float).eps) * (1.0 + float(np.linalg.norm(x))) / v_norm
    return (_lagrangian_gradient(problem, x + h * v, y) - lag_grad) / h


class LagrangianHessian(abc.ABC):
    """A source of ``H`` for the outer iteration; ``exact`` says whether ``H`` is the true Hessian."""

    exact: bool = False

    @abc.abstractmethod
    def matrix(self, problem: EqualityConstrainedProblem, x: np.ndarray, y: np.ndarray, lag_grad: np.ndarray) -> Any:
        """``H`` at ``(x, y)``: (n, n), dense or scipy sparse; ``lag_grad`` is ``grad_x L(x, y)``."""

    def update(self, s: np.ndarray, r: np.ndarray) -> None:
        """Take the accepted step ``s = x+ - x`` and ``r = grad_x L(x+, y+) - grad_x L(x, y+)``."""

    def product(
        self, problem: EqualityConstrainedProblem, H: Any, x: np.ndarray, y: np.ndarray, lag_grad: np.ndarray
    ) -> np.ndarray:
        """``H grad_x L`` for the merit gradient: ``H @ lag_grad`` for the exact Hessian, a forward
        difference of ``grad_x L`` otherwise."""
        if self.exact:
            return H @ lag_grad
        return lagrangian_gradient_difference(problem, x, y, lag_grad, lag_grad)


class ExactHessian(LagrangianHessian):
    """The problem's own ``lag_hess(x, y)``."""

    exact = True

    def matrix(self, problem, x, y, lag_grad):
        return problem.lag_hess(x, y)


class FiniteDifferenceHessian(LagrangianHessian):
    """``H`` column by column from forward differences of ``grad_x L``, then ``(H + H^T) / 2``."""

    def matrix(self, problem, x, y, lag_grad):
        columns = [lagrangian_gradient_difference(problem, x, y, lag_grad, e) for e in np.eye(x.shape[0])]
        H = np.array(columns).T
        return 0.5 * (H + H.T)


class QuasiNewtonHessian(LagrangianHessian):
    """Dense damped BFGS or SR1 approximation of ``H``, shape (n, n).

    Starts from the identity, rescaled at the first update to ``(r^T r / s^T r) I`` when
    ``s^T r > 0`` (Nocedal & Wright, eq. 6.20). BFGS uses Powell's damping: ``r`` is replaced by
    ``theta r + (1 - theta) B s`` with the ``theta`` that keeps ``s^T r >= 0.2 s^T B s``, so the
    matrix stays positive definite even where the Lagrangian is not convex. SR1 skips an update
    whose denominator ``|(r - B s)^T s|`` is below ``1e-8 ||s|| ||r - B s||`` and may become
    indefinite; the outer iteration's Hessian modification then lifts it.
    """

    def __init__(self, n: int, formula: str) -> None:
        self.B = np.eye(n)
        self.formula = formula
        self.updates = 0
        self.scaled = False

    def matrix(self, problem, x, y, lag_grad):
        return self.B.copy()

    def update(self, s: np.ndarray, r: np.ndarray) -> None:
        sr = float(s @ r)
        if not (np.all(np.isfinite(r)) and float(s @ s) > 0.0):
            return
        if not self.scaled and sr > 0.0:
            self.B = (float(r @ r) / sr) * np.eye(s.shape[0])
            self.scaled = True
        Bs = self.B @ s
        if self.formula == "sr1":
            u = r - Bs
            denominator = float(u @ s)
            if abs(denominator) <= 1e-8 * float(np.linalg.norm(s)) * float(np.linalg.norm(u)) or denominator == 0.0:
                return
            self.B += np.outer(u, u) / denominator
        else:
            sBs = float(s @ Bs)
            if sr < 0.2 * sBs:
                theta = 0.8 * sBs / (sBs - sr)
                r = theta * r + (1.0 - theta) * Bs
                sr = float(s @ r)
            self.B += np.outer(r, r) / sr - np.outer(Bs, Bs) / sBs
        self.updates += 1


def make_hessian(source: str, problem: EqualityConstrainedProblem) -> LagrangianHessian:
    """The :class:`LagrangianHessian` named ``source`` for ``problem``; ``"auto"`` is ``"exact"`` when
    the problem has ``lag_hess`` and ``"bfgs"`` otherwise."""
    if source == "auto":
        source = "exact" if "lag_hess" in problem.capabilities else "bfgs"
    if source == "exact":
        return ExactHessian()
    if source == "fd":
        return FiniteDifferenceHessian()
    return QuasiNewtonHessian(problem.n, source)
