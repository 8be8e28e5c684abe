"""Newton's method on the exact augmented Lagrangian, with the KKT solve left to subclasses.

Shared by ``alm-sketch`` (randomized iterative sketching) and ``alm-newton`` (a direct or
MINRES solve), so the two differ only in how the Newton system is solved.

For ``min f(x) s.t. c(x) = 0`` with Lagrangian ``L = f + y^T c``, ``J = c'(x)`` and
``H = hess_x L``, the merit function (Hong, Na, Mahoney & Kolar, ICML 2023) is::

    L_eta(x, y) = f + y^T c + (eta1 / 2) ||c||^2 + (eta2 / 2) ||grad_x L||^2

    grad L_eta = [ grad_x L + eta1 J^T c + eta2 H grad_x L ;  c + eta2 J grad_x L ]

``H`` here is the Hessian of the **Lagrangian** (the reference code uses the objective's,
which is wrong unless the constraints are linear). Each iteration:

1. **Hessian modification.** ``B = H`` when the reduced Hessian ``Z^T H Z`` (``Z`` a basis
   of null(J)) has smallest eigenvalue ``>= hessian_floor``; else ``B = H + tau I`` with the
   smallest ``tau`` that lifts it to ``hessian_shift`` (``Z`` orthonormal, so the shift is
   exact; the reference code adds ``||H|| + xi_B``). Dense problems compute ``Z`` from an SVD
   of ``J``, which also gives ``lambda_min(J J^T)``: below ``singular_tol * ||J||^2`` the run
   stops with ``Status.BREAKDOWN`` (singular constraint Jacobian). Sparse problems use the
   smallest eigenvalue of ``H`` instead (a sufficient test) and skip the singularity test.
2. **Newton system** ``[[B, J^T], [J, 0]] z = -[grad_x L; c]``, solved by the subclass to the
   relative residual ``theta_k * delta``: the adaptive accuracy condition, with
   ``theta_k = min(1, ||b||)`` (the paper's superlinear variant) or ``1`` (``superlinear=False``,
   the released code). The paper's worst-case factor ``||K|| psi`` is not applied; it asks for
   relative residuals of 1e-10 and below, so the reference code runs into its cap of 1e5
   sketch steps instead.
3. **Descent test** ``grad L_eta^T z <= -(eta2 / 2) ||b||^2``; when it fails,
   ``eta1 <- nu^2 eta1``, ``eta2 <- eta2 / nu``, ``delta <- delta / nu^4`` and the solve is
   refined from the current ``z``, until it passes or ``eta1 > eta1_max`` / ``eta2 < eta2_min``.
4. **Armijo backtracking** on ``L_eta`` (halving from 1), moving ``x`` and ``y`` together.

It stops when ``kkt = max(||grad_x L||_inf, ||c||_inf) <= tol`` at the solver's own ``(x, y)``.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from optkit.constrained_problem import EqualityConstrainedProblem
from optkit.result import Status
from optkit.solver import IterativeSolver
from optkit.validation import check_int, check_nonnegative, check_positive

__all__ = ["AugmentedLagrangianNewton", "KKTSolve"]

# Above this many unknowns plus constraints (or with a sparse Jacobian) the sparse path is used.
DENSE_LIMIT = 3000


@dataclass
class KKTSolve:
    """The outcome of one (possibly refined) Newton-system solve."""

    z: np.ndarray
    inner_iter: int
    converged: bool
    message: str = ""
    timed_out: bool = False


@dataclass
class _Point:
    """Everything evaluated at one primal-dual point."""

    x: np.ndarray
    y: np.ndarray
    f: float
    g: np.ndarray
    c: np.ndarray
    J: Any
    lag_grad: np.ndarray

    def merit(self, eta1: float, eta2: float) -> float:
        return self.f + self.y @ self.c + 0.5 * eta1 * (self.c @ self.c) + 0.5 * eta2 * (self.lag_grad @ self.lag_grad)

    @property
    def kkt(self) -> float:
        return max(float(np.max(np.abs(self.lag_grad), initial=0.0)), float(np.max(np.abs(self.c), initial=0.0)))


@dataclass
class _State:
    point: _Point
    eta1: float
    eta2: float
    delta: float
    alpha: float = 0.0
    inner_iter: int = 0
    inner_total: int = 0
    hessian_mods: int = 0
    penalty_updates: int = 0
    failure: Status | None = None
    message: str = ""
    deadline: float | None = None
    scratch: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)


def _evaluate(problem: EqualityConstrainedProblem, x: np.ndarray, y: np.ndarray) -> _Point:
    g = problem.grad(x)
    J = problem.jac(x)
    return _Point(x, y, problem.fun(x), g, problem.cons(x), J, g + J.T @ y)


@dataclass(frozen=True, kw_only=True)
class AugmentedLagrangianNewton(IterativeSolver):
    """Options shared by ``alm-sketch`` and ``alm-newton`` (see the module docstring).

    Options
    -------
    tol : float
        Stop when ``max(||grad_x L||_inf, ||c||_inf) <= tol`` (default 1e-6).
    max_iter : int
        Newton iterations (default 1000).
    time_limit : float or None
    eta1, eta2 : float
        Initial penalties on ``||c||^2`` and ``||grad_x L||^2`` (reference: 1.0 and 0.1).
    nu : float
        Penalty update factor (> 1; reference 1.5).
    armijo : float
        Sufficient-decrease constant ``beta`` of the line search, in (0, 0.5) (reference 0.1).
    delta : float
        Initial relative accuracy of the Newton solve (reference 0.1).
    superlinear : bool
        Sharpen the accuracy with ``theta_k = min(1, ||b||)`` (default True).
    hessian_floor, hessian_shift : float
        Reduced-Hessian eigenvalue test and the value it is lifted to (reference 1e-6, 0.1).
    singular_tol : float
        ``lambda_min(J J^T) < singular_tol * ||J||^2`` stops with ``BREAKDOWN`` (dense only).
    eta1_max, eta2_min : float
        Limits of the penalty adaptation (reference 1e8, 1e-8).
    max_backtracks : int
        Halvings of the step before the line search fails (``FAILED``).
    """

    accepts: ClassVar = (EqualityConstrainedProblem,)
    requires: ClassVar = frozenset({"fun", "grad", "cons", "jac", "lag_hess"})
    backends: ClassVar = frozenset({"numpy"})

    tol: float = 1e-6
    max_iter: int = 1000
    eta1: float = 1.0
    eta2: float = 0.1
    nu: float = 1.5
    armijo: float = 0.1
    delta: float = 0.1
    superlinear: bool = True
    hessian_floor: float = 1e-6
    hessian_shift: float = 0.1
    singular_tol: float = 1e-12
    eta1_max: float = 1e8
    eta2_min: float = 1e-8
    max_backtracks: int = 40

    def validate(self) -> None:
        super().validate()
        for name in ("eta1", "eta2", "delta", "hessian_shift", "eta1_max", "eta2_min"):
            check_positive(name, getattr(self, name))
        check_nonnegative("hessian_floor", self.hessian_floor)
        check_nonnegative("singular_tol", self.singular_tol)
        check_int("max_backtracks", self.max_backtracks, 1)
        if not self.nu > 1:
            raise ValueError(f"nu must be > 1, got {self.nu!r}")
        if not 0 < self.armijo < 0.5:
            raise ValueError(f"armijo must be in (0, 0.5), got {self.armijo!r}")
        if not isinstance(self.superlinear, bool):
            raise TypeError(f"superlinear must be a bool, got {self.superlinear!r}")

    @abc.abstractmethod
    def solve_kkt(self, K: Any, b: np.ndarray, rtol: float, state: _State, z: np.ndarray | None) -> KKTSolve:
        """Solve ``K z = b`` to ``||K z - b|| <= rtol ||b||``, starting from ``z`` when given
        (a refinement of the previous solve of the same system); stop at ``state.deadline``
        with ``timed_out=True``. ``state.scratch`` is the
        subclass's space for one outer iteration, ``state.memory`` for the whole run."""

    # ------------------------------------------------------------------ driver hooks
    def init(self, problem: EqualityConstrainedProblem, x0: Any) -> _State:
        x = np.array(x0, dtype=float)
        if x.shape != (problem.n,):
            raise ValueError(f"x0 must have shape ({problem.n},), got {x.shape}")
        point = _evaluate(problem, x, problem.y0.copy())
        if not (isinstance(point.J, np.ndarray) or sp.issparse(point.J)):
            raise TypeError(
                f"solver {self.name!r} needs the constraint Jacobian's entries (a numpy array or a scipy sparse "
                f"matrix) to form the KKT matrix; problem {problem.name!r} returns {type(point.J).__name__}"
            )
        # an inner solve can take longer than the whole run may: it stops at this
        # time.perf_counter() value (KKTSolve.timed_out) and the run ends with TIME_LIMIT
        deadline = None if self.time_limit is None else time.perf_counter() + self.time_limit
        return _State(point, self.eta1, self.eta2, self.delta, deadline=deadline)

    def terminate(self, problem: EqualityConstrainedProblem, state: _State) -> Status | None:
        if state.failure is not None:
            return state.failure
        kkt = state.point.kkt
        if not np.isfinite(kkt) or not np.isfinite(state.point.f):
            return Status.NONFINITE
        return Status.CONVERGED if kkt <= self.tol else None

    def metrics(self, problem: EqualityConstrainedProblem, state: _State) -> dict[str, float]:
        p = state.point
        return {
            "fun": p.f,
            "kkt": p.kkt,
            "feasibility": float(np.max(np.abs(p.c), initial=0.0)),
            "merit": p.merit(state.eta1, state.eta2),
            "eta1": state.eta1,
            "eta2": state.eta2,
            "alpha": state.alpha,
            "inner_iter": float(state.inner_iter),
        }

    def postprocess(self, problem: EqualityConstrainedProblem, state: _State, status: Status) -> dict[str, Any]:
        return {
            "x": state.point.x,
            "fun": state.point.f,
            "metrics": self.metrics(problem, state),
            "extras": {"y": state.point.y},
            "counters": {
                "inner_iter": state.inner_total,
                "hessian_mods": state.hessian_mods,
                "penalty_updates": state.penalty_updates,
            },
            "message": state.message,
        }

    def iterate(self, state: _State) -> np.ndarray:
        return state.point.x

    def step(self, problem: EqualityConstrainedProblem, state: _State) -> _State:
        p = state.point
        H = problem.lag_hess(p.x, p.y)
        dense = not sp.issparse(p.J) and not sp.issparse(H) and problem.n + problem.m <= DENSE_LIMIT
        B = self._modified_hessian_dense(H, p.J, state) if dense else self._modified_hessian_sparse(H, state)
        if state.failure is not None:
            return state
        if dense:
            K = np.block([[B, p.J.T], [p.J, np.zeros((problem.m, problem.m))]])
        else:
            K = sp.bmat([[sp.csr_array(B), sp.csr_array(p.J).T], [sp.csr_array(p.J), None]], format="csr")
        b = -np.concatenate([p.lag_grad, p.c])
        b_norm = float(np.linalg.norm(b))
        theta = min(1.0, b_norm) if self.superlinear else 1.0
        state.scratch = {}
        solve = self.solve_kkt(K, b, theta * state.delta, state, None)
        state.inner_iter = solve.inner_iter
        while True:
            if solve.timed_out:
                state.inner_total += state.inner_iter
                state.failure, state.message = Status.TIME_LIMIT, "the time limit ran out while solving a Newton system"
                return state
            if not np.all(np.isfinite(solve.z)):
                state.failure, state.message = Status.NONFINITE, "the Newton direction is not finite"
                return state
            merit_grad = self._merit_gradient(p, H, state)
            slope = float(merit_grad @ solve.z)
            if slope <= -0.5 * state.eta2 * b_norm**2:
                break
            if state.eta1 > self.eta1_max or state.eta2 < self.eta2_min:
                break
            state.eta1 *= self.nu**2
            state.eta2 /= self.nu
            state.delta /= self.nu**4
            state.penalty_updates += 1
            solve = self.solve_kkt(K, b, theta * state.delta, state, solve.z)
            state.inner_iter += solve.inner_iter
        state.inner_total += state.inner_iter
        if slope >= 0:
            state.failure = Status.FAILED
            state.message = (
                f"no descent direction for the merit function (slope {slope:.3e}) "
                f"with eta1={state.eta1:.3g}, eta2={state.eta2:.3g}"
            )
            return state
        return self._line_search(problem, state, solve.z, slope)

    # ------------------------------------------------------------------ pieces
    def _merit_gradient(self, p: _Point, H: Any, state: _State) -> np.ndarray:
        return np.concatenate(
            [
                p.lag_grad + state.eta1 * (p.J.T @ p.c) + state.eta2 * (H @ p.lag_grad),
                p.c + state.eta2 * (p.J @ p.lag_grad),
            ]
        )

    def _modified_hessian_dense(self, H: np.ndarray, J: np.ndarray, state: _State) -> np.ndarray:
        n, m = J.shape[1], J.shape[0]
        _, sv, Vt = sla.svd(J, full_matrices=True)
        jac_norm2 = float(sv[0] ** 2) if sv.size else 0.0
        if m > n or (m and sv[-1] ** 2 < self.singular_tol * max(jac_norm2, 1.0)):
            smallest = 0.0 if m > n else float(sv[-1] ** 2)
            state.failure = Status.BREAKDOWN
            state.message = f"singular constraint Jacobian: lambda_min(J J^T) = {smallest:.3e} (m={m}, n={n})"
            return H
        Z = Vt[m:].T
        if Z.shape[1] == 0:
            return H
        lam = float(np.linalg.eigvalsh(Z.T @ H @ Z)[0])
        if lam >= self.hessian_floor:
            return H
        state.hessian_mods += 1
        return H + (self.hessian_shift - lam) * np.eye(n)

    def _modified_hessian_sparse(self, H: Any, state: _State) -> Any:
        H = sp.csr_array(H)
        off_diagonal = H - sp.diags_array(H.diagonal())
        if off_diagonal.count_nonzero() == 0:
            lam = float(H.diagonal().min())
        else:
            lam = float(spla.eigsh(H, k=1, which="SA", return_eigenvectors=False)[0])
        if lam >= self.hessian_floor:
            return H
        state.hessian_mods += 1
        return H + (self.hessian_shift - lam) * sp.eye_array(H.shape[0], format="csr")

    def _line_search(self, problem: EqualityConstrainedProblem, state: _State, z: np.ndarray, slope: float) -> _State:
        p, n = state.point, problem.n
        merit0 = p.merit(state.eta1, state.eta2)
        alpha = 1.0
        for _ in range(self.max_backtracks):
            trial = _evaluate(problem, p.x + alpha * z[:n], p.y + alpha * z[n:])
            merit = trial.merit(state.eta1, state.eta2)
            if np.isfinite(merit) and merit <= merit0 + self.armijo * alpha * slope:
                state.point, state.alpha = trial, alpha
                return state
            alpha *= 0.5
        state.failure = Status.FAILED
        state.message = (
            f"line search failed: no sufficient decrease of the merit function after {self.max_backtracks} halvings"
        )
        return state
