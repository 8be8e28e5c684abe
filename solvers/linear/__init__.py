"""Linear-system solvers: conjugate gradients (with Jacobi or IC(0) preconditioning), deflated PCG,
and the deep conjugate direction method."""

from . import cg, dcdm, deflated_pcg

__all__ = ["cg", "dcdm", "deflated_pcg"]
