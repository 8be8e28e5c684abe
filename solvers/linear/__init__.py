"""Linear-system solvers: conjugate gradients, with Jacobi or IC(0) preconditioning."""

from . import cg, dcdm

__all__ = ["cg", "dcdm"]
