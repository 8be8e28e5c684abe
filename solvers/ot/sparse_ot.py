"""Solver ``sparse-ot``: sparsity-constrained optimal transport (Liu, Puigcerver & Blondel, ICLR 2023).

The problem, on an :class:`optkit.OTProblem` whose ``reg`` is the ``gamma`` below (the
problem's entropic reading does not apply to this solver)::

    min_T  <T, C> + sum_j (gamma / 2) ||t_j||^2
    s.t.   T 1 = a,  T^T 1 = b,  T >= 0,  at most k nonzeros in every column t_j   (k = max_nz)

It is solved through its dual, over potentials ``alpha`` (n,) and ``beta`` (m,)::

    max  D(alpha, beta) = <alpha, a> + <beta, b> - sum_j delta(alpha + beta_j - c_j),
    delta(s) = 1 / (2 gamma) * sum_{i in top-k(s)} max(s_i, 0)^2,

whose gradient is the marginal residual of the plan it defines::

    grad_alpha D = a - T 1,   grad_beta D = b - T^T 1,
    T[:, j] = max(s, 0) / gamma on the k largest entries of s = alpha + beta_j - c_j, 0 elsewhere.

So every plan this module forms has at most ``k`` nonzeros per column, and the solver's
convergence measure, the L1 marginal error, is exactly ``||grad D||_1``.

**Dual rather than semi-dual.** (1) The dual's gradient *is* the two marginal residuals,
so ``tol`` (L1 marginal error) is tested on the optimiser's own quantity, not a proxy.
(2) It works for every ``k``: for ``k = 1`` the semi-dual is piecewise *linear* in
``alpha`` (the projection onto the 1-sparse simplex is a vertex, ``max_Omega(s) = max_i s_i
- gamma / 2``), so a quasi-Newton method has no curvature to use and the gradient jumps
between 0/1 assignments, whereas the dual stays piecewise quadratic with curvature
``1 / gamma`` for every ``k``. (3) On each piece the dual is a quadratic whose Hessian is
``-1/gamma`` times the signless Laplacian of the plan's support graph, which gives the
exact Newton polish below. (4) It is the formulation of the POT baseline
(``ot.smooth.smooth_ot_dual``), so the comparison is like for like. The cost: ``n + m``
unknowns instead of ``n``, and the column marginals are not exact by construction.

**When no k-sparse plan is found.** The primal is not convex. The dual's maximum is the
value of its convex relaxation (``(gamma/2)||t||^2`` on k-sparse vectors replaced by its
convex envelope). When the relaxation's solution needs more than ``k`` nonzeros in some
column, the dual maximum is a kink (ties in top-k sets): the k-sparse plan read off any
dual point misses the marginals, and the run ends ``FAILED`` with the error reached and the
number of columns where the cardinality constraint binds, never ``CONVERGED``. This is the
method, not the optimiser (POT returns such plans silently). It happens when ``reg`` is
large relative to the cost gaps, and for ``k = 1`` whenever the marginals cannot be met
with one source per column (generic non-uniform weights). For ``k = 1`` the relaxation is
exact OT plus a constant, ``max D = OT(a, b, C) + (gamma/2) ||b||^2`` for every ``gamma``
(the envelope of ``(gamma/2)||t||^2`` on 1-sparse ``t >= 0`` is ``(gamma/2)(sum t)^2``),
so the dual value still gives the exact OT cost. For ``k >= n`` (clamped to ``n``) the
problem is quadratically regularised OT, whose dual is smooth.

**Ties.** Exact ties at a column's k-th largest score (a constant or integer cost, duplicated
points) make ``D`` nonsmooth at every point where the tied potentials are equal, and
duplicated rows keep them equal at the optimum. There the gradient this module uses averages
the tied choices (each of ``t`` tied entries competing for ``r`` places gets ``r / t`` of its
value): an element of the subdifferential that keeps tied potentials equal, so L-BFGS sees
the problem with the duplicates merged. The returned plan then breaks the ties: for
``k = 1`` (also at the near-ties where L-BFGS stalls) by an assignment of each column to one
of its tied rows that meets the marginals, a maximum flow, found when the column weights are
equal (uniform); otherwise toward the lowest row index, and the run is ``CONVERGED`` only if
that plan meets ``tol``.

The dual's evaluation, the Newton polish and the plan recovery live in
:mod:`solvers.ot._sparse_dual`; its public names are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from optkit.backend import to_numpy
from optkit.blackbox import BlackBoxRun, LibraryVerdict
from optkit.ot_problem import OTProblem
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.result import Result, Status
from optkit.solver import Callback, Solver
from optkit.validation import check_int

from ._sparse_dual import (
    _checked_k,
    _column_potentials,
    _dot,
    _Eval,
    _newton_direction,
    _resolve_ties,
    _SparseDual,
    sparse_dual,
    sparse_plan,
)

__all__ = ["SparseOT", "sparse_dual", "sparse_plan"]


# ---------------------------------------------------------------------------- the solver


class _Handoff(Exception):
    """Leaves L-BFGS-B for a Newton step that already lowered the marginal error."""

    def __init__(self, e: _Eval) -> None:
        super().__init__("newton")
        self.e = e


@register_solver("sparse-ot")
@dataclass(frozen=True, kw_only=True)
class SparseOT(Solver):
    """Sparsity-constrained OT (at most ``max_nz`` nonzeros per column of the plan) by L-BFGS on its dual.

    See the module docstring for the problem, the dual, and why the dual. ``reg`` of the
    :class:`~optkit.OTProblem` is the quadratic weight ``gamma``.

    Options
    -------
    max_nz : int
        ``k >= 1``, the most nonzeros a column of the plan may have (default 2). Values
        ``>= n`` are clamped to ``n``: the problem is then quadratically regularised OT.
    tol : float
        L1 violation of both marginals, ``||T 1 - a||_1 + ||T^T 1 - b||_1``, of the plan at
        the current potentials (default 1e-9). It equals ``||grad D||_1``, so it is checked
        exactly at every iteration, in the L-BFGS-B callback, which ends the run as soon as
        it holds. L-BFGS-B itself gets ``gtol = tol / (n + m)`` (its test is ``max |grad_i|
        <= gtol``, which implies ``||grad||_1 <= tol``, so it never stops before the callback
        does) and ``ftol = 0`` (no stop on a merely small decrease). Below an L1 error of
        about 1e-7 (n = 200) the dual's decrease falls under the rounding of its value and
        L-BFGS-B's line search stalls; the Newton polish (below) and restarts take it the
        rest of the way (to ~1e-14 in practice). ``CONVERGED`` only when the returned plan's
        error, measured again at the end, is ``<= tol`` (see Status).
    max_iter : int
        Iterations: L-BFGS-B iterations plus accepted Newton steps (default 10000).
    time_limit : float or None
        Seconds, checked after every iteration.
    memory : int
        L-BFGS-B correction pairs (SciPy's ``maxcor``; default 10, SciPy's and POT's).
    polish : bool
        Newton polish (default True). Whenever the marginal error has dropped tenfold
        since the last try, and whenever L-BFGS-B stalls, one Newton step is tried on the
        quadratic piece of the dual holding the current point (support of the plan fixed;
        a sparse direct solve of size ``n + m`` with at most ``k m`` off-diagonal pairs). It
        is accepted only if it lowers the marginal error; accepted steps continue while
        they at least halve it, then L-BFGS-B restarts from the new point. Once the
        support is identified one step is exact (to rounding). ``False`` gives plain
        L-BFGS-B with restarts after stalls, as POT.
    sparse_plan : bool
        Return the plan as a ``scipy.sparse.csr_array`` (at most ``k m`` stored entries)
        instead of a dense (n, m) ndarray (default False: dense, as the other OT solvers).

    Status: the rule of :mod:`optkit.blackbox` on the criterion ``marginal_error``
    (:class:`~optkit.blackbox.BlackBoxRun` records every iteration). The run ends
    ``CONVERGED`` at the first iteration whose error is ``<= tol`` (the start included).
    The callback, the time limit and a NaN/inf dual end it with their own status
    (``USER_STOPPED``, ``TIME_LIMIT``, ``NONFINITE``), even at a row that meets ``tol``;
    ``max_iter`` ends it ``MAX_ITER`` (``CONVERGED`` if that iteration meets ``tol``), and
    so does L-BFGS-B's evaluation limit; ``FAILED`` when L-BFGS-B stalls and neither the
    polish nor a restart gets further (L-BFGS-B's ``status`` and message are then
    ``extras["library_status"]`` and ``["library_message"]``). Then the returned plan
    decides: a ``CONVERGED`` run whose plan misses ``tol`` (ties broken, rounding) is
    ``FAILED``, and a stalled one whose plan meets it (the k = 1 assignment) is
    ``CONVERGED``. A ``FAILED`` message gives the diagnosis (a kink, total masses that
    differ by more than ``tol``, unresolved ties). Ctrl-C ends the run with
    ``USER_STOPPED`` and the best iterate.

    Start: ``x0`` is ``None`` (default), an (n + m,) vector (``alpha`` then ``beta``, the
    problem's ``x0`` layout) or a pair ``(alpha, beta)``. ``None`` starts from ``alpha = 0``
    and the ``beta`` maximising the dual given it (every column of the starting plan
    sums to ``b_j``; O(nm) work, timed).

    Result: ``x`` = the plan at the returned potentials (at most ``k`` nonzeros per column).
    Unless converged, the returned potentials are the iterate with the largest dual value
    (the best lower bound; at a kink it is not the iterate with the smallest error).
    With ties (module docstring) the plan breaks them, and ``extras["ties_resolved"]`` says
    whether the k = 1 assignment did (that step is one more iteration in the trace).
    ``extras["potentials"] = (alpha, beta)``; ``extras["max_nz"]`` = the ``k`` used (after
    clamping); ``extras["binding_columns"]`` = columns with more than ``k`` positive scores
    at the returned potentials (where the cardinality constraint is active);
    ``extras["newton_iters"]`` = the iterations that were Newton steps;
    ``extras["lbfgs_runs"]``. ``metrics``: ``marginal_error`` (measured on the returned
    plan), ``dual`` (``D``), ``cost`` (``<T, C>``), ``objective`` (``<T, C> + reg/2
    ||T||_F^2``, also ``fun``) and ``gap`` = ``objective - dual``: for a plan that meets the
    marginals, a certificate (the optimum of this non-convex problem lies in ``[dual,
    objective]``). Trace rows: ``marginal_error`` and ``dual`` at every iteration (computed
    in the callback with the clock paused; normally read from the evaluation L-BFGS-B just
    made). Counters: ``fun`` and ``grad`` (dual evaluations, which give both; trace-only
    evaluations are not counted), ``newton_solves`` (sparse solves, accepted or not).

    Note that :meth:`OTProblem.evaluate` computes its ``dual`` with the *entropic* formula;
    for this solver use ``metrics["dual"]``.

    Computes in float64; the plan and potentials are returned in the problem's dtype.
    numpy only.
    """

    accepts: ClassVar[tuple] = (OTProblem,)
    backends: ClassVar[frozenset] = frozenset({"numpy"})

    max_nz: int = 2
    tol: float = 1e-9
    max_iter: int = 10_000
    memory: int = 10
    polish: bool = True
    sparse_plan: bool = False

    def validate(self) -> None:
        super().validate()
        _checked_k(self.max_nz)
        check_int("memory", self.memory, 1)
        for name in ("polish", "sparse_plan"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")  # noqa: TRY004

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _start(ev: _SparseDual, x0: Any) -> np.ndarray:
        n, m = ev.n, ev.m
        if x0 is None:
            alpha = np.zeros(n)
            return np.concatenate([alpha, _column_potentials(ev, alpha)])
        if isinstance(x0, (tuple, list)):
            if len(x0) != 2:
                raise ValueError(f"x0 as potentials must be a pair (alpha, beta), got {len(x0)} items")
            alpha, beta = (np.asarray(to_numpy(p), dtype=np.float64) for p in x0)
            if alpha.shape != (n,) or beta.shape != (m,):
                raise ValueError(f"x0 = (alpha, beta) must have shapes ({n},) and ({m},)")
            v = np.concatenate([alpha, beta])
        else:
            v = np.array(to_numpy(x0), dtype=np.float64)
            if v.shape != (n + m,):
                raise ValueError(f"x0 must have shape ({n + m},) (alpha then beta) or be a pair (alpha, beta)")
        if not np.all(np.isfinite(v)):
            raise ValueError("x0 contains NaN or inf; expected finite potentials")
        return v

    # ------------------------------------------------------------------ solve
    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        from scipy.optimize import minimize

        self.ensure_compatible(problem)
        assert isinstance(problem, OTProblem)
        n, m = problem.shape
        ev = _SparseDual(to_numpy(problem.a), to_numpy(problem.b), to_numpy(problem.C), problem.reg, self.max_nz)
        track = {
            "best": None,  # the iterate returned: the converged one, else the one with the largest dual
            "last": None,  # the last iterate
            "min_error": math.inf,
            "next_polish": math.inf,
            "newton": 0,
            "newton_iters": [],
            "lbfgs_runs": 0,
        }

        def potentials(v):
            return v[:n].copy(), v[n:].copy()

        def row(e: _Eval) -> dict[str, float]:
            return {"marginal_error": e.error, "dual": e.dual}

        def remember(e: _Eval) -> None:
            track["last"] = e
            track["min_error"] = min(track["min_error"], e.error)
            if track["best"] is None or e.dual > track["best"].dual or e.error <= self.tol:
                track["best"] = e

        def measure(pair) -> dict[str, float]:
            """The row of L-BFGS-B's iterate ``(alpha, beta)``: an uncounted evaluation, which is
            also what the solver goes on from (clock paused by the run)."""
            e = ev.evaluate(np.concatenate(pair), count=False)
            remember(e)
            return row(e)

        run = BlackBoxRun(self, problem, callback, measure=measure, criterion="marginal_error")

        def stop_if_converged() -> None:
            if run.converged(run.metrics):
                run.stop(Status.CONVERGED)

        def note(e: _Eval) -> None:
            """Record the next iteration at ``e`` (evaluated and counted already); ends the run when it must."""
            remember(e)
            run.iteration(potentials(e.v), metrics=row(e))
            stop_if_converged()

        def newton_trial(e: _Eval) -> _Eval | None:
            """One Newton step from ``e`` (clock running); the new point if it lowers the error."""
            track["newton"] += 1
            d = _newton_direction(ev, e)
            if d is None:
                return None
            trial = ev.evaluate(e.v + d)
            return trial if trial.error < e.error else None

        def newton_chain(e: _Eval) -> _Eval:
            """Accept the improving Newton point ``e`` and go on while each step halves the error."""
            while True:
                track["newton_iters"].append(run.nit + 1)
                note(e)
                nxt = newton_trial(e)
                if nxt is None:
                    return e
                if nxt.error > 0.5 * e.error:
                    track["newton_iters"].append(run.nit + 1)
                    note(nxt)
                    return nxt
                e = nxt

        def on_iteration(intermediate_result):
            run.iteration(potentials(intermediate_result.x))  # measured into track["last"]
            stop_if_converged()
            e = track["last"]
            if self.polish and e.error <= track["next_polish"]:
                track["next_polish"] = 0.1 * e.error
                trial = newton_trial(e)
                if trial is not None:
                    raise _Handoff(trial)

        run.recorder.start()  # the start is the solver's work: timed before the run's row 0
        e = ev.evaluate(self._start(ev, x0))
        run.recorder.pause()
        track["next_polish"] = 0.1 * e.error
        remember(e)
        verdict = None
        if run.begin(potentials(e.v), metrics=row(e)) is None:
            with run.library():
                while verdict is None:
                    remaining = self.max_iter - run.nit
                    start_error = track["min_error"]
                    track["lbfgs_runs"] += 1
                    options = {
                        "maxiter": remaining,
                        "maxfun": 20 * remaining + 20,
                        "gtol": self.tol / (n + m),
                        "ftol": 0.0,
                        "maxcor": self.memory,
                    }
                    try:
                        with np.errstate(over="ignore", invalid="ignore"):
                            res = minimize(
                                ev.fun_grad, e.v, jac=True, method="L-BFGS-B", options=options, callback=on_iteration
                            )
                    except _Handoff as handoff:
                        e = newton_chain(handoff.e)
                        continue
                    # L-BFGS-B returned on its own (its last iterate went through the callback, so
                    # the error is above tol): a stall (no decrease, failed line search), or its limits
                    if res.status == 1:
                        verdict = LibraryVerdict(Status.MAX_ITER, int(res.status), f"L-BFGS-B: {res.message}")
                        continue
                    e = track["last"]
                    if self.polish:
                        trial = newton_trial(e)
                        if trial is not None:
                            e = newton_chain(trial)
                            continue
                    if track["min_error"] <= 0.5 * start_error and res.nit > 0:
                        continue  # restart L-BFGS-B (fresh memory) from the last iterate
                    verdict = LibraryVerdict(Status.FAILED, int(res.status), f"L-BFGS-B stalled ({res.message})")
        best = track["best"]
        rows, cols, vals = best.k_sparse()
        exact_ties = best.share is not None
        ties_resolved = False
        stalled = verdict is not None and verdict.outcome is Status.FAILED
        if ev.k == 1 and (exact_ties or stalled):
            with run.library():  # breaking the ties is one more step, measured on the plan it returns
                resolved = _resolve_ties(ev, best)
                if resolved is not None:
                    rows, cols, vals = resolved
                    ties_resolved = True
                    tie_error = ev.marginal_error(rows, cols, vals)
                    run.iteration(potentials(best.v), metrics={"marginal_error": tie_error, "dual": best.dual})

        plan = ev.plan(rows, cols, vals, sparse=self.sparse_plan)
        sums = (np.asarray(plan.sum(axis=1)).ravel(), np.asarray(plan.sum(axis=0)).ravel())
        error = float(np.abs(sums[0] - ev.a).sum() + np.abs(sums[1] - ev.b).sum())
        cost = _dot(vals, ev.CT[cols, rows])
        objective = cost + 0.5 * ev.reg * _dot(vals, vals)
        dtype = problem.C.dtype
        result = run.finish(
            verdict=verdict,
            metrics={
                "marginal_error": error,
                "dual": best.dual,
                "cost": cost,
                "objective": objective,
                "gap": objective - best.dual,
            },
            fun=objective,
            counters={"fun": ev.evals, "grad": ev.evals, "newton_solves": track["newton"]},
            extras={
                "potentials": (best.v[:n].astype(dtype), best.v[n:].astype(dtype)),
                "regularization": "sparsity-constrained",
                "max_nz": ev.k,
                "binding_columns": best.binding,
                "newton_iters": tuple(track["newton_iters"]),
                "lbfgs_runs": track["lbfgs_runs"],
                "ties_resolved": ties_resolved,
            },
        )
        status = result.status
        reason = verdict.message if verdict is not None and verdict.outcome is status else ""
        if status is Status.CONVERGED and error > self.tol:
            # the trace's plan met tol, the returned one does not: the trace measured the
            # tie-averaged plan, whose k-sparse version may miss the marginals, or rounding
            status = Status.FAILED
            reason = ""
            if exact_ties and not ties_resolved:
                reason = "exact ties at the k-th largest score could not be broken"
        message = self._diagnosis(ev, status, reason, error, best.binding)
        return replace(result, x=plan.astype(dtype), status=status, message=message)

    def _diagnosis(self, ev: _SparseDual, status: Status, reason: str, error: float, binding: int) -> str:
        """The result's message: ``reason`` (the library's, or why a converged trace failed),
        completed for ``FAILED`` and a ``MAX_ITER`` run that met a binding cardinality constraint."""
        m = ev.m
        if status is Status.FAILED:
            message = f"{reason or 'stopped'} at marginal error {error:.3g} > tol {self.tol:.3g}; "
            mismatch = abs(math.fsum(ev.a) - math.fsum(ev.b))
            if mismatch > 0.5 * self.tol:
                return message + f"the total masses differ by {mismatch:.3g}, so no plan meets both marginals to tol"
            if binding:
                return message + (
                    f"the cardinality constraint binds in {binding} of {m} columns: with max_nz={ev.k} the dual "
                    "maximum is a kink when no k-sparse plan meets both marginals (infeasible, or a duality "
                    "gap at this reg); a smaller reg or a larger max_nz helps"
                )
            return message + (
                "the cardinality constraint binds nowhere (the dual is smooth here): the dual's decrease "
                "fell below its rounding; polish=True or a larger tol helps"
            )
        if status is Status.MAX_ITER and binding:
            return (
                f"{reason or status.message} at marginal error {error:.3g}; the cardinality constraint binds in "
                f"{binding} of {m} columns, so the dual maximum may be a kink where no {ev.k}-sparse plan meets "
                "the marginals (L-BFGS crawls along it)"
            )
        return reason
