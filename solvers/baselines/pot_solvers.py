"""Baselines wrapping POT (Python Optimal Transport, ``import ot``) on :class:`optkit.OTProblem`.

``pot-sinkhorn-log`` (``ot.sinkhorn(..., method="sinkhorn_log")``), ``pot-sinkhorn``
(``method="sinkhorn"``, Sinkhorn-Knopp on the scalings) and ``pot-emd`` (exact OT, the
network simplex ``ot.emd``). POT runs unchanged; it is given the problem's arrays as they
are, so a torch problem runs POT's torch backend (on the problem's device).

Stopping. POT's own test (``stopThr``) is the **L2** norm of the violation of the
**column** marginal only, computed every 10 iterations, so it is not optkit's measure. To
compare solvers fairly the Sinkhorn wrappers stop on optkit's measure: POT runs in chunks of
``check_every`` iterations, each chunk warm-started (``warmstart=(log u, log v)``) from the
scalings the previous chunk returned, which continues POT's iteration exactly; between
chunks the wrapper measures the L1 violation of both marginals of the plan POT returned,
with the clock paused, and enforces ``time_limit``. A run that hits the time limit (or
``max_iter``) reports the marginal error it reached, in the result's metrics and trace, so
a benchmark can give a lower bound on a speed-up.

The chunk loop runs through :class:`optkit.blackbox.BlackBoxRun` (one ``iteration`` per
chunk inside ``run.library()``), not as an :class:`optkit.solver.IterativeSolver` with one
chunk per step: the driver numbers its rows and counts ``max_iter`` in steps, whereas here
both are Sinkhorn iterations (a chunk that POT ends early is shorter), which
``run.iteration(P, nit=...)`` records as they are; and the run gives the same status rule,
limits and Ctrl-C handling as the other wrappers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from optkit.backend import get_namespace, optional_import
from optkit.blackbox import BlackBoxRun, LibraryVerdict
from optkit.ot_problem import OTProblem, marginal_error
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.result import Result, Status
from optkit.solver import Callback, Solver
from optkit.validation import check_choice, check_int

__all__ = ["PotEMD", "PotSinkhorn", "PotSinkhornLog"]

CRITERIA = ("optkit", "pot")


def _start_potentials(problem: OTProblem, x0: Any) -> tuple[Any, Any]:
    """``(f, g)`` from ``x0``: the (n + m,) layout of ``problem.x0`` or a pair ``(f, g)``."""
    n, m = problem.shape
    x0 = problem.x0 if x0 is None else x0
    if isinstance(x0, (tuple, list)):
        if len(x0) != 2:
            raise ValueError(f"x0 as potentials must be a pair (f, g), got {len(x0)} items")
        return x0[0], x0[1]
    if tuple(x0.shape) != (n + m,):
        raise ValueError(f"x0 must have shape ({n + m},) (f then g) or be a pair (f, g), got {tuple(x0.shape)}")
    return x0[:n], x0[n:]


@dataclass(frozen=True, kw_only=True)
class _PotSinkhornBase(Solver):
    """The chunked driver shared by ``pot-sinkhorn-log`` and ``pot-sinkhorn``."""

    accepts: ClassVar[tuple] = (OTProblem,)
    backends: ClassVar[frozenset] = frozenset({"numpy", "torch"})
    method: ClassVar[str] = ""

    tol: float = 1e-9
    max_iter: int = 100_000
    check_every: int = 10
    criterion: str = "optkit"

    def validate(self) -> None:
        super().validate()
        check_int("check_every", self.check_every, 1)
        check_choice("criterion", self.criterion, CRITERIA)

    def _scalings(self, log: dict, reg: float) -> tuple[Any, Any]:
        """``(log u, log v)`` from POT's log dict."""
        raise NotImplementedError

    def _pot_stopped(self, done: int, chunk: int, log: dict) -> bool:
        """Whether POT stopped on its own test (``criterion="pot"``): inside the chunk, or at
        its last check, on the chunk's last iteration."""
        return done < chunk or bool(log["err"] and float(log["err"][-1]) < self.tol)

    def _chunk(self, ot: Any, problem: OTProblem, chunk: int, stop_thr: float, scalings: tuple) -> tuple:
        """``chunk`` POT iterations warm-started from ``scalings = (log u, log v)``.

        Returns POT's plan, its log, the iterations done, and POT's numerical-error warning
        (``None`` without one).
        """
        with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
            warnings.simplefilter("always")
            P, log = ot.sinkhorn(
                problem.a,
                problem.b,
                problem.C,
                problem.reg,
                method=self.method,
                numItermax=chunk,
                stopThr=stop_thr,
                warmstart=scalings,
                log=True,
                warn=False,
            )
        numerical = next((str(w.message).strip() for w in caught if "numerical error" in str(w.message)), None)
        # POT's log["niter"] is the index of its last iteration; after numerical errors it has
        # reverted that iteration (and returns the last finite scalings)
        done = int(log["niter"]) + (0 if numerical else 1)
        return P, log, done, numerical

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        ot = optional_import("ot", f"solver {self.name!r}")
        self.ensure_compatible(problem)
        assert isinstance(problem, OTProblem)
        a, b, C, reg = problem.a, problem.b, problem.C, problem.reg
        xp = get_namespace(a, b, C)
        f0, g0 = _start_potentials(problem, x0)
        stop_thr = self.tol if self.criterion == "pot" else 0.0
        run = BlackBoxRun(
            self,
            problem,
            callback,
            measure=lambda P: {"marginal_error": marginal_error(P, a, b)},
            criterion="marginal_error" if self.criterion == "optkit" else None,
        )
        with np.errstate(over="ignore"):
            P = xp.exp((f0[:, None] + g0[None, :] - C) / reg)
        scalings = chunk_scalings = (f0 / reg, g0 / reg)  # POT's (log u, log v): of the last recorded plan, of P
        verdict = None
        if run.begin(P) is None:
            with run.library():
                # one warm-started chunk per pass; the run ends it at max_iter, the time limit or
                # the callback (run.iteration raises), or on optkit's measure (the loop test)
                while verdict is None and not run.converged(run.metrics):
                    chunk = min(self.check_every, self.max_iter - run.nit)
                    P, log, done, numerical = self._chunk(ot, problem, chunk, stop_thr, scalings)
                    chunk_scalings = self._scalings(log, reg)
                    run.iteration(P, nit=run.nit + done)
                    scalings = chunk_scalings
                    if numerical:
                        message = f"POT: {numerical} of a chunk (reg too small for method {self.method!r}?)"
                        verdict = LibraryVerdict(Status.NONFINITE, None, message)
                    elif self.criterion == "pot" and self._pot_stopped(done, chunk, log):
                        verdict = LibraryVerdict(Status.CONVERGED, None, "POT: stopped on its own test (stopThr)")
        if run.x is P:  # the run ended at the plan it recorded last (else at the one before)
            scalings = chunk_scalings
        log_u, log_v = scalings
        return run.finish(
            verdict=verdict,
            counters={"sinkhorn_sweeps": run.nit},
            extras={"potentials": (reg * log_u, reg * log_v)},
        )


@register_solver("pot-sinkhorn-log")
@dataclass(frozen=True, kw_only=True)
class PotSinkhornLog(_PotSinkhornBase):
    """POT's log-domain Sinkhorn, ``ot.sinkhorn(a, b, C, reg, method="sinkhorn_log")``.

    Options
    -------
    tol : float
        With ``criterion="optkit"`` (default): the L1 violation of both marginals,
        ``||P 1 - a||_1 + ||P^T 1 - b||_1``, measured by the wrapper between chunks (POT is
        called with ``stopThr=0`` so that it never stops on its own test). With
        ``criterion="pot"``: POT's ``stopThr``, i.e. the L2 norm of the column-marginal
        violation that POT checks every 10 iterations; the run is ``CONVERGED`` when POT
        stops on it. Either way the reported ``marginal_error`` is optkit's L1 measure.
    max_iter : int
        Sinkhorn iterations in all (POT's ``numItermax`` summed over the chunks).
    time_limit : float or None
        Seconds, enforced between chunks (a chunk is not interrupted).
    check_every : int
        Iterations per chunk (default 10: POT's own check then falls on the same
        iterations as in one uninterrupted call).

    Status (the rule of :mod:`optkit.blackbox`): with ``criterion="optkit"``,
    ``CONVERGED`` when the returned plan's ``marginal_error`` is ``<= tol`` (also at the
    start, with no iteration, and at ``max_iter``); with ``criterion="pot"``,
    ``CONVERGED`` when POT stops on its own test. ``MAX_ITER`` at ``max_iter``,
    ``TIME_LIMIT`` and ``USER_STOPPED`` (the callback, or Ctrl-C, which returns the plan of
    the last finished chunk) end the run at the last recorded chunk; ``NONFINITE`` when POT
    reports numerical errors (with POT's warning as the message, unless the plan it falls
    back to meets ``tol``) or the measure is not finite.

    The start is ``x0`` (the problem's zero dual point unless given, or a pair ``(f, g)``),
    passed as POT's ``warmstart = (f / reg, g / reg)``, which for zeros is POT's default.
    Result: ``x`` the plan POT returned; ``extras["potentials"] = (reg * log_u,
    reg * log_v)``; metrics ``marginal_error``; counters ``sinkhorn_sweeps`` (POT
    iterations, each one full sweep). Per chunk POT also forms the plan once (an ``exp``
    pass, timed); the L1 check on it is not timed.
    """

    method: ClassVar[str] = "sinkhorn_log"

    def _scalings(self, log: dict, reg: float) -> tuple[Any, Any]:
        return log["log_u"], log["log_v"]


@register_solver("pot-sinkhorn")
@dataclass(frozen=True, kw_only=True)
class PotSinkhorn(_PotSinkhornBase):
    """POT's Sinkhorn-Knopp, ``ot.sinkhorn(a, b, C, reg, method="sinkhorn")``.

    Options as :class:`PotSinkhornLog`. It iterates on the scalings ``u = exp(f / reg)``,
    ``v = exp(g / reg)`` with the kernel ``K = exp(-C / reg)``, which underflows once
    ``reg`` is below about ``max(C) / 700``: POT then warns "numerical errors at iteration
    k", reverts to the last finite scalings and stops; the run ends ``NONFINITE`` with that
    message (unless that plan meets ``tol``), returning the plan of the last finite
    scalings. Potentials ``reg * log(u)`` (``-inf`` where ``u`` underflowed to 0).
    """

    method: ClassVar[str] = "sinkhorn"

    def _scalings(self, log: dict, reg: float) -> tuple[Any, Any]:
        xp = get_namespace(log["u"], log["v"])
        with np.errstate(divide="ignore"):
            return xp.log(log["u"]), xp.log(log["v"])


# POT's result_code: its reading and POT's name for it
_EMD_OUTCOME = {
    0: (Status.INFEASIBLE, "INFEASIBLE"),
    1: (Status.CONVERGED, "OPTIMAL"),
    2: (Status.FAILED, "UNBOUNDED"),
    3: (Status.MAX_ITER, "MAX_ITER_REACHED"),
}


@register_solver("pot-emd")
@dataclass(frozen=True, kw_only=True)
class PotEMD(Solver):
    """Exact (unregularised) OT by POT's network simplex, ``ot.emd(a, b, C, numItermax, log=True)``.

    The entropic ``reg`` of the problem is ignored: this is the ``reg -> 0`` reference.

    Options
    -------
    tol : float
        Not used by the network simplex (it is exact when it ends ``OPTIMAL``); kept for
        the common interface.
    max_iter : int
        POT's ``numItermax`` (network-simplex pivots), default ``10**7`` (POT's default of
        1e5 is hit in practice from n ~ 1000). ``0`` returns the start without calling POT
        (which would read ``numItermax=0`` as no limit).
    time_limit : float or None
        Cannot stop the C++ solver: it is checked after the call, and a run that took
        longer ends ``TIME_LIMIT`` (with POT's plan).

    The run (:class:`optkit.blackbox.BlackBoxRun`, no criterion: the solver is exact) has
    two trace rows: 0, the start, which is the independent coupling ``a b^T / sum(b)`` (a
    feasible plan: no pivot made), and 1, POT's plan. Status from POT's ``result_code``
    (``extras["library_status"]``, with POT's warning as ``["library_message"]``):
    optimal -> ``CONVERGED``, ``numItermax`` reached -> ``MAX_ITER``, infeasible ->
    ``INFEASIBLE``, unbounded -> ``FAILED``; ``NONFINITE`` when the plan is not finite. The
    callback can stop the run at either row (``USER_STOPPED``), and Ctrl-C during the
    simplex returns the start with ``USER_STOPPED``. Result: ``x`` the exact plan (dense,
    on the problem's backend), ``fun`` its cost ``<P, C>`` (POT's ``log["cost"]``),
    ``extras["potentials"] = (log["u"], log["v"])`` (the LP dual, centred by POT), metrics
    ``marginal_error``. POT runs the simplex on the CPU in float64 and converts back.
    """

    accepts: ClassVar[tuple] = (OTProblem,)
    backends: ClassVar[frozenset] = frozenset({"numpy", "torch"})

    max_iter: int = 10**7

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        ot = optional_import("ot", f"solver {self.name!r}")
        self.ensure_compatible(problem)
        assert isinstance(problem, OTProblem)
        a, b, C = problem.a, problem.b, problem.C
        xp = get_namespace(a, b, C)
        run = BlackBoxRun(self, problem, callback, measure=lambda P: {"marginal_error": marginal_error(P, a, b)})
        verdict = fun = potentials = None
        if run.begin(a[:, None] * b[None, :] / xp.sum(b)) is None:
            with run.library():
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    P, log = ot.emd(a, b, C, numItermax=self.max_iter, log=True)
                code = int(log["result_code"])
                outcome, name = _EMD_OUTCOME.get(code, (Status.FAILED, f"result_code {code}"))
                message = log.get("warning") or "; ".join(str(w.message) for w in caught) or f"POT ot.emd: {name}"
                verdict = LibraryVerdict(outcome, code, message)
                fun, potentials = float(log["cost"]), (log["u"], log["v"])
                run.iteration(P, nit=1, check_max_iter=False)  # max_iter counts POT's pivots
        return run.finish(verdict=verdict, fun=fun, extras={} if potentials is None else {"potentials": potentials})
