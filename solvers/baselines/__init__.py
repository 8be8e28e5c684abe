"""Baselines wrapped from other libraries, registered like optkit's own solvers."""

from . import pot_sparsity, pyamg_solver, scipy_solvers
from . import pot_solvers

__all__ = ["pyamg_solver", "scipy_solvers"]
