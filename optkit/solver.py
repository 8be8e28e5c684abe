"""Solver protocol and the one driver that runs every iterative solver.

A solver is an immutable options object (a frozen dataclass). Every solver takes the
common options ``tol`` (on the method's natural convergence measure, documented per
solver), ``max_iter`` and ``time_limit`` (seconds). Iterative solvers implement
``init / step / terminate / postprocess`` and inherit :meth:`IterativeSolver.solve`,
which owns the loop: trace recording, the callback, ``max_iter``, ``time_limit`` and
Ctrl-C (which returns the partial result). Baselines that wrap a black box override
:meth:`Solver.solve` and run the library through :class:`optkit.blackbox.BlackBoxRun`,
which gives them the same trace, limits, status rule and result.

**The clock.** ``Result.time_s`` and the trace's ``time`` count the solver's work only:
``init``, ``step``, ``terminate`` and ``postprocess`` (forming the returned solution) run
with the clock running; measuring for the trace (``metrics``, ``final_metrics``, a
wrapper's ``measure``) and the user's callback run with it paused, after a device
synchronisation. Measuring may therefore cost (a validation pass, a true residual), but it
must not change the iteration: the iterates are the same whether or not it runs.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .backend import synchronize
from .problem import Problem
from .result import Result, Status
from .validation import check_int, check_positive

__all__ = ["IterativeSolver", "Recorder", "Solver", "StopSolver"]

Callback = Callable[[dict], Any]


class StopSolver(Exception):
    """Raised from inside a black-box solver's callback to end it early; carries the status."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.message)
        self.status = status


@dataclass(frozen=True, kw_only=True)
class Solver(abc.ABC):
    """Base class: an immutable set of options plus what the solver can handle.

    Class attributes
    ----------------
    name : str
        Registry name, set by :func:`optkit.registry.register_solver`.
    accepts : tuple of Problem subclasses
        The problem kinds this solver solves.
    requires : frozenset of str
        Capabilities the problem must declare (e.g. ``{"hvp"}``, ``{"psd"}``).
    backends : frozenset of str
        ``{"numpy"}``, ``{"numpy", "torch"}`` ...

    Parameters
    ----------
    tol : float
        Tolerance on the solver's convergence measure (see each solver's docstring).
    max_iter : int
        Iteration limit, in the solver's natural unit.
    time_limit : float or None
        Wall-clock limit in seconds; the partial result is returned with status ``TIME_LIMIT``.
    """

    name: ClassVar[str] = ""
    accepts: ClassVar[tuple[type[Problem], ...]] = (Problem,)
    requires: ClassVar[frozenset[str]] = frozenset()
    backends: ClassVar[frozenset[str]] = frozenset({"numpy"})

    tol: float = 1e-6
    max_iter: int = 1000
    time_limit: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the options; subclasses extend it (calling ``super().validate()``)."""
        check_positive("tol", self.tol)
        check_int("max_iter", self.max_iter, 0)
        if self.time_limit is not None:
            check_positive("time_limit", self.time_limit)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Names of every option this solver takes."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def options(self) -> dict[str, Any]:
        """The options as a plain dict."""
        return {f: getattr(self, f) for f in self.option_names()}

    @classmethod
    def check_option_names(cls, options: dict[str, Any]) -> None:
        """Raise a ``TypeError`` naming any key of ``options`` that is not an option of this solver."""
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for solver {cls.name or cls.__name__!r}; "
                f"valid options: {', '.join(cls.option_names())}"
            )

    def replace(self, **options: Any) -> "Solver":
        """A copy with some options changed; an unknown option is a ``TypeError`` naming it."""
        self.check_option_names(options)
        return dataclasses.replace(self, **options)

    def check(self, problem: Problem) -> str | None:
        """Why this solver cannot solve ``problem``, or ``None`` when it can."""
        if not isinstance(problem, self.accepts):
            kinds = ", ".join(k.__name__ for k in self.accepts)
            return f"solver {self.name!r} accepts {kinds}, not {type(problem).__name__}"
        if problem.backend not in self.backends:
            return f"solver {self.name!r} runs on {sorted(self.backends)}, not on backend {problem.backend!r}"
        missing = self.requires - problem.capabilities
        if missing:
            return f"solver {self.name!r} requires {sorted(missing)}, which problem {problem.name!r} lacks"
        return None

    def ensure_compatible(self, problem: Problem) -> None:
        """Raise a ``ValueError`` with :meth:`check`'s reason when the pair does not fit."""
        reason = self.check(problem)
        if reason is not None:
            raise ValueError(reason)

    @abc.abstractmethod
    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        """Solve ``problem`` from ``x0`` (default ``problem.x0``).

        ``callback(info)`` is called after every iteration with a dict holding ``iter``,
        ``time``, the solver's metrics and the current iterate ``x``; returning ``True``
        (or raising ``StopIteration``) stops the run with status ``USER_STOPPED``.
        """


class Recorder:
    """Clock, trace and limits of one run.

    The clock runs only while the solver works: it is paused (after a CUDA
    synchronisation on ``device``) while a trace row is measured and recorded and the
    callback runs. The clock is ``time.perf_counter``, looked up at each reading, so a
    test that replaces it with a fake clock checks time limits deterministically.
    """

    def __init__(self, *, time_limit: float | None, callback: Callback | None, device: str = "cpu") -> None:
        self.time_limit = time_limit
        self.callback = callback
        self.device = device
        self.rows: list[dict] = []
        self._elapsed = 0.0
        self._since = None

    def start(self) -> None:
        """Start (or resume) the clock; a running clock goes on."""
        if self._since is None:
            self._since = time.perf_counter()

    def pause(self) -> None:
        """Stop the clock, after synchronising the device."""
        if self._since is not None:
            synchronize(self.device)
            self._elapsed += time.perf_counter() - self._since
            self._since = None

    @property
    def elapsed(self) -> float:
        """Seconds the solver has worked so far."""
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self._elapsed + running

    def record(self, nit: int, metrics: dict[str, float], x: Any = None) -> Status | None:
        """Record iteration ``nit`` and run the callback with the clock paused.

        Returns the status that ends the run (non-finite metric, callback stop, time
        limit), or ``None`` to go on. The clock is running again on return.
        """
        self.pause()
        row = {"iter": nit, "time": self._elapsed, **metrics}
        self.rows.append(row)
        status = None
        if any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values()):
            status = Status.NONFINITE
        elif self.callback is not None:
            try:
                if self.callback({**row, "x": x}):
                    status = Status.USER_STOPPED
            except StopIteration:
                status = Status.USER_STOPPED
        if status is None and self.time_limit is not None and self._elapsed >= self.time_limit:
            status = Status.TIME_LIMIT
        self.start()
        return status


@dataclass(frozen=True, kw_only=True)
class IterativeSolver(Solver):
    """A solver written as ``init / step / terminate / postprocess``; :meth:`solve` is the driver.

    Subclasses implement
    ``init(problem, x0) -> state``,
    ``step(problem, state) -> state``,
    ``terminate(problem, state) -> Status | None`` (``CONVERGED`` or a failure, ``None`` to go on),
    ``metrics(problem, state) -> dict[str, float]`` (the trace row; measured with the clock
    paused, see the module docstring), and may override ``postprocess`` (default: ``x =
    state.x``), ``final_metrics`` (default: ``metrics``) and ``iterate``.
    """

    @abc.abstractmethod
    def init(self, problem: Problem, x0: Any) -> Any:
        """The initial state at ``x0``."""

    @abc.abstractmethod
    def step(self, problem: Problem, state: Any) -> Any:
        """One iteration: the next state."""

    @abc.abstractmethod
    def terminate(self, problem: Problem, state: Any) -> Status | None:
        """``CONVERGED`` or a failure status to stop, ``None`` to go on."""

    @abc.abstractmethod
    def metrics(self, problem: Problem, state: Any) -> dict[str, float]:
        """The measures recorded in the trace for ``state``.

        Run with the clock paused; it may cost, but must not change what the iteration does."""

    def final_metrics(self, problem: Problem, state: Any) -> dict[str, float]:
        """The result's measures at the last state (clock paused); default :meth:`metrics`.

        Measures that ``postprocess`` returns (taken on the solution it formed) take precedence."""
        return self.metrics(problem, state)

    def iterate(self, state: Any) -> Any:
        """The current iterate held by ``state``."""
        return state.x

    def postprocess(self, problem: Problem, state: Any, status: Status) -> dict[str, Any]:
        """Final fields of the :class:`Result` (timed: forming the solution is the solver's
        work): ``x``, and optionally ``fun``, ``jac``, ``metrics``, ``counters``, ``extras``,
        ``message``."""
        return {"x": self.iterate(state)}

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        self.ensure_compatible(problem)
        counters_before = dict(problem.counters)
        recorder = Recorder(time_limit=self.time_limit, callback=callback, device=problem.device)
        nit, state, status = 0, None, None
        recorder.start()
        try:
            state = self.init(problem, problem.x0 if x0 is None else x0)
            while True:
                done = self.terminate(problem, state)
                recorder.pause()
                stop = recorder.record(nit, self.metrics(problem, state), self.iterate(state))
                status = done or stop
                if status is not None:
                    break
                if nit >= self.max_iter:
                    status = Status.MAX_ITER
                    break
                state = self.step(problem, state)
                nit += 1
        except KeyboardInterrupt:
            if state is None:
                raise
            status = Status.USER_STOPPED
        # building the returned solution (a dense plan) is part of the work; measuring it is not
        out = self.postprocess(problem, state, status)
        recorder.pause()
        metrics = {**self.final_metrics(problem, state), **out.get("metrics", {})}
        counters = {k: v - counters_before.get(k, 0) for k, v in problem.counters.items()}
        counters.update(out.get("counters", {}))
        return Result(
            x=out["x"],
            fun=out.get("fun", metrics.get("fun")),
            jac=out.get("jac"),
            status=status,
            message=out.get("message", ""),
            nit=nit,
            counters=counters,
            time_s=recorder.elapsed,
            metrics=metrics,
            trace=recorder.rows,
            solver=self.name,
            problem=problem.name,
            extras=out.get("extras", {}),
        )
