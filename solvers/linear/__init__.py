"""Linear-system solvers: conjugate gradients, with Jacobi or IC(0) preconditioning, and deflated PCG."""

from . import cg, deflated_pcg

__all__ = ["cg", "deflated_pcg"]
