"""Solver ``sns``: Sinkhorn-Newton-Sparse (Tang et al., ICLR 2024) on :class:`optkit.OTProblem`.

SNS maximises the concave entropic dual. Potentials are in cost units, as in
:mod:`optkit.ot_problem`::

    D(f, g) = <f, a> + <g, b> - reg * sum_ij P_ij,     P_ij = exp((f_i + g_j - C_ij) / reg)

    grad D = (a - P 1,  b - P^T 1)
    hess D = -(1 / reg) [[diag(P 1), P], [P^T, diag(P^T 1)]]     (null vector (1, -1))

It works in two stages.

1. ``sinkhorn_steps`` log-domain Sinkhorn sweeps (:mod:`solvers.ot._dual`).
2. Newton steps with a **sparsified Hessian**. Each step:

   * **Sparsify.** Keep the largest entries of ``P`` (:func:`select_entries`). By default
     the selection is adaptive: every entry above a power-of-2 threshold, the largest at
     which the mass left out is at most ``drop_tol`` of ``sum P`` and at least
     ``2 max(n, m)`` entries (the paper's density ``2 / n``) are kept.
     With a fixed ``density``, keep the ``ceil(density n m)`` largest. The diagonal
     ``(P 1, P^T 1)`` is always the **exact** row and column sums of the full plan.
   * **Shift.** Multiply the diagonal by ``1 + shift * e``, where ``e`` is the current L1
     marginal error. This is a relative Levenberg-Marquardt damping: it vanishes at the
     solution, but far from it it tames the near-null modes of weakly coupled blocks.
   * **Fix the gauge.** The Hessian has the null vector (1, -1), so the variable with the
     largest mass on the kept side is held at 0.
   * **Solve.** Eliminate the larger side (its block is diagonal) and solve the Schur
     complement system on the smaller side by CG (:func:`optkit.krylov.cg`), optionally
     Jacobi-preconditioned (numpy: compiled loops over the kept entries; torch: sparse CSR).
     Inexact Newton: the CG tolerance is ``min(cg_rtol, sqrt(e))``.
   * **Line search.** Backtrack (Armijo, halving) on ``D``. The first trial moves no
     entry of ``log P`` by more than ``max_log_step``. The change of ``D`` is evaluated
     without cancellation (:func:`_curvature_term`), so the test stays meaningful near
     machine precision.

Work per Newton step: two O(n m) passes to select the kept entries, O(k + n + m) per CG
matvec, and, per line-search trial, one pass that forms the trial plan and its sums. When the step is
accepted, these are reused as the next step's plan and gradient.

A Newton step fails when CG reports ``BREAKDOWN`` or ``NONFINITE``, the direction is not
an ascent direction, no step passes the line search, or the plan has an empty or
non-finite row or column. With ``on_failure="sinkhorn"`` (default) the solver then takes
``fallback_sweeps`` Sinkhorn sweeps from the current iterate and goes on; the event is
counted (``counters["newton_fallbacks"]``) and described in ``extras["fallbacks"]``. With
``on_failure="stop"`` the run ends with ``Status.BREAKDOWN`` and the last good iterate.

The sparsification, the Newton system and the line-search helpers live in
:mod:`solvers.ot._sparse_newton`; its public names are re-exported here.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from optkit.backend import backend_name, convert, device_of, get_namespace, is_torch
from optkit.krylov import cg
from optkit.ot_problem import OTProblem
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.result import Status
from optkit.solver import IterativeSolver
from optkit.validation import check_choice, check_int, check_nonnegative, check_positive

from ._dual import (
    StallWatch,
    marginal_violation,
    marginals,
    plan,
    rounding_level,
    unreachable_message,
    update_f,
    update_g,
)
from ._sparse_newton import (
    START_FACTOR,
    _curvature_term,
    _max_abs_sum,
    _newton_direction,
    _plan_and_sums,
    _trial_plan,
    keep_count,
    select_entries,
    sparsified_hessian,
    top_entries,
)

__all__ = [
    "SNS",
    "dual_gradient",
    "dual_hessian",
    "keep_count",
    "select_entries",
    "sparsified_hessian",
    "top_entries",
]


# ----------------------------------------------------------------------------- dual derivatives
def dual_gradient(f: Any, g: Any, a: Any, b: Any, C: Any, reg: float) -> tuple[Any, Any]:
    """``(a - P 1, b - P^T 1)``: the gradient of the entropic dual at ``(f, g)`` (one exp pass)."""
    P1, PT1, _ = marginals(f, g, C, reg)
    return a - P1, b - PT1


def dual_hessian(f: Any, g: Any, C: Any, reg: float) -> Any:
    """The dense Hessian of the dual, ``-(1/reg) [[diag(P 1), P], [P^T, diag(P^T 1)]]``, shape
    ``(n + m, n + m)``, before any sparsification (for checks on small problems)."""
    P1, PT1, P = marginals(f, g, C, reg)
    xp = get_namespace(P)
    top = xp.concat((_diag(xp, P1), P), axis=1)
    bottom = xp.concat((P.T, _diag(xp, PT1)), axis=1)
    return -xp.concat((top, bottom), axis=0) / reg


def _diag(xp, d):
    return xp.eye(d.shape[0], dtype=d.dtype, device=device_of(d)) * d[None, :]


# ----------------------------------------------------------------------------- solver
class _State:
    """Mutable run state.

    ``prob`` is the problem on the support of ``(a, b)`` (the problem itself when no weight
    is zero; ``support`` holds the masks otherwise). ``(f, g)`` is the current iterate.

    In stage 1 (``newton`` False), after every sweep ``g`` is exact given ``f``
    (``P^T 1 = b``), and ``f_next = update_f(g)`` is the next sweep's first half, which
    gives the row sums for free. In stage 2, ``P``, ``P1`` and ``PT1`` are the plan and its
    sums at ``(f, g)``.

    ``error`` is the marginal error at ``(f, g)``; ``exact`` says whether it was measured on
    the formed plan (always in stage 2) rather than by the stage-1 look-ahead.
    """

    __slots__ = (
        "C_absmax",
        "P",
        "P1",
        "PT1",
        "cg_matvecs",
        "dual",
        "error",
        "events",
        "exact",
        "f",
        "f_next",
        "fallbacks",
        "g",
        "kept",
        "log_a",
        "log_b",
        "ls_evals",
        "mass",
        "newton",
        "newton_steps",
        "nit",
        "prob",
        "stop",
        "stop_message",
        "support",
        "sweeps",
        "watch",
        "work",
    )

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


@register_solver("sns")
@dataclass(frozen=True, kw_only=True)
class SNS(IterativeSolver):
    """Sinkhorn-Newton-Sparse for entropic OT (``OTProblem``; numpy, or torch on any device).

    Options
    -------
    tol : float
        L1 violation of both marginals, ``||P 1 - a||_1 + ||P^T 1 - b||_1``, at the current
        potentials. Default 1e-9: SNS is meant for high accuracy, where its Newton stage
        converges in a handful of steps; float64 runs reach ~1e-14. ``CONVERGED`` only when
        the error of the formed plan is ``<= tol`` (a stage-1 look-ahead error that passes
        is confirmed on the plan first); a ``tol`` below what the problem's dtype can
        reach ends ``STALLED`` (see below).
    max_iter : int
        Iterations: each Sinkhorn sweep of stage 1 and each Newton step counts as one (the
        paper's count, e.g. "20 + 9"). Fallback sweeps inside a Newton iteration do not.
    time_limit : float or None
        Seconds.
    sinkhorn_steps : int
        Log-domain Sinkhorn sweeps before the first Newton step (the paper's ``N1``).
        Default 20, the paper's value for the random and L2 cases; the paper uses 700 for
        L1 costs. ``0`` starts Newton at ``x0``.
    density : float in (0, 1] or None
        ``None`` (default): adaptive sparsification. Keep every entry of ``P`` at or above
        the largest power of 2 at which the mass left out is at most ``drop_tol * sum P``
        and at least ``2 max(n, m)`` entries are kept. A number: keep the
        ``ceil(density n m)`` largest (the paper's rule, e.g. ``2 / n``). The diagonal is exact.
    drop_tol : float in (0, 1)
        Mass fraction the adaptive sparsification may leave out (default 1e-6).
    shift : float >= 0
        Relative diagonal shift: the Newton system uses ``(1 + shift * e)`` times the exact
        diagonal, where ``e`` is the current marginal error (default 0.03; ``0``: none).
    cg_rtol : float in (0, 1)
        Largest relative residual of the CG solve (default 0.1). This is inexact Newton: at
        marginal error ``e`` the CG tolerance is ``min(cg_rtol, sqrt(e))``.
    cg_max_iter : int
        CG iterations per Newton step (default 500). An unconverged CG iterate is still an
        ascent direction, and it is used.
    preconditioner : {"jacobi", "none"}
        Jacobi (the exact diagonal of the Schur complement) or none.
    armijo : float in (0, 0.5)
        Sufficient-increase constant ``c`` of the backtracking line search (default 1e-4):
        accept ``alpha`` when ``D(z + alpha d) >= D(z) + c alpha grad^T d``, halving
        ``alpha`` otherwise.
    max_backtracks : int
        Halvings before the line search gives up (default 30).
    max_log_step : float
        Largest change of any entry of ``log P`` in a line search's first trial (default
        50). The first trial is ``alpha = min(1, max_log_step / max_ij |t_ij|)`` with
        ``t_ij = (df_i + dg_j) / reg``. Far from the solution the Newton step can be huge on
        weakly coupled rows, and most full-step trials would overflow; near it
        ``|t| << 1`` and the cap is inactive.
    on_failure : {"sinkhorn", "stop"}
        What a failed Newton step does (see the module docstring): take ``fallback_sweeps``
        Sinkhorn sweeps and go on (default), or stop with ``Status.BREAKDOWN``.
    fallback_sweeps : int
        Sweeps taken instead of a failed Newton step (default 10).

    Start: ``x0`` is the problem's ``x0`` layout (``f`` then ``g``, shape (n + m,)) or a pair
    ``(f, g)``.

    Result: ``x`` is the dense plan (n, m) at the returned potentials.
    ``extras["potentials"] = (f, g)`` (cost units); ``extras["fallbacks"]`` is a tuple of
    ``(iteration, reason)``; ``extras["kept"]`` is the number of entries of ``P`` kept at
    the last Newton step. Metrics (trace and result): ``marginal_error`` and ``dual`` (the
    dual objective). Counters: ``sinkhorn_sweeps`` (stage 1 and fallbacks),
    ``newton_steps`` (accepted), ``newton_fallbacks``, ``cg_matvecs`` and
    ``line_search_evals`` (trial points).

    Zero weights in ``a`` or ``b`` are allowed. Their potentials are ``-inf``, their rows
    and columns of the plan are exactly zero, and the run works on the support.

    Reachable accuracy: ``STALLED`` ends a run whose error has not reached a new low for
    :data:`~solvers.ot._dual.STALL_CHECKS` iterations while below the rounding level of the
    problem's dtype (:func:`~solvers.ot._dual.rounding_level`); the message names the dtype
    and the accuracy reached. The plan and the potentials are in the problem's dtype
    (:attr:`OTProblem.dtype`), also when ``x0`` is given in another one.
    """

    accepts: ClassVar[tuple] = (OTProblem,)
    backends: ClassVar[frozenset] = frozenset({"numpy", "torch"})

    tol: float = 1e-9
    max_iter: int = 1000
    sinkhorn_steps: int = 20
    density: float | None = None
    drop_tol: float = 1e-6
    shift: float = 0.03
    cg_rtol: float = 0.1
    cg_max_iter: int = 500
    preconditioner: str = "jacobi"
    armijo: float = 1e-4
    max_backtracks: int = 30
    max_log_step: float = 50.0
    on_failure: str = "sinkhorn"
    fallback_sweeps: int = 10

    def validate(self) -> None:
        super().validate()
        check_int("sinkhorn_steps", self.sinkhorn_steps, 0)
        if self.density is not None:
            check_positive("density", self.density)
            if self.density > 1:
                raise ValueError(f"density must be in (0, 1] or None, got {self.density!r}")
        check_positive("drop_tol", self.drop_tol)
        if self.drop_tol >= 1:
            raise ValueError(f"drop_tol must be in (0, 1), got {self.drop_tol!r}")
        check_nonnegative("shift", self.shift)
        check_positive("cg_rtol", self.cg_rtol)
        if self.cg_rtol >= 1:
            raise ValueError(f"cg_rtol must be in (0, 1), got {self.cg_rtol!r}")
        check_int("cg_max_iter", self.cg_max_iter, 1)
        check_choice("preconditioner", self.preconditioner, ("jacobi", "none"))
        check_positive("armijo", self.armijo)
        if self.armijo >= 0.5:
            raise ValueError(f"armijo must be in (0, 0.5), got {self.armijo!r}")
        check_int("max_backtracks", self.max_backtracks, 0)
        check_positive("max_log_step", self.max_log_step)
        check_choice("on_failure", self.on_failure, ("sinkhorn", "stop"))
        check_int("fallback_sweeps", self.fallback_sweeps, 1)

    # -------------------------------------------------------------- driver hooks
    def init(self, problem: Problem, x0: Any) -> _State:
        assert isinstance(problem, OTProblem)
        n, m = problem.shape
        if isinstance(x0, (tuple, list)):
            if len(x0) != 2:
                raise ValueError(f"x0 as potentials must be a pair (f, g), got {len(x0)} items")
            f, g = x0
            if tuple(f.shape) != (n,) or tuple(g.shape) != (m,):
                raise ValueError(f"x0 = (f, g) must have shapes ({n},) and ({m},)")
        else:
            if tuple(x0.shape) != (n + m,):
                raise ValueError(f"x0 must have shape ({n + m},) (f then g) or be a pair (f, g), got {tuple(x0.shape)}")
            f, g = x0[:n], x0[n:]
        # potentials in the problem's backend, device and dtype, whatever x0 came in
        place = (backend_name(problem.C), device_of(problem.C) if is_torch(problem.C) else None, problem.dtype)
        f, g = convert(f, *place), convert(g, *place)
        # zero weights: those rows/columns of the plan are zero and their potentials -inf;
        # the run works on the support and embeds the result at the end
        xp = get_namespace(problem.C)
        support = None
        sub = problem
        if not (bool(xp.all(problem.a > 0)) and bool(xp.all(problem.b > 0))):
            rows, cols = problem.a > 0, problem.b > 0
            support = (rows, cols)
            sub = OTProblem(problem.a[rows], problem.b[cols], problem.C[rows][:, cols], problem.reg)
            f, g = f[rows], g[cols]
        st = _State(
            prob=sub,
            support=support,
            f=f,
            g=g,
            f_next=None,
            P=None,
            P1=None,
            PT1=None,
            error=math.inf,
            exact=True,
            watch=StallWatch(),
            mass=float(xp.sum(sub.a)),
            C_absmax=float(xp.max(xp.abs(sub.C))),
            dual=-math.inf,
            newton=self.sinkhorn_steps == 0,
            log_a=xp.log(sub.a),
            log_b=xp.log(sub.b),
            work=None if is_torch(sub.C) else np.empty_like(sub.C),
            sweeps=0,
            newton_steps=0,
            cg_matvecs=0,
            ls_evals=0,
            fallbacks=0,
            events=[],
            nit=0,
            stop=None,
            stop_message="",
            kept=0,
        )
        # honest measure of the starting point (one exp pass); an overflowing start (negative
        # costs, far-off x0) is recorded as the largest float: sweeps repair it
        self._measure(st)
        if not st.newton:
            st.P = st.P1 = st.PT1 = None
            st.f_next = update_f(st.g, st.log_a, sub.C, sub.reg, st.work)
        return st

    def _measure(self, st: _State) -> None:
        """Plan, sums, error and dual at ``(st.f, st.g)`` (one exp pass)."""
        prob = st.prob
        with np.errstate(over="ignore", invalid="ignore"):
            st.P1, st.PT1, st.P = _plan_and_sums(st.f, st.g, prob.C, prob.reg)
            st.error = marginal_violation(st.P1, st.PT1, prob.a, prob.b)
            mass = float(get_namespace(st.P1).sum(st.P1))
        if st.error == math.inf:
            st.error = sys.float_info.max
        st.exact = True
        st.dual = _dual_value(prob, st.f, st.g, mass)

    def step(self, problem: Problem, state: _State) -> _State:
        state.nit += 1
        if state.newton:
            self._newton_step(state)
        else:
            self._sinkhorn_step(state)
        state.watch.update(state.error)
        return state

    def _sinkhorn_step(self, st: _State) -> None:
        prob = st.prob
        C, reg = prob.C, prob.reg
        st.f = st.f_next
        st.g = update_g(st.f, st.log_b, C, reg, st.work)
        st.sweeps += 1
        if st.sweeps >= self.sinkhorn_steps:
            # end of stage 1: the first Newton step needs the plan, so measure it exactly
            # instead of computing the look-ahead
            st.newton = True
            st.f_next = None
            self._measure(st)
            return
        st.f_next = update_f(st.g, st.log_a, C, reg, st.work)
        xp = get_namespace(st.f)
        # at (f, g): P 1 = a * exp((f - f_next) / reg), and P^T 1 = b by construction
        st.error = float(xp.sum(xp.abs(prob.a * xp.expm1((st.f - st.f_next) / reg))))
        st.exact = False
        st.dual = _dual_value(prob, st.f, st.g, float(xp.sum(prob.b)))

    def _fallback(self, st: _State, reason: str) -> None:
        st.events.append((st.nit, reason))
        st.fallbacks += 1
        if self.on_failure == "stop":
            st.stop, st.stop_message = Status.BREAKDOWN, f"Newton step failed at iteration {st.nit}: {reason}"
            return
        C, reg = st.prob.C, st.prob.reg
        f, g = st.f, st.g
        for _ in range(self.fallback_sweeps):
            f = update_f(g, st.log_a, C, reg, st.work)
            g = update_g(f, st.log_b, C, reg, st.work)
        st.f, st.g = f, g
        st.sweeps += self.fallback_sweeps
        self._measure(st)

    def _newton_step(self, st: _State) -> None:
        prob = st.prob
        a, b, C, reg = prob.a, prob.b, prob.C, prob.reg
        xp = get_namespace(C)
        n, m = prob.shape
        P, P1, PT1 = st.P, st.P1, st.PT1
        mass = float(xp.sum(P1))
        if not (math.isfinite(mass) and float(xp.min(P1)) > 0 and float(xp.min(PT1)) > 0):
            self._fallback(st, "the plan has an empty or non-finite row or column")
            return
        if self.density is None:
            # a shrinking count costs Newton steps on hard problems (MNIST L1: 87, not 31)
            floor = max(START_FACTOR * max(n, m), st.kept)
            rows, cols, vals, _ = select_entries(P, mass, floor, self.drop_tol)
        else:
            rows, cols, vals, _ = select_entries(P, mass, keep_count(n, m, self.density), None)
        st.kept = int(vals.shape[0])
        d = _newton_direction(
            P1,
            PT1,
            a - P1,
            b - PT1,
            reg,
            (rows, cols, vals),
            rtol=min(self.cg_rtol, math.sqrt(st.error)),
            max_iter=self.cg_max_iter,
            jacobi=self.preconditioner == "jacobi",
            shift=self.shift * st.error,
            cg_solve=cg,  # this module's cg, looked up per step (tests substitute it)
        )
        st.cg_matvecs += d.matvecs
        if d.status in (Status.BREAKDOWN, Status.NONFINITE):
            self._fallback(st, f"CG {d.status.name}: {d.message}")
            return
        if not (math.isfinite(d.slope) and d.slope > 0):
            self._fallback(st, f"not an ascent direction (grad^T d = {d.slope:.3e})")
            return
        # backtracking Armijo line search on the dual (maximise). A trial whose plan would
        # overflow is rejected before the exp pass.
        zlimit = math.log(float(np.finfo(_np_dtype(C)).max)) - math.log(n * m) - 1.0
        t_max = _max_abs_sum(d.df, d.dg) / reg
        alpha = min(1.0, self.max_log_step / t_max) if t_max > 0 else 1.0
        for _ in range(self.max_backtracks + 1):
            f_new, g_new = st.f + alpha * d.df, st.g + alpha * d.dg
            P_new = _trial_plan(f_new, g_new, C, reg, zlimit)
            st.ls_evals += 1
            if P_new is not None:
                P1_new, PT1_new = xp.sum(P_new, axis=1), xp.sum(P_new, axis=0)
                new_mass = float(xp.sum(P1_new))
                curv = _curvature_term(P, P1, PT1, mass, new_mass, d.df, d.dg, alpha, reg)
                if reg * curv <= (1.0 - self.armijo) * alpha * d.slope:
                    st.f, st.g, st.P, st.P1, st.PT1 = f_new, g_new, P_new, P1_new, PT1_new
                    st.error = marginal_violation(P1_new, PT1_new, a, b)
                    st.exact = True
                    st.dual = _dual_value(prob, f_new, g_new, new_mass)
                    st.newton_steps += 1
                    return
            alpha *= 0.5
        self._fallback(st, f"the line search found no step after {self.max_backtracks} halvings")

    def terminate(self, problem: Problem, state: _State) -> Status | None:
        if state.stop is not None:
            return state.stop
        if math.isnan(state.error):
            return Status.NONFINITE
        prob = state.prob
        stalled = state.watch.stalled and state.error <= rounding_level(
            state.f, state.g, state.C_absmax, prob.reg, state.mass
        )
        if state.error > self.tol and not stalled:
            return None
        if not state.exact:  # a stage-1 look-ahead error: confirm it on the plan
            P1, PT1, _ = marginals(state.f, state.g, prob.C, prob.reg)
            state.error = marginal_violation(P1, PT1, prob.a, prob.b)
            state.exact = True
        if state.error <= self.tol:
            return Status.CONVERGED
        if stalled:
            state.stop = Status.STALLED
            state.stop_message = unreachable_message(state.error, self.tol, problem.dtype)
            return state.stop
        return None

    def metrics(self, problem: Problem, state: _State) -> dict[str, float]:
        return {"marginal_error": state.error, "dual": state.dual}

    def iterate(self, state: _State) -> Any:
        return (state.f, state.g)

    def postprocess(self, problem: Problem, state: _State, status: Status) -> dict[str, Any]:
        assert isinstance(problem, OTProblem)
        f, g = state.f, state.g
        if state.support is not None:
            xp = get_namespace(problem.C)
            rows, cols = state.support
            f_full = xp.full(problem.shape[0], -math.inf, dtype=problem.C.dtype, device=device_of(problem.C))
            g_full = xp.full(problem.shape[1], -math.inf, dtype=problem.C.dtype, device=device_of(problem.C))
            f_full[rows] = f
            g_full[cols] = g
            f, g = f_full, g_full
        if state.support is None and state.P is not None:
            # the Newton stage keeps the plan at (f, g) and its sums: no new exp pass
            P, P1, PT1 = state.P, state.P1, state.PT1
        else:
            P = plan(f, g, problem.C, problem.reg)
            P1, PT1 = P.sum(1), P.sum(0)
        metrics = {
            "marginal_error": marginal_violation(P1, PT1, problem.a, problem.b),
            "dual": _dual_value(state.prob, state.f, state.g, float(get_namespace(P).sum(P1))),
        }
        out: dict[str, Any] = {
            "x": P,
            "metrics": metrics,
            "counters": {
                "sinkhorn_sweeps": state.sweeps,
                "newton_steps": state.newton_steps,
                "newton_fallbacks": state.fallbacks,
                "cg_matvecs": state.cg_matvecs,
                "line_search_evals": state.ls_evals,
            },
            "extras": {"potentials": (f, g), "fallbacks": tuple(state.events), "kept": state.kept},
        }
        if state.stop is not None and status is state.stop:
            out["message"] = state.stop_message
        return out


def _dual_value(prob: OTProblem, f: Any, g: Any, mass: float) -> float:
    """``<f, a> + <g, b> - reg * mass`` (``mass`` = the plan's total) as a Python float;
    ``-inf`` (an overflowing plan) is clamped to the most negative float, so that the trace
    stays finite."""
    xp = get_namespace(f)
    value = float(xp.sum(f * prob.a) + xp.sum(g * prob.b)) - prob.reg * mass
    return max(value, -sys.float_info.max) if not math.isnan(value) else value


def _np_dtype(C: Any) -> np.dtype:
    if is_torch(C):
        return np.dtype(str(C.dtype).removeprefix("torch."))
    return C.dtype
