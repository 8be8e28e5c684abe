"""Solver ``sinkhorn``: log-domain Sinkhorn iterations on :class:`optkit.OTProblem`.

Each iteration is one full sweep of :func:`solvers.ot._dual.sinkhorn_sweep` (exact update of
``f`` given ``g``, then of ``g`` given the new ``f``), in cost-unit potentials, so it stays
finite for any ``reg > 0`` (tested at ``eta = 1 / reg = 1e4`` on costs in [0, 1]). Written
once against the array namespace: numpy, and torch on the CPU or CUDA.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from optkit.backend import backend_name, convert, device_of, get_namespace, is_torch
from optkit.ot_problem import OTProblem
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.result import Status
from optkit.solver import IterativeSolver
from optkit.validation import check_int, check_positive

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

__all__ = ["Sinkhorn"]


class _State:
    """Mutable run state.

    ``(f, g)`` is the current iterate; after every sweep ``g`` is the exact update given
    ``f``, so ``P^T 1 = b`` holds to rounding. ``f_next = update_f(g)`` is computed one half
    sweep ahead: it is the first half of the next sweep, and it gives the row sums of the
    current plan for free, ``P 1 = a * exp((f - f_next) / reg)``.

    ``error`` is the last measured marginal error; ``exact`` says whether it was measured on
    the formed plan (at the start, and when a stop is confirmed) rather than by the
    look-ahead. ``final`` is the plan formed to confirm a stop, reused as the result.
    """

    __slots__ = (
        "C_absmax",
        "error",
        "exact",
        "f",
        "f_next",
        "final",
        "g",
        "log_a",
        "log_b",
        "mass",
        "measured",
        "message",
        "regs",
        "stage",
        "sweeps",
        "watch",
        "work",
    )

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)

    @property
    def reg(self) -> float:
        return self.regs[self.stage]


@register_solver("sinkhorn")
@dataclass(frozen=True, kw_only=True)
class Sinkhorn(IterativeSolver):
    """Log-domain Sinkhorn for entropic OT (``OTProblem``, numpy or torch, any device).

    Options
    -------
    tol : float
        L1 violation of both marginals, ``||P 1 - a||_1 + ||P^T 1 - b||_1``, of the plan at
        the current potentials. After each sweep ``P^T 1 = b`` holds by construction (to
        rounding), and the row sums come for free from the next sweep's first half,
        ``P 1 = a * exp((f - f_next) / reg)``, so checking costs O(n), not an extra pass
        over the (n, m) array. A run ends ``CONVERGED`` only when the error measured on the
        plan it returns is ``<= tol``: when the look-ahead error first passes the test, the
        plan is formed and measured (one ``exp`` pass) and the run goes on if rounding put
        it above ``tol``. A ``tol`` below what the problem's dtype can reach ends
        ``STALLED`` (see below), never ``CONVERGED``.
    max_iter : int
        Sinkhorn sweeps (all ε-scaling stages together).
    time_limit : float or None
        Seconds.
    check_every : int
        Test ``tol`` every ``check_every`` sweeps (default 1). The test itself is O(n + m)
        work, but it reads one number back from the device: on CUDA a larger value (10 or
        so) avoids a synchronisation per sweep. Between checks the trace repeats the last
        measured error.
    eps_scaling : int
        Number of ε-scaling warm-up stages (default 0: none). Stage ``s = 0 .. S-1`` runs
        sweeps at ``reg * eps_scaling_factor ** (S - s)`` until its own marginal error is
        ``<= max(tol, eps_scaling_tol)``; then the potentials (cost units, so they carry
        over unchanged) warm-start the next stage, and finally the target ``reg``. Only
        the target stage can end the run as ``CONVERGED``.
    eps_scaling_factor : float
        Ratio between consecutive regularisations (``> 1``, default 10).
    eps_scaling_tol : float
        Marginal error at which a warm-up stage hands over (default 1e-3).

    Start: ``x0`` is either the problem's ``x0`` layout (an (n + m,) vector holding ``f``
    then ``g``) or a pair ``(f, g)``, e.g. the potentials of an earlier result. Only ``g``
    matters beyond iteration 0 (the first half sweep recomputes ``f``).

    Work per sweep: two max-shifted logsumexp passes over the (n, m) array. Outside the
    sweeps, one ``exp`` pass measures the starting point (its column error is not known
    for free), the look-ahead computes one half sweep that the last iterate does not use,
    and the returned dense plan is formed (inside the timed run, as every solver's result is).

    Result: ``x`` = the dense plan ``P`` (n, m) at the returned potentials;
    ``extras["potentials"] = (f, g)`` (cost units, ``P_ij = exp((f_i + g_j - C_ij) / reg)``),
    ``extras["regs"]``: the regularisations of the stages. Metrics: ``marginal_error`` (in
    the trace: the last check, w.r.t. the current stage's ``reg``; in the result: measured
    on the returned dense plan, both marginals, so it includes the rounding of the
    log-domain plan, ~ machine epsilon x max|f| / reg in relative terms) and ``stage`` when
    ``eps_scaling > 0``. Counters: ``sinkhorn_sweeps`` (full sweeps, i.e. ``nit``).
    A NaN/inf error ends the run with ``NONFINITE``. The iterate handed to a callback
    (``info["x"]``) is the pair ``(f, g)``, not the plan.

    Reachable accuracy: ``STALLED`` ends a run whose error has not reached a new low for
    :data:`~solvers.ot._dual.STALL_CHECKS` checks while below the rounding level of the
    problem's dtype (:func:`~solvers.ot._dual.rounding_level`); the message names the dtype
    and the accuracy reached (in float32 about 1e-6 on costs in [0, 1] at ``reg = 0.02``).
    The plan and the potentials are in the problem's dtype (:attr:`OTProblem.dtype`), also
    when ``x0`` is given in another one.
    """

    accepts: ClassVar[tuple] = (OTProblem,)
    backends: ClassVar[frozenset] = frozenset({"numpy", "torch"})

    tol: float = 1e-9
    max_iter: int = 100_000
    check_every: int = 1
    eps_scaling: int = 0
    eps_scaling_factor: float = 10.0
    eps_scaling_tol: float = 1e-3

    def validate(self) -> None:
        super().validate()
        check_int("check_every", self.check_every, 1)
        check_int("eps_scaling", self.eps_scaling, 0)
        check_positive("eps_scaling_factor", self.eps_scaling_factor)
        if self.eps_scaling_factor <= 1:
            raise ValueError(f"eps_scaling_factor must be > 1, got {self.eps_scaling_factor!r}")
        check_positive("eps_scaling_tol", self.eps_scaling_tol)

    # -------------------------------------------------------------- driver hooks

    def init(self, problem: Problem, x0: Any) -> _State:
        assert isinstance(problem, OTProblem)
        a, b, C = problem.a, problem.b, problem.C
        n, m = problem.shape
        if isinstance(x0, (tuple, list)):
            if len(x0) != 2:
                raise ValueError(f"x0 as potentials must be a pair (f, g), got {len(x0)} items")
            f, g = x0
        else:
            if tuple(x0.shape) != (n + m,):
                raise ValueError(f"x0 must have shape ({n + m},) (f then g) or be a pair (f, g), got {tuple(x0.shape)}")
            f, g = x0[:n], x0[n:]
        # potentials in the problem's backend, device and dtype, whatever x0 came in
        place = (backend_name(C), device_of(C) if is_torch(C) else None, problem.dtype)
        f, g = convert(f, *place), convert(g, *place)
        xp = get_namespace(a, b, C)
        if is_torch(C):
            log_a, log_b = xp.log(a), xp.log(b)
            work = None
        else:
            with np.errstate(divide="ignore"):
                log_a, log_b = np.log(a), np.log(b)
            work = np.empty_like(C)
        S = self.eps_scaling
        regs = [problem.reg * self.eps_scaling_factor ** (S - s) for s in range(S)] + [problem.reg]
        state = _State(
            f=f,
            g=g,
            f_next=None,
            error=math.inf,
            exact=True,
            final=None,
            message="",
            measured=True,
            stage=0,
            regs=regs,
            log_a=log_a,
            log_b=log_b,
            work=work,
            sweeps=0,
            watch=StallWatch(),
            mass=float(xp.sum(a)),
            C_absmax=float(xp.max(xp.abs(C))),
        )
        # the starting point: both marginals measured honestly (one exp pass); a plan that
        # overflows there (possible only with negative costs or a far-off x0) is recorded
        # as the largest float, since Sinkhorn's first half sweep repairs it
        with np.errstate(over="ignore"):
            P1, PT1, _ = marginals(f, g, C, state.reg)
        state.error = marginal_violation(P1, PT1, a, b)
        if state.error == math.inf:
            state.error = sys.float_info.max
        state.f_next = update_f(g, log_a, C, state.reg, work)
        self._maybe_advance(problem, state)
        return state

    def step(self, problem: Problem, state: _State) -> _State:
        assert isinstance(problem, OTProblem)
        C, reg = problem.C, state.reg
        state.f = state.f_next
        state.g = update_g(state.f, state.log_b, C, reg, state.work)
        state.f_next = update_f(state.g, state.log_a, C, reg, state.work)
        state.sweeps += 1
        state.final = None
        if state.sweeps % self.check_every == 0:
            state.error = self._row_error(problem, state)
            state.exact = False
            state.measured = True
            if state.stage == len(state.regs) - 1:
                state.watch.update(state.error)
            self._maybe_advance(problem, state)
        return state

    def _row_error(self, problem: OTProblem, state: _State) -> float:
        """``||P 1 - a||_1`` at ``(f, g)`` from the look-ahead (``P^T 1 = b`` by construction)."""
        xp = get_namespace(state.f)
        a = problem.a
        with np.errstate(invalid="ignore"):  # zero weights: f = f_next = -inf
            rows = a * xp.expm1((state.f - state.f_next) / state.reg)
        return float(xp.sum(xp.abs(xp.where(a > 0, rows, 0.0))))

    def _maybe_advance(self, problem: OTProblem, state: _State) -> None:
        """Hand over from a warm-up stage whose error is small enough to the next one."""
        while state.stage < len(state.regs) - 1 and state.error <= max(self.tol, self.eps_scaling_tol):
            state.stage += 1
            # (f, g) is no longer g-exact at the new reg: restart the look-ahead there;
            # the error is re-measured after the next sweep
            state.f_next = update_f(state.g, state.log_a, problem.C, state.reg, state.work)
            state.measured = False
            state.exact = False
            state.watch = StallWatch()

    def terminate(self, problem: Problem, state: _State) -> Status | None:
        if not math.isfinite(state.error):
            return Status.NONFINITE
        if state.stage < len(state.regs) - 1 or not state.measured:
            return None
        reg = problem.reg
        stalled = state.watch.stalled and state.error <= rounding_level(
            state.f, state.g, state.C_absmax, reg, state.mass
        )
        if state.error > self.tol and not stalled:
            return None
        if not state.exact:  # confirm on the plan that would be returned
            P = plan(state.f, state.g, problem.C, reg)
            rows, cols = P.sum(1), P.sum(0)
            state.error = marginal_violation(rows, cols, problem.a, problem.b)
            state.exact = True
            state.final = (P, rows, cols)
        if state.error <= self.tol:
            return Status.CONVERGED
        if stalled:
            state.message = unreachable_message(state.error, self.tol, problem.dtype)
            return Status.STALLED
        return None

    def metrics(self, problem: Problem, state: _State) -> dict[str, float]:
        out = {"marginal_error": state.error}
        if self.eps_scaling:
            out["stage"] = float(state.stage)
        return out

    def iterate(self, state: _State) -> Any:
        return (state.f, state.g)

    def postprocess(self, problem: Problem, state: _State, status: Status) -> dict[str, Any]:
        assert isinstance(problem, OTProblem)
        if state.final is not None:
            P, rows, cols = state.final
        else:
            P = plan(state.f, state.g, problem.C, problem.reg)
            rows, cols = P.sum(1), P.sum(0)
        metrics: dict[str, float] = {"marginal_error": marginal_violation(rows, cols, problem.a, problem.b)}
        if self.eps_scaling:
            metrics["stage"] = float(state.stage)
        out = {
            "x": P,
            "metrics": metrics,
            "counters": {"sinkhorn_sweeps": state.sweeps},
            "extras": {"potentials": (state.f, state.g), "regs": tuple(state.regs)},
        }
        if status is Status.STALLED:
            out["message"] = state.message
        return out
