"""Newton's method on the exact augmented Lagrangian, with the KKT solve left to subclasses.

Shared by ``alm-sketch`` (randomized solves) and ``alm-newton`` (a direct or MINRES solve), so
the two differ only in how the Newton system is solved.

For ``min f(x) s.t. c(x) = 0`` with Lagrangian ``L = f + y^T c``, ``J = c'(x)`` and
``H = hess_x L``, the merit function (Hong, Na, Mahoney & Kolar, ICML 2023) is::

    L_eta(x, y) = f + y^T c + (eta1 / 2) ||c||^2 + (eta2 / 2) ||grad_x L||^2

    grad L_eta = [ grad_x L + eta1 J^T c + eta2 H grad_x L ;  c + eta2 J grad_x L ]

``H`` here is the Hessian of the **Lagrangian** (the reference code uses the objective's, which
is wrong unless the constraints are linear); it comes from
:mod:`~solvers.constrained._lagrangian_hessian` (the problem's, finite differences or BFGS/SR1).
Each iteration takes one of three steps:

**Newton step** (J of full row rank):

1. *Hessian modification.* ``B = H`` when the reduced Hessian ``Z^T H Z`` (``Z`` a basis of
   null(J) from an SVD of J) has smallest eigenvalue ``>= hessian_floor``; else ``B = H + tau I``
   with the smallest ``tau`` that lifts it to ``hessian_shift``. Sparse problems use the
   smallest eigenvalue of ``H`` instead (a sufficient test).
2. *Newton system* ``[[B, J^T], [J, 0]] z = -[grad_x L; c]``, solved by the subclass to the
   relative residual ``theta_k * delta``: the adaptive accuracy condition, ``theta_k = min(1, ||b||)``
   (``superlinear=True``) or ``1`` (the released code).
3. *Descent test* ``grad L_eta^T z <= -(eta2 / 2) ||b||^2``; when it fails, ``eta1 <- nu^2 eta1``,
   ``eta2 <- eta2 / nu``, ``delta <- delta / nu^4`` and the solve is refined, until it passes or
   the penalties reach ``eta1_max`` / ``eta2_min``.
4. *Armijo backtracking* on ``L_eta`` (halving from 1), moving ``x`` and ``y`` together.

**Regularised primal step** (``sigma_min(J)^2 < singular_tol max(||J||^2, 1)``, ``m > n``, a
Newton system that could not be solved, a Newton direction that is no descent direction at the
penalty limits, or a failed Newton line search): the exact merit function is linear in ``y`` where J is
singular, so the multipliers are held at their least-squares values ``argmin ||grad f + J^T y||``
and ``x`` takes the step of the ``delta_c = 1 / eta1`` regularised KKT system with ``y``
eliminated, right-hand side the merit's own ``x``-gradient::

    (H + eta1 J^T J + delta_w D) dx = -grad_x L_eta,

with Marquardt's scaling ``D`` (the matrix's diagonal) and the Levenberg-Marquardt damping
``delta_w`` (from 1e-3; divided by 10 after a full step, multiplied by 10 after a shortened one),
itself multiplied by 10 until a Cholesky factorisation succeeds (IPOPT's inertia rule). The
matrix is positive definite, so ``dx`` is a descent direction of ``L_eta``; Armijo on ``L_eta``
in ``x``. With a constant objective (the ``...NE`` systems) and ``y = 0`` this is
Levenberg-Marquardt on ``||c||^2``: the Gauss-Newton treatment of over-determined systems. When ``||c||`` stalls above ``tol`` at a
point where the part of ``c`` in range(J) is at most ``tol ||c||_2`` (a stationary point of
``||c||^2``, measured independently of J's scaling), the run ends
``INFEASIBLE`` and reports the least-squares residual ``||c||_2`` (``extras["ls_residual"]``).

**Recovery** from a merit stall (a regularised step that cannot decrease its merit function, or
ten Newton steps in a row shortened below ``alpha = 1e-3``): up to ``max_recoveries``
times, a feasibility restoration (the Levenberg-Marquardt step above on ``||c||^2`` alone, until
``||c||_inf`` falls to ``max(tol, ||c||_inf / 10)``, for at most 20 steps), then the
multipliers are reset to their least-squares values and the penalties and accuracy to their
initial values. A run ends ``FAILED`` only when that budget is spent, ``BREAKDOWN`` only when the
regularised matrix cannot be made positive definite, each with a message naming the cause.

It stops when ``kkt = max(||grad_x L||_inf, ||c||_inf) <= tol`` at the solver's own ``(x, y)``.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from optkit.constrained_problem import EqualityConstrainedProblem
from optkit.problem import Problem
from optkit.result import Status
from optkit.solver import IterativeSolver
from optkit.validation import check_choice, check_int, check_nonnegative, check_positive

from ._alm_point import KKTSolve, KKTSystem, _evaluate, _Point, _State
from ._alm_regularised import RegularisedSteps
from ._lagrangian_hessian import HESSIAN_SOURCES, make_hessian

__all__ = ["AugmentedLagrangianNewton", "KKTSolve", "KKTSystem"]

# Above this many unknowns plus constraints (or with a sparse Jacobian) the sparse path is used.
DENSE_LIMIT = 3000
# Newton steps shortened below SHORT_STEP this many times in a row count as a merit stall.
SHORT_STEP, SHORT_STEPS_STALL = 1e-3, 10
# A dense quasi-Newton or finite-difference Hessian has n^2 entries: refused above this n.
DENSE_HESSIAN_LIMIT = 5000


@dataclass(frozen=True, kw_only=True)
class AugmentedLagrangianNewton(RegularisedSteps, IterativeSolver):
    """Options shared by ``alm-sketch`` and ``alm-newton`` (see the module docstring).

    Options
    -------
    tol : float
        Stop when ``max(||grad_x L||_inf, ||c||_inf) <= tol`` (default 1e-6).
    max_iter : int
        Iterations (default 1000), of any kind: Newton, regularised or restoration steps.
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
        ``sigma_min(J)^2 < singular_tol * max(||J||^2, 1)`` takes the regularised primal step
        instead of a Newton step (dense only; sparse problems take it when the Newton system
        cannot be solved). Default 1e-20: cond(J) > 1e10.
    eta1_max, eta2_min : float
        Limits of the penalty adaptation (reference 1e8, 1e-8).
    max_backtracks : int
        Halvings of the step before the line search fails.
    hessian : {"auto", "exact", "bfgs", "sr1", "fd"}
        The Lagrangian Hessian: the problem's ``lag_hess``, damped BFGS, SR1, or forward
        differences of ``grad_x L`` (see :mod:`~solvers.constrained._lagrangian_hessian`).
        ``"auto"`` (default): exact when the problem has ``lag_hess``, else BFGS; so ``fun``,
        ``grad``, ``cons`` and ``jac`` are all a problem needs.
    max_recoveries : int
        Merit-stall recoveries (restoration, then a multiplier and penalty reset) before the
        run ends ``FAILED`` (default 10; 0 stops at the first stall, as the reference code).
    """

    accepts: ClassVar = (EqualityConstrainedProblem,)
    requires: ClassVar = frozenset({"fun", "grad", "cons", "jac"})
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
    singular_tol: float = 1e-20
    eta1_max: float = 1e8
    eta2_min: float = 1e-8
    max_backtracks: int = 40
    hessian: str = "auto"
    max_recoveries: int = 10

    def validate(self) -> None:
        super().validate()
        for name in ("eta1", "eta2", "delta", "hessian_shift", "eta1_max", "eta2_min"):
            check_positive(name, getattr(self, name))
        check_nonnegative("hessian_floor", self.hessian_floor)
        check_nonnegative("singular_tol", self.singular_tol)
        check_int("max_backtracks", self.max_backtracks, 1)
        check_int("max_recoveries", self.max_recoveries, 0)
        check_choice("hessian", self.hessian, HESSIAN_SOURCES)
        if not self.nu > 1:
            raise ValueError(f"nu must be > 1, got {self.nu!r}")
        if not 0 < self.armijo < 0.5:
            raise ValueError(f"armijo must be in (0, 0.5), got {self.armijo!r}")
        if not isinstance(self.superlinear, bool):
            raise TypeError(f"superlinear must be a bool, got {self.superlinear!r}")

    def check(self, problem: Problem) -> str | None:
        reason = super().check(problem)
        if reason is not None:
            return reason
        if self.hessian == "exact" and "lag_hess" not in problem.capabilities:
            return (
                f"solver {self.name!r} with hessian='exact' requires 'lag_hess', which problem {problem.name!r} "
                "lacks (hessian='auto' uses BFGS then)"
            )
        dense_hessian = self.hessian in ("bfgs", "sr1", "fd") or "lag_hess" not in problem.capabilities
        if dense_hessian and problem.n > DENSE_HESSIAN_LIMIT:
            return (
                f"solver {self.name!r} would keep a dense {problem.n} x {problem.n} Hessian approximation "
                f"(hessian={self.hessian!r}); it does so only up to n = {DENSE_HESSIAN_LIMIT}"
            )
        return None

    @abc.abstractmethod
    def solve_kkt(self, system: KKTSystem, b: np.ndarray, rtol: float, state: _State, z: np.ndarray | None) -> KKTSolve:
        """Solve ``system.matrix z = b`` to ``||K z - b|| <= rtol ||b||``, starting from ``z`` when
        given (a refinement of the previous solve of the same system); stop at ``state.deadline``
        with ``timed_out=True``. ``state.scratch`` is the subclass's space for one outer
        iteration, ``state.memory`` for the whole run."""

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
        return _State(
            point, self.eta1, self.eta2, self.delta, hessian=make_hessian(self.hessian, problem), deadline=deadline
        )

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
            "feasibility": p.feasibility,
            "cons_norm": float(np.linalg.norm(p.c)),
            "merit": p.merit(state.eta1, state.eta2),
            "eta1": state.eta1,
            "eta2": state.eta2,
            "alpha": state.alpha,
            "inner_iter": float(state.inner_iter),
        }

    def postprocess(self, problem: EqualityConstrainedProblem, state: _State, status: Status) -> dict[str, Any]:
        extras: dict[str, Any] = {"y": state.point.y}
        if status is Status.INFEASIBLE:
            extras["ls_residual"] = float(np.linalg.norm(state.point.c))
        return {
            "x": state.point.x,
            "fun": state.point.f,
            "metrics": self.metrics(problem, state),
            "extras": extras,
            "counters": {
                "inner_iter": state.inner_total,
                "hessian_mods": state.hessian_mods,
                "penalty_updates": state.penalty_updates,
                "primal_steps": state.primal_steps,
                "restoration_steps": state.restoration_steps,
                "recoveries": state.recoveries,
            },
            "message": state.message,
        }

    def iterate(self, state: _State) -> np.ndarray:
        return state.point.x

    def step(self, problem: EqualityConstrainedProblem, state: _State) -> _State:
        if state.restoration_target is not None:
            return self._restoration_step(problem, state)
        p = state.point
        dense = not sp.issparse(p.J) and problem.n + problem.m <= DENSE_LIMIT
        Vt = None
        if dense:
            if not np.all(np.isfinite(p.J)):
                state.failure, state.message = Status.NONFINITE, "the constraint Jacobian is not finite"
                return state
            _, sv, Vt = sla.svd(p.J, full_matrices=True, lapack_driver="gesvd")
            if problem.m > problem.n:
                return self._primal_step(problem, state)
            if problem.m and sv[-1] ** 2 < self.singular_tol * max(float(sv[0] ** 2), 1.0):
                return self._primal_step(problem, state)
        H = state.hessian.matrix(problem, p.x, p.y, p.lag_grad)
        if dense and not sp.issparse(H):
            B = self._modified_hessian_dense(H, Vt[problem.m :].T, state)
        else:
            B = self._modified_hessian_sparse(H, state)
        system = KKTSystem(B, p.J)
        b = -np.concatenate([p.lag_grad, p.c])
        b_norm = float(np.linalg.norm(b))
        theta = min(1.0, b_norm) if self.superlinear else 1.0
        state.scratch = {}
        solve = self.solve_kkt(system, b, theta * state.delta, state, None)
        state.inner_iter = solve.inner_iter
        H_lag_grad = state.hessian.product(problem, H, p.x, p.y, p.lag_grad)
        while True:
            if solve.timed_out:
                state.inner_total += state.inner_iter
                state.failure, state.message = Status.TIME_LIMIT, "the time limit ran out while solving a Newton system"
                return state
            if not np.all(np.isfinite(solve.z)):
                state.inner_total += state.inner_iter
                return self._primal_step(problem, state)
            slope = float(self._merit_gradient(p, H_lag_grad, state.eta1, state.eta2) @ solve.z)
            if slope <= -0.5 * state.eta2 * b_norm**2:
                break
            if state.eta1 > self.eta1_max or state.eta2 < self.eta2_min:
                break
            state.eta1 *= self.nu**2
            state.eta2 /= self.nu
            state.delta /= self.nu**4
            state.penalty_updates += 1
            solve = self.solve_kkt(system, b, theta * state.delta, state, solve.z)
            state.inner_iter += solve.inner_iter
        state.inner_total += state.inner_iter
        if slope >= 0:
            # an inaccurate solve of a nearly singular system; the regularised step is one of descent
            return self._primal_step(problem, state)
        eta1, eta2 = state.eta1, state.eta2
        if self._line_search(problem, state, solve.z, slope, lambda q: q.merit(eta1, eta2)) is None:
            return self._primal_step(problem, state)
        state.short_steps = state.short_steps + 1 if state.alpha < SHORT_STEP else 0
        if state.short_steps >= SHORT_STEPS_STALL and state.recoveries < self.max_recoveries:
            state.short_steps = 0
            return self._recover(problem, state, "")
        return state

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _merit_gradient(p: _Point, H_lag_grad: np.ndarray, eta1: float, eta2: float) -> np.ndarray:
        """``grad L_eta`` at ``p``; ``H_lag_grad`` is ``H grad_x L``."""
        return np.concatenate([p.lag_grad + eta1 * (p.J.T @ p.c) + eta2 * H_lag_grad, p.c + eta2 * (p.J @ p.lag_grad)])

    def _modified_hessian_dense(self, H: np.ndarray, Z: np.ndarray, state: _State) -> np.ndarray:
        """``H`` lifted on null(J) (orthonormal basis ``Z``, shape (n, n - m)) as the module says."""
        if Z.shape[1] == 0:
            return H
        lam = float(np.linalg.eigvalsh(Z.T @ H @ Z)[0])
        if lam >= self.hessian_floor:
            return H
        state.hessian_mods += 1
        return H + (self.hessian_shift - lam) * np.eye(H.shape[0])

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

    def _line_search(self, problem, state: _State, z: np.ndarray, slope: float, merit) -> _Point | None:
        """Armijo backtracking from ``alpha = 1`` on ``merit(point)``; moves ``state`` to the accepted
        point (updating a quasi-Newton Hessian) and returns it, or None."""
        p, n = state.point, problem.n
        merit0 = merit(p)
        alpha = 1.0
        for _ in range(self.max_backtracks):
            trial = _evaluate(problem, p.x + alpha * z[:n], p.y + alpha * z[n:])
            value = merit(trial)
            if np.isfinite(value) and value <= merit0 + self.armijo * alpha * slope:
                # grad_x L at both ends with the new multipliers, as BFGS for SQP takes it
                state.hessian.update(trial.x - p.x, trial.lag_grad - p.g - p.J.T @ trial.y)
                state.point, state.alpha = trial, alpha
                return trial
            alpha *= 0.5
        return None
