"""Entropic optimal-transport solvers on :class:`optkit.OTProblem`: ``sinkhorn`` (log domain),
``sns`` (Sinkhorn-Newton-Sparse) and ``sparse-ot`` (sparsity-constrained OT)."""

from . import sinkhorn, sns, sparse_ot

__all__ = ["sinkhorn", "sns", "sparse_ot"]
