"""Solver results: an enum status with messages and a frozen :class:`Result`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["Result", "Status"]


class Status(enum.Enum):
    """Why a solver stopped. Each member carries a one-line message; only ``CONVERGED`` is a success."""

    CONVERGED = "converged to the requested tolerance"
    MAX_ITER = "reached the iteration limit max_iter"
    TIME_LIMIT = "reached the time limit time_limit"
    DIVERGED = "diverged"
    NONFINITE = "a non-finite value (NaN or inf) appeared"
    BREAKDOWN = "numerical breakdown"
    INFEASIBLE = "the problem is infeasible"
    USER_STOPPED = "stopped by the callback or by an interrupt (Ctrl-C)"
    FAILED = "the underlying solver reported a failure"
    STALLED = "stopped making progress before the requested tolerance was met"

    @property
    def message(self) -> str:
        """The member's message."""
        return self.value

    @property
    def success(self) -> bool:
        """True only for ``CONVERGED``."""
        return self is Status.CONVERGED

    @property
    def code(self) -> int:
        """A stable small integer, 0 for success, as scipy's ``OptimizeResult.status``."""
        return list(Status).index(self)


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Result:
    """What a solver returns.

    Attributes
    ----------
    x : array
        The final iterate, on the backend and device of the problem (numpy or torch).
    fun : float or None
        Objective value at ``x`` when the problem has an objective.
    status : Status
        Why the solver stopped.
    message : str
        Human-readable reason; the status message, possibly refined by the solver
        (e.g. which breakdown happened).
    jac : array or None
        The gradient of the objective at ``x`` (shape (n,)), when the solver has it.
    nit : int
        Iterations performed (the solver's natural unit: CG steps, Newton steps, ...).
    counters : Mapping[str, int]
        Evaluation counts, e.g. ``{"matvec": 120, "fun": 14, "grad": 14}``.
    time_s : float
        Wall-clock seconds spent in the solver, CUDA synchronised, trace recording excluded.
    metrics : Mapping[str, float]
        Final values of the solver's measures (``residual``, ``kkt``, ``marginal_error`` ...).
    trace : tuple of Mapping
        One row per recorded iteration: ``{"iter": k, "time": seconds, **metrics}``.
    solver, problem : str
        Names of the solver and problem that produced this result.
    extras : Mapping[str, Any]
        Method-specific outputs (dual potentials, multipliers ...). A wrapped library's
        own verdict is kept as ``library_status`` (its code) and ``library_message``;
        ``hess_inv``, when present, is the method's inverse-Hessian approximation.
    """

    x: Any
    status: Status
    fun: float | None = None
    jac: Any = None
    message: str = ""
    nit: int = 0
    counters: Mapping[str, int] = field(default_factory=dict)
    time_s: float = 0.0
    metrics: Mapping[str, float] = field(default_factory=dict)
    trace: tuple = ()
    solver: str = ""
    problem: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):
            raise TypeError(f"status must be an optkit.Status, got {type(self.status).__name__}")
        object.__setattr__(self, "message", self.message or self.status.message)
        object.__setattr__(self, "counters", _frozen(self.counters))
        object.__setattr__(self, "metrics", _frozen(self.metrics))
        object.__setattr__(self, "extras", _frozen(self.extras))
        object.__setattr__(self, "trace", tuple(self.trace))

    @property
    def success(self) -> bool:
        """Whether the solver converged."""
        return self.status.success

    def to_scipy(self):
        """This result as a :class:`scipy.optimize.OptimizeResult` (numpy ``x``).

        ``status`` is the wrapped library's own code when the solver wraps one (so a
        ``scipy-lbfgsb`` result reads as SciPy's L-BFGS-B result would), otherwise
        :attr:`Status.code`; ``optkit_status`` is always the :class:`Status` name. ``jac``
        (the gradient at ``x``) and ``hess_inv`` are present when the solver has them.
        Counters map to scipy's names where one exists (``fun`` -> ``nfev``, ``grad`` ->
        ``njev``, ``hvp`` -> ``nhev``); all others are kept under their own names, and so
        are the metrics.
        """
        from scipy.optimize import OptimizeResult

        from .backend import to_numpy

        scipy_names = {"fun": "nfev", "grad": "njev", "hvp": "nhev"}
        out = OptimizeResult(
            x=to_numpy(self.x),
            fun=self.fun,
            success=self.success,
            status=self.status.code if self.extras.get("library_status") is None else self.extras["library_status"],
            optkit_status=self.status.name,
            message=self.message,
            nit=self.nit,
            time_s=self.time_s,
        )
        if self.jac is not None:
            out["jac"] = to_numpy(self.jac)
        if self.extras.get("hess_inv") is not None:
            out["hess_inv"] = self.extras["hess_inv"]
        for key, value in self.counters.items():
            out[scipy_names.get(key, key)] = value
        out.update(self.metrics)
        return out

    def __repr__(self) -> str:
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in self.metrics.items() if isinstance(v, (int, float)))
        return (
            f"Result(solver={self.solver!r}, problem={self.problem!r}, status={self.status.name}, "
            f"nit={self.nit}, time_s={self.time_s:.3g}" + (f", {metrics}" if metrics else "") + ")"
        )
