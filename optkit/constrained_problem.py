"""Equality-constrained problems ``min f(x) s.t. c(x) = 0`` and their KKT measures.

The Lagrangian is ``L(x, y) = f(x) + y^T c(x)``, so at a KKT point
``grad f(x) + J(x)^T y = 0`` and ``c(x) = 0``. Every constrained solver is judged by
:func:`kkt_residual`: the inf-norm of ``(grad_x L, c)``, with the solver's own multipliers
when it returns them (``Result.extras["y"]``) and least-squares multipliers otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .linop import LinearOperator, aslinearoperator
from .problem import Problem, _check_finite

__all__ = ["EqualityConstrainedProblem", "gauss_newton_fraction", "kkt_residual", "least_squares_multipliers"]


def least_squares_multipliers(grad: np.ndarray, jac: Any) -> np.ndarray:
    """The multipliers ``y`` minimising ``||grad + J^T y||_2``.

    Parameters
    ----------
    grad : ndarray of shape (n,)
        Objective gradient.
    jac : ndarray (m, n), scipy sparse matrix or LinearOperator
        Constraint Jacobian. Dense: ``numpy.linalg.lstsq`` (minimum-norm when ``J`` is rank
        deficient); sparse: a sparse LU of ``J J^T`` (LSQR when that matrix is singular);
        operator: LSQR.

    Returns
    -------
    ndarray of shape (m,)
    """
    if isinstance(jac, np.ndarray):
        return np.linalg.lstsq(jac.T, -grad, rcond=None)[0]
    if sp.issparse(jac):
        jac = sp.csr_array(jac)
        try:
            normal = sp.csc_array(jac @ jac.T)
            with np.errstate(all="raise"):
                return spla.splu(normal).solve(-(jac @ grad))
        except (RuntimeError, FloatingPointError):
            pass
    op = aslinearoperator(jac).to_scipy()
    return spla.lsqr(op.T, -grad, atol=1e-15, btol=1e-15, iter_lim=10 * sum(op.shape))[0]


def gauss_newton_fraction(J: Any, c: np.ndarray) -> float:
    """The fraction of ``||c||_2^2`` that a Gauss–Newton step from this point would remove.

    ``||P c||^2 / ||c||^2`` with ``P`` the orthogonal projector onto the range of ``J`` (dense
    (m, n): ``numpy.linalg.lstsq``; scipy sparse: LSQR): 0 at a stationary point of ``||c||^2``
    (``J^T c = 0``), whatever the scales of ``c`` and ``J``; 0 when ``c = 0``. The test of a
    locally infeasible point shared by ``alm-*`` and ``scipy-least-squares``.
    """
    total = float(c @ c)
    if total == 0.0:
        return 0.0
    if sp.issparse(J):
        step = spla.lsqr(J, c, atol=1e-14, btol=1e-14, iter_lim=10 * sum(J.shape))[0]
    else:
        step = np.linalg.lstsq(np.asarray(J, dtype=float), c, rcond=None)[0]
    predicted = J @ step
    return float(predicted @ predicted) / total


def kkt_residual(grad: np.ndarray, jac: Any, cons: np.ndarray, y: np.ndarray | None = None) -> dict[str, float]:
    """First-order optimality measures of ``min f s.t. c = 0`` at one point.

    Parameters
    ----------
    grad : ndarray (n,)
        ``grad f(x)``.
    jac : ndarray (m, n), scipy sparse or LinearOperator
        ``J(x)``.
    cons : ndarray (m,)
        ``c(x)``.
    y : ndarray (m,), optional
        Multipliers; least-squares multipliers (:func:`least_squares_multipliers`) when omitted.

    Returns
    -------
    dict
        ``stationarity`` = ``||grad + J^T y||_inf``, ``feasibility`` = ``||c||_inf`` and
        ``kkt`` = the larger of the two.
    """
    if y is None:
        y = least_squares_multipliers(grad, jac)
    lag_grad = grad + (jac.T @ y if not isinstance(jac, LinearOperator) else jac.H @ y)
    stationarity = float(np.max(np.abs(lag_grad), initial=0.0))
    feasibility = float(np.max(np.abs(cons), initial=0.0))
    return {"stationarity": stationarity, "feasibility": feasibility, "kkt": max(stationarity, feasibility)}


class EqualityConstrainedProblem(Problem):
    """Minimise a smooth ``f: R^n -> R`` subject to ``c(x) = 0``, ``c: R^n -> R^m``.

    Parameters
    ----------
    fun : callable ``f(x) -> float``
    grad : callable ``g(x) -> ndarray (n,)``
    cons : callable ``c(x) -> ndarray (m,)``
        All equality constraints, linear and nonlinear, as one vector.
    jac : callable ``J(x) -> ndarray (m, n), scipy sparse matrix or LinearOperator``
    x0 : ndarray of shape (n,)
    y0 : ndarray of shape (m,), optional
        Starting multipliers (zeros by default).
    lag_hess : callable ``H(x, y, obj_factor) -> ndarray (n, n) or scipy sparse``, optional
        Hessian of ``obj_factor * f + y^T c`` (IPOPT's convention: ``obj_factor = 0`` gives
        the constraint part alone).
    lag_hvp : callable ``Hv(x, y, v, obj_factor) -> ndarray (n,)``, optional
        The same Hessian times ``v``; derived from ``lag_hess`` when only that is given.
    name, metadata :
        As in :class:`~optkit.problem.Problem`; ``metadata["f_opt"]`` is the known optimal
        (or best known local) value, when there is one.

    Capabilities are ``{"fun", "grad", "cons", "jac"}`` plus ``"lag_hvp"`` and ``"lag_hess"``
    when available. numpy only: the callables fix the backend.
    """

    kind: ClassVar[str] = "equality-constrained"

    def __init__(
        self,
        fun: Callable,
        grad: Callable,
        cons: Callable,
        jac: Callable,
        x0: np.ndarray,
        *,
        y0: np.ndarray | None = None,
        lag_hess: Callable | None = None,
        lag_hvp: Callable | None = None,
        name: str = "equality-constrained",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(x0, np.ndarray) or x0.ndim != 1:
            raise ValueError(
                f"x0 must be a 1-D numpy array, got {type(x0).__name__} of shape {getattr(x0, 'shape', None)}"
            )
        _check_finite("x0", x0)
        for arg, fn in (("fun", fun), ("grad", grad), ("cons", cons), ("jac", jac)):
            if not callable(fn):
                raise TypeError(f"{arg} must be callable, got {type(fn).__name__}")
        super().__init__(name, np.asarray(x0, dtype=float), metadata)
        self._fun, self._grad, self._cons, self._jac = fun, grad, cons, jac
        self._lag_hess, self._lag_hvp = lag_hess, lag_hvp
        c0 = np.asarray(cons(self.x0), dtype=float)
        if c0.ndim != 1:
            raise ValueError(f"cons(x0) must be a 1-D array, got shape {c0.shape}")
        self.m = int(c0.shape[0])
        if y0 is None:
            y0 = np.zeros(self.m)
        y0 = np.asarray(y0, dtype=float).reshape(-1)
        if y0.shape != (self.m,):
            raise ValueError(f"y0 must have shape ({self.m},) to match cons(x0), got {y0.shape}")
        _check_finite("y0", y0)
        self.y0 = y0

    @property
    def capabilities(self) -> frozenset[str]:
        caps = {"fun", "grad", "cons", "jac"}
        if self._lag_hess is not None:
            caps |= {"lag_hess", "lag_hvp"}
        elif self._lag_hvp is not None:
            caps.add("lag_hvp")
        return frozenset(caps)

    def fun(self, x: np.ndarray) -> float:
        """Objective value (counted under ``"fun"``)."""
        self.counters["fun"] += 1
        return float(self._fun(x))

    def grad(self, x: np.ndarray) -> np.ndarray:
        """Objective gradient, shape (n,) (counted under ``"grad"``)."""
        self.counters["grad"] += 1
        return np.asarray(self._grad(x), dtype=float)

    def cons(self, x: np.ndarray) -> np.ndarray:
        """Constraint values ``c(x)``, shape (m,) (counted under ``"cons"``)."""
        self.counters["cons"] += 1
        return np.asarray(self._cons(x), dtype=float)

    def jac(self, x: np.ndarray) -> Any:
        """Constraint Jacobian, (m, n): dense, scipy sparse or a LinearOperator (counted under ``"jac"``)."""
        self.counters["jac"] += 1
        return self._jac(x)

    def lag_hess(self, x: np.ndarray, y: np.ndarray, obj_factor: float = 1.0) -> Any:
        """Hessian of ``obj_factor * f + y^T c`` at ``x``: (n, n), dense or scipy sparse.

        Counted under ``"lag_hess"``."""
        if "lag_hess" not in self.capabilities:
            raise ValueError(f"problem {self.name!r} provides no Lagrangian Hessian")
        self.counters["lag_hess"] += 1
        return self._lag_hess(x, y, obj_factor)

    def lag_hvp(self, x: np.ndarray, y: np.ndarray, v: np.ndarray, obj_factor: float = 1.0) -> np.ndarray:
        """Hessian of ``obj_factor * f + y^T c`` at ``x`` times ``v``, shape (n,) (counted under ``"lag_hvp"``)."""
        if "lag_hvp" not in self.capabilities:
            raise ValueError(f"problem {self.name!r} provides no Lagrangian Hessian-vector product")
        self.counters["lag_hvp"] += 1
        if self._lag_hvp is not None:
            return np.asarray(self._lag_hvp(x, y, v, obj_factor), dtype=float)
        return np.asarray(self._lag_hess(x, y, obj_factor) @ v, dtype=float)

    def evaluate(self, x: Any, extras: Mapping[str, Any] | None = None) -> dict[str, float]:
        """``fun``, ``stationarity``, ``feasibility``, ``kkt`` (see :func:`kkt_residual`; the
        multipliers are ``extras["y"]`` when the solver returned them) and ``f_gap`` =
        ``f - f_opt`` when ``metadata["f_opt"]`` is known. Not counted."""
        x = np.asarray(x, dtype=float)
        y = (extras or {}).get("y")
        out = {"fun": float(self._fun(x))}
        out.update(
            kkt_residual(
                np.asarray(self._grad(x), dtype=float),
                self._jac(x),
                np.asarray(self._cons(x), dtype=float),
                None if y is None else np.asarray(y, dtype=float),
            )
        )
        if self.metadata.get("f_opt") is not None:
            out["f_gap"] = out["fun"] - float(self.metadata["f_opt"])
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={self.n}, m={self.m})"
