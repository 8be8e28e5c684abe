"""optkit: numerical optimization methods, classic and learned, compared on one problem suite.

The public API::

    optkit.solve(problem, solver, **options) -> Result       # problem and solver: objects, names or specs
    optkit.get_problem("family/name:key=value", **params), optkit.get_solver("name:key=value", **options)
    optkit.list_solvers(), optkit.list_problems(), optkit.list_suites()
    optkit.aslinearoperator(obj), optkit.Status, optkit.Result
    optkit.HessianOperator(problem, x), optkit.HessianOperator.from_model(model, loss_fn, batches)

Problem kinds: SmoothProblem, FiniteSumProblem, CompositeProblem, LinearSystemProblem,
OTProblem, EqualityConstrainedProblem, TrainingTask. Solver bases: Solver, IterativeSolver,
``optkit.blackbox.BlackBoxRun`` (wrapped libraries), ``optkit.torch_optim.TorchOptimizerSolver``
(torch optimizers). Array backends: ``optkit.backend``.
"""

from ._api import solve
from .composite_problem import CompositeProblem
from .constrained_problem import EqualityConstrainedProblem
from .finite_sum import FiniteSumProblem
from .hessian import HessianOperator
from .linop import LinearOperator, aslinearoperator
from .ot_problem import OTProblem
from .problem import LinearSystemProblem, Problem, SmoothProblem
from .registry import (
    get_problem,
    get_solver,
    get_suite,
    list_problems,
    list_solvers,
    list_suites,
    register_problem,
    register_solver,
    register_suite,
)
from .result import Result, Status
from .solver import IterativeSolver, Solver
from .training import TrainingTask

__version__ = "0.1.0"

__all__ = [
    "CompositeProblem",
    "EqualityConstrainedProblem",
    "FiniteSumProblem",
    "HessianOperator",
    "IterativeSolver",
    "LinearOperator",
    "LinearSystemProblem",
    "OTProblem",
    "Problem",
    "Result",
    "SmoothProblem",
    "Solver",
    "Status",
    "TrainingTask",
    "aslinearoperator",
    "get_problem",
    "get_solver",
    "get_suite",
    "list_problems",
    "list_solvers",
    "list_suites",
    "register_problem",
    "register_solver",
    "register_suite",
    "solve",
]
