"""Baselines wrapped from other libraries, registered like optkit's own solvers."""

from . import (
    ipopt_solver,
    pot_solvers,
    pot_sparsity,
    pyamg_solver,
    regot_solvers,
    scipy_constrained,
    scipy_solvers,
    torch_optimizers,
)

__all__ = [
    "ipopt_solver",
    "pot_solvers",
    "pot_sparsity",
    "pyamg_solver",
    "regot_solvers",
    "scipy_constrained",
    "scipy_solvers",
    "torch_optimizers",
]
