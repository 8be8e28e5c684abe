"""Baselines wrapped from other libraries, registered like optkit's own solvers."""

from . import pyamg_solver, scipy_solvers

__all__ = ["pyamg_solver", "scipy_solvers"]
