"""``optkit.solve``: one call from a problem and a solver (objects or names) to a Result."""

from __future__ import annotations

from typing import Any

from .problem import Problem
from .registry import get_problem, get_solver
from .result import Result
from .solver import Callback, Solver

__all__ = ["solve"]


def solve(
    problem: Problem | str,
    solver: Solver | str,
    *,
    x0: Any = None,
    callback: Callback | None = None,
    **options: Any,
) -> Result:
    """Solve ``problem`` with ``solver``.

    Parameters
    ----------
    problem : Problem or str
        A problem object, or a registered name / spec (``"linear/poisson-2d:n=64"``).
    solver : Solver or str
        A solver object, or a registered name (``"cg"``).
    x0 : array of shape (n,), optional
        Starting point; ``problem.x0`` by default.
    callback : callable, optional
        ``callback(info: dict) -> bool | None`` after every iteration (see
        :meth:`optkit.solver.Solver.solve`); returning ``True`` stops the run.
    **options
        Solver options (``tol``, ``max_iter``, ``time_limit`` and the solver's own); an
        unknown option is a ``TypeError`` naming it.

    Returns
    -------
    Result

    Examples
    --------
    >>> import optkit
    >>> res = optkit.solve("linear/poisson-2d:n=32", "cg", tol=1e-10)
    >>> res.success
    True
    """
    if isinstance(problem, str):
        problem = get_problem(problem)
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be an optkit Problem or a registered name, got {type(problem).__name__}")
    if isinstance(solver, str):
        solver = get_solver(solver, **options)
    elif isinstance(solver, Solver):
        solver = solver.replace(**options) if options else solver
    else:
        raise TypeError(f"solver must be an optkit Solver or a registered name, got {type(solver).__name__}")
    return solver.solve(problem, x0=x0, callback=callback)
