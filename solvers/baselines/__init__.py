"""Baselines wrapped from other libraries, registered like optkit's own solvers."""

from . import pot_solvers, pot_sparsity, pyamg_solver, scipy_solvers

__all__ = ["pot_solvers", "pot_sparsity", "pyamg_solver", "scipy_solvers"]
