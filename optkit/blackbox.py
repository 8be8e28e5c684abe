"""One run of a wrapped library solver: the clock, the trace, the limits, one status rule, the Result.

A baseline that hands the whole solve to a library (SciPy, PyAMG, POT, IPOPT) cannot be
written as ``init / step``; it gets the same trace, limits and statuses as the iterative
solvers by following one sequence::

    run = BlackBoxRun(self, problem, callback, measure=measures, criterion="grad_inf")
    if run.begin(x0) is None:                  # row 0; may already end the run
        with run.library():                    # StopSolver and Ctrl-C end this block
            out = library_solve(x0, callback=lambda xk: run.iteration(xk))
        verdict = LibraryVerdict(...)          # what the library said, when it returned
    return run.finish(x=out.x, verdict=verdict)

A wrapper that calls the library several times, each time afresh from ``x0`` (a ladder of
the library's own tolerances, :mod:`solvers.baselines._target_ladder`), runs each call in
:meth:`BlackBoxRun.attempt` instead of :meth:`BlackBoxRun.library`: every attempt has its own
clock and trace, so the result's ``time_s`` and trace are those of the attempt it returns
alone, while the time limit counts all of them.

``measure(x)`` gives the trace row of an iterate; it runs with the clock paused and inside
:meth:`~optkit.problem.Problem.uncounted`, so measuring is neither timed nor counted.
:meth:`BlackBoxRun.iteration` records a row and raises :class:`~optkit.solver.StopSolver`
out of the library's callback when the time limit, the user's callback, a non-finite
measure or ``max_iter`` ends the run; :meth:`BlackBoxRun.library` catches it, and turns
Ctrl-C into ``USER_STOPPED`` with the last recorded iterate.

**The status rule** (:meth:`BlackBoxRun.finish`), the same for every wrapper:

1. a status the run itself decided (callback, time limit, ``max_iter``, non-finite
   measure, Ctrl-C) stands, except that a recorded point meeting ``tol`` on the criterion is
   ``CONVERGED`` (as the driver's ``terminate`` wins over a stop at the same row);
2. a non-finite final measure is ``NONFINITE``;
3. with a ``criterion`` (the name of a measure compared with the solver's ``tol``):
   ``CONVERGED`` when it holds at the returned point, whatever the library said;
4. otherwise the library's verdict: its success is ``CONVERGED`` when there is no
   criterion (the library tests optkit's measure itself) and ``STALLED`` when the
   criterion fails (the library stopped on a test of its own, e.g. L-BFGS-B's relative
   reduction of f), its iteration limit ``MAX_ITER``, and its failures whatever status the
   wrapper mapped them to (``FAILED``, ``BREAKDOWN``, ``INFEASIBLE`` ...).

The library's own code and message are kept in ``Result.extras["library_status"]`` and
``["library_message"]`` (what :meth:`~optkit.result.Result.to_scipy` reports as ``status``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .problem import Problem
from .result import Result, Status
from .solver import Callback, Recorder, Solver, StopSolver

__all__ = ["Attempt", "BlackBoxRun", "LibraryVerdict", "krylov_verdict"]

Measure = Callable[[Any], Mapping[str, float]]


@dataclass(frozen=True)
class LibraryVerdict:
    """What a library said when it returned.

    Attributes
    ----------
    outcome : Status
        The wrapper's reading of it: ``CONVERGED`` for the library's success,
        ``MAX_ITER`` for its iteration limit, or a failure status (``FAILED``,
        ``BREAKDOWN``, ``INFEASIBLE`` ...).
    code : int or str or None
        The library's own status code (SciPy's ``status``, IPOPT's return status ...).
    message : str
        The library's own message.
    """

    outcome: Status
    code: Any = None
    message: str = ""


def krylov_verdict(info: int, name: str) -> LibraryVerdict:
    """The verdict of SciPy-style Krylov ``info`` (SciPy's ``cg``, PyAMG's ``solve``).

    ``0`` converged, ``> 0`` the iteration limit, ``< 0`` a breakdown (illegal input or a
    numerical breakdown, in both libraries' documentation).
    """
    if info == 0:
        return LibraryVerdict(Status.CONVERGED, info, f"{name}: converged")
    if info > 0:
        return LibraryVerdict(Status.MAX_ITER, info, f"{name}: reached its iteration limit")
    return LibraryVerdict(Status.BREAKDOWN, info, f"{name}: breakdown (info = {info})")


@dataclass(frozen=True)
class Attempt:
    """One finished :meth:`BlackBoxRun.attempt`: its clock and trace, and its last recorded iterate.

    Attributes
    ----------
    recorder : Recorder
        Its clock (``recorder.elapsed``: the attempt's seconds) and rows (row 0 at the start).
    x : Any
        Its last recorded iterate.
    nit : int
        That iterate's iteration number.
    metrics : dict
        That iterate's measures.
    """

    recorder: Recorder
    x: Any
    nit: int
    metrics: dict

    @property
    def time_s(self) -> float:
        """The attempt's seconds of work."""
        return self.recorder.elapsed


def _nonfinite(metrics: Mapping[str, Any]) -> bool:
    return any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values())


class BlackBoxRun:
    """The clock, trace, limits and result of one run of a wrapped library solver.

    Parameters
    ----------
    solver : Solver
        The wrapper: its ``name``, ``tol``, ``max_iter`` and ``time_limit`` are used.
    problem : Problem
    callback : callable or None
        The user's callback (see :meth:`optkit.solver.Solver.solve`).
    measure : callable ``x -> dict[str, float]``
        The trace row of an iterate (clock paused, evaluations uncounted).
    criterion : str or None
        The measure whose value ``<= tol`` means converged (see the status rule in the
        module docstring); ``None`` when the library tests optkit's measure itself.

    Attributes
    ----------
    x : Any
        The last recorded iterate (the start before the first iteration).
    nit : int
        Its iteration number.
    status : Status or None
        The status the run itself decided, or ``None`` while it goes on.
    recorder : Recorder
        The clock and trace (of the current attempt, when :meth:`attempt` is used).
    attempts : list of Attempt
        The finished attempts that recorded an iterate, in order.
    spent_s : float
        Seconds of every attempt so far, the dropped ones included.
    """

    def __init__(
        self,
        solver: Solver,
        problem: Problem,
        callback: Callback | None,
        *,
        measure: Measure,
        criterion: str | None = None,
    ) -> None:
        self.solver = solver
        self.problem = problem
        self.measure = measure
        self.criterion = criterion
        self.recorder = Recorder(time_limit=solver.time_limit, callback=callback, device=problem.device)
        self.x: Any = None
        self.nit = 0
        self.metrics: dict[str, float] = {}
        self.status: Status | None = None
        self.attempts: list[Attempt] = []
        self.spent_s = 0.0
        self._start: tuple[Any, int, dict[str, float]] = (None, 0, {})
        self._counters_before = dict(problem.counters)

    # ------------------------------------------------------------------ measuring

    def _measured(self, x: Any) -> dict[str, float]:
        with self.problem.uncounted():
            return dict(self.measure(x))

    def converged(self, metrics: Mapping[str, float]) -> bool:
        """Whether ``metrics`` meet the solver's ``tol`` on the criterion (False without one)."""
        if self.criterion is None:
            return False
        value = metrics.get(self.criterion)
        # numbers.Real admits numpy scalars: a float32 problem's measures are np.float32
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and bool(value <= self.solver.tol)

    def _record(self, x: Any, nit: int, metrics: Mapping[str, float] | None) -> Status | None:
        self.recorder.pause()
        self.x, self.nit = x, nit
        self.metrics = self._measured(x) if metrics is None else dict(metrics)
        return self.recorder.record(nit, self.metrics, x)

    # ------------------------------------------------------------------ the sequence

    def begin(self, x0: Any, metrics: Mapping[str, float] | None = None) -> Status | None:
        """Start the clock and record row 0 at ``x0`` (measured unless ``metrics`` is given).

        Returns the status that ends the run before the library starts, else ``None``:
        ``CONVERGED`` when the start meets ``tol`` on the criterion, else the callback's or the
        time limit's (Ctrl-C: ``USER_STOPPED``), ``NONFINITE`` for a non-finite start,
        ``MAX_ITER`` when ``max_iter`` is 0. The clock is running on return.
        """
        self.recorder.start()
        try:
            stop = self._record(x0, 0, metrics)
        except KeyboardInterrupt:
            stop = Status.USER_STOPPED
        self._start = self.x, 0, dict(self.metrics)
        if self.converged(self.metrics):
            stop = Status.CONVERGED
        elif stop is None and self.solver.max_iter == 0:
            stop = Status.MAX_ITER
        self.status = stop
        return stop

    def iteration(
        self,
        x: Any,
        nit: int | None = None,
        metrics: Mapping[str, float] | None = None,
        *,
        check_max_iter: bool = True,
    ) -> None:
        """Record the library's iterate ``x`` (iteration ``nit``, default the next one).

        Call it from the library's callback. Raises :class:`~optkit.solver.StopSolver`
        (caught by :meth:`library`) when the run must end: time limit, the user's callback,
        a non-finite measure, or ``nit`` reaching ``max_iter`` (unless ``check_max_iter`` is
        False: a library whose ``max_iter`` counts another unit). Where the criterion holds
        at ``x`` the status is ``CONVERGED``, as the driver's ``terminate`` wins over a stop.
        """
        nit = self.nit + 1 if nit is None else nit
        stop = self._record(x, nit, metrics)
        if stop is None and check_max_iter and nit >= self.solver.max_iter:
            stop = Status.MAX_ITER
        if stop is not None and self.converged(self.metrics):
            stop = Status.CONVERGED
        if stop is not None:
            self.status = stop
            raise StopSolver(stop)

    def stop(self, status: Status) -> None:
        """End the library now with ``status`` (for example ``CONVERGED`` when a solver of ours
        that drives a library meets its own test between the library's iterations): raises
        :class:`~optkit.solver.StopSolver`, which :meth:`library` catches."""
        self.status = status
        raise StopSolver(status)

    @contextmanager
    def library(self) -> Iterator[BlackBoxRun]:
        """The block in which the library runs with the clock running.

        A :class:`~optkit.solver.StopSolver` raised by :meth:`iteration` ends the block
        quietly, and so does Ctrl-C (status ``USER_STOPPED``; the result is the last
        recorded iterate). The clock is paused on exit.
        """
        self.recorder.start()
        try:
            yield self
        except StopSolver as stop:
            self.status = stop.status
        except KeyboardInterrupt:
            self.status = Status.USER_STOPPED
        finally:
            self.recorder.pause()

    @contextmanager
    def attempt(self) -> Iterator[BlackBoxRun]:
        """One library call of several, each from the start: :meth:`library` on a fresh clock and trace.

        The attempt begins at the start's state: its trace is row 0 (measured once by
        :meth:`begin`, with ``time`` 0) followed by what it records, and its clock starts at 0,
        so :meth:`finish` reports the current attempt's time and rows alone. The time limit
        counts every attempt: an attempt's limit is what the earlier ones left. On exit the
        attempt's seconds are added to ``spent_s``, and an attempt that recorded an iterate is
        appended to ``attempts``; one that recorded none (Ctrl-C during the library call) is
        dropped and the run returns to the previous attempt (or the start).
        """
        previous = self.recorder, self.x, self.nit, self.metrics
        start_row = {**previous[0].rows[0], "time": 0.0}
        limit = self.solver.time_limit
        self.recorder = Recorder(
            time_limit=None if limit is None else limit - self.spent_s,
            callback=previous[0].callback,
            device=self.problem.device,
        )
        self.recorder.rows.append(start_row)
        self.x, self.nit, self.metrics = self._start[0], 0, dict(self._start[2])
        try:
            with self.library():
                yield self
        finally:
            self.spent_s += self.recorder.elapsed
            if len(self.recorder.rows) > 1:
                self.attempts.append(Attempt(self.recorder, self.x, self.nit, dict(self.metrics)))
            else:
                self.recorder, self.x, self.nit, self.metrics = previous

    def use_attempt(self, index: int) -> None:
        """Make ``attempts[index]`` the one :meth:`finish` reports (its iterate, time and trace)."""
        chosen = self.attempts[index]
        self.recorder, self.x, self.nit, self.metrics = chosen.recorder, chosen.x, chosen.nit, dict(chosen.metrics)

    def finish(
        self,
        *,
        x: Any = None,
        nit: int | None = None,
        verdict: LibraryVerdict | None = None,
        metrics: Mapping[str, float] | None = None,
        fun: float | None = None,
        jac: Any = None,
        counters: Mapping[str, int] | None = None,
        extras: Mapping[str, Any] | None = None,
        message: str = "",
    ) -> Result:
        """Stop the clock and build the :class:`~optkit.result.Result` by the module's status rule.

        Parameters
        ----------
        x : optional
            The returned point (default: the last recorded iterate). Ignored when the run
            itself ended the library (its last recorded iterate is returned).
        nit : int, optional
            The library's iteration count (default: the last recorded iteration).
        verdict : LibraryVerdict, optional
            What the library said when it returned; ``None`` when the run ended it.
        metrics : mapping, optional
            Final measures at ``x`` (default: ``measure(x)``, unless ``x`` is the last
            recorded iterate, whose row is reused).
        fun, jac :
            The objective and gradient at ``x`` (default ``fun``: the ``fun`` measure).
        counters : mapping, optional
            The library's own counts, added to the problem's counted evaluations.
        extras : mapping, optional
            Method-specific outputs; the verdict's code and message are added.
        message : str
            Overrides the status's message (default: the library's message unless converged).
        """
        self.recorder.pause()
        stopped_by_run = self.status is not None
        if x is not None and not stopped_by_run:
            self.x = x
            if metrics is None:
                metrics = self._measured(x)
        if nit is not None and not stopped_by_run:
            self.nit = nit
        final = dict(self.metrics if metrics is None else metrics)
        status = self._status(final, verdict)
        if not message and verdict is not None and status is not Status.CONVERGED:
            message = verdict.message
            if status is Status.STALLED:
                message += f" ({self.criterion} = {final[self.criterion]:.3g} > tol = {self.solver.tol:g})"
        counters_out = {k: v - self._counters_before.get(k, 0) for k, v in self.problem.counters.items()}
        counters_out.update(counters or {})
        extras_out = dict(extras or {})
        if verdict is not None:
            extras_out.update(library_status=verdict.code, library_message=verdict.message)
        return Result(
            x=self.x,
            fun=final.get("fun") if fun is None else fun,
            jac=jac,
            status=status,
            message=message,
            nit=self.nit,
            counters=counters_out,
            time_s=self.recorder.elapsed,
            metrics=final,
            trace=self.recorder.rows,
            solver=self.solver.name,
            problem=self.problem.name,
            extras=extras_out,
        )

    def _status(self, final: Mapping[str, float], verdict: LibraryVerdict | None) -> Status:
        if self.status is not None:
            return self.status
        if _nonfinite(final):
            return Status.NONFINITE
        if self.converged(final):
            return Status.CONVERGED
        if verdict is None:
            raise ValueError("finish() needs the library's verdict when the run did not decide the status")
        if verdict.outcome is Status.CONVERGED:
            return Status.CONVERGED if self.criterion is None else Status.STALLED
        return verdict.outcome
