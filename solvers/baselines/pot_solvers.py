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
with the clock paused (:class:`optkit.solver.Recorder`), and enforces ``time_limit``. A run
that hits the time limit (or ``max_iter``) reports the marginal error it reached, in the
result's metrics and trace, so a benchmark can give a lower bound on a speed-up.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from optkit.backend import get_namespace, optional_import
from optkit.ot_problem import OTProblem, marginal_error
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.result import Result, Status
from optkit.solver import Callback, Recorder, Solver
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

    def _converged(self, error: float, stopped_early: bool, log: dict) -> bool:
        """optkit's criterion: the L1 error; POT's: POT stopped on its own test inside the chunk
        (or its last check, at the chunk's first iteration, passed)."""
        if self.criterion == "optkit":
            return error <= self.tol
        return stopped_early or bool(log["err"] and float(log["err"][-1]) < self.tol)

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        ot = optional_import("ot", f"solver {self.name!r}")
        self.ensure_compatible(problem)
        assert isinstance(problem, OTProblem)
        a, b, C, reg = problem.a, problem.b, problem.C, problem.reg
        xp = get_namespace(a, b, C)
        f0, g0 = _start_potentials(problem, x0)
        scalings = (f0 / reg, g0 / reg)  # POT's (log u, log v)
        recorder = Recorder(time_limit=self.time_limit, callback=callback, device=problem.device)
        stop_thr = self.tol if self.criterion == "pot" else 0.0

        recorder.start()
        recorder.pause()
        with np.errstate(over="ignore"):
            P = xp.exp((f0[:, None] + g0[None, :] - C) / reg)
        error = marginal_error(P, a, b)
        status = recorder.record(0, {"marginal_error": error}, P)
        if status is None and error <= self.tol:
            status = Status.CONVERGED
        nit, message = 0, ""
        while status is None:
            if nit >= self.max_iter:
                status = Status.MAX_ITER
                break
            chunk = min(self.check_every, self.max_iter - nit)
            with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
                warnings.simplefilter("always")
                P_new, log = ot.sinkhorn(
                    a,
                    b,
                    C,
                    reg,
                    method=self.method,
                    numItermax=chunk,
                    stopThr=stop_thr,
                    warmstart=scalings,
                    log=True,
                    warn=False,
                )
            numerical = [str(w.message) for w in caught if "numerical error" in str(w.message)]
            recorder.pause()
            # POT's log["niter"] is the index of its last iteration; after numerical errors
            # it has reverted that iteration (and returns the last finite scalings)
            done = int(log["niter"]) + (0 if numerical else 1)
            nit += done
            P, scalings = P_new, self._scalings(log, reg)
            error = marginal_error(P, a, b)
            stop = recorder.record(nit, {"marginal_error": error}, P)
            if numerical:
                status = Status.NONFINITE
                message = f"POT: {numerical[0].strip()} of a chunk (reg too small for method {self.method!r}?)"
            elif not math.isfinite(error):
                status = Status.NONFINITE
            elif self._converged(error, done < chunk, log):
                status = Status.CONVERGED
            else:
                status = stop
        recorder.pause()
        log_u, log_v = scalings
        f, g = reg * log_u, reg * log_v
        return Result(
            x=P,
            status=status,
            message=message or status.message,
            nit=nit,
            counters={"sinkhorn_sweeps": nit},
            time_s=recorder.elapsed,
            metrics={"marginal_error": error},
            trace=recorder.rows,
            solver=self.name,
            problem=problem.name,
            extras={"potentials": (f, g)},
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
    message, returning the plan of the last finite scalings. Potentials ``reg * log(u)``
    (``-inf`` where ``u`` underflowed to 0).
    """

    method: ClassVar[str] = "sinkhorn"

    def _scalings(self, log: dict, reg: float) -> tuple[Any, Any]:
        xp = get_namespace(log["u"], log["v"])
        with np.errstate(divide="ignore"):
            return xp.log(log["u"]), xp.log(log["v"])


_EMD_STATUS = {1: Status.CONVERGED, 0: Status.INFEASIBLE, 2: Status.FAILED, 3: Status.MAX_ITER}


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
        1e5 is hit in practice from n ~ 1000).
    time_limit : float or None
        Cannot stop the C++ solver: it is checked after the call only, and a run that took
        longer is still returned with its own status.

    Status from POT's ``result_code``: optimal -> ``CONVERGED``, ``numItermax`` reached ->
    ``MAX_ITER``, infeasible -> ``INFEASIBLE``, unbounded -> ``FAILED``. Result: ``x`` the
    exact plan (dense, on the problem's backend), ``fun`` its cost ``<P, C>`` (POT's
    ``log["cost"]``), ``extras["potentials"] = (log["u"], log["v"])`` (the LP dual,
    centred by POT), metrics ``marginal_error``. POT runs the simplex on the CPU in float64
    and converts back.
    """

    accepts: ClassVar[tuple] = (OTProblem,)
    backends: ClassVar[frozenset] = frozenset({"numpy", "torch"})

    max_iter: int = 10**7

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        ot = optional_import("ot", f"solver {self.name!r}")
        self.ensure_compatible(problem)
        assert isinstance(problem, OTProblem)
        a, b, C = problem.a, problem.b, problem.C
        recorder = Recorder(time_limit=self.time_limit, callback=callback, device=problem.device)
        recorder.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            P, log = ot.emd(a, b, C, numItermax=self.max_iter, log=True)
        recorder.pause()
        code = int(log["result_code"])
        status = _EMD_STATUS.get(code, Status.FAILED)
        message = log.get("warning") or "; ".join(str(w.message) for w in caught) or status.message
        error = marginal_error(P, a, b)
        stop = recorder.record(1, {"marginal_error": error}, P)
        if status is Status.CONVERGED and stop is Status.NONFINITE:
            status = stop
        return Result(
            x=P,
            fun=float(log["cost"]),
            status=status,
            message=message,
            nit=1,
            counters={},
            time_s=recorder.elapsed,
            metrics={"marginal_error": error},
            trace=recorder.rows,
            solver=self.name,
            problem=problem.name,
            extras={"potentials": (log["u"], log["v"]), "result_code": code},
        )
