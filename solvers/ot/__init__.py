"""Entropic optimal-transport solvers on :class:`optkit.OTProblem`: ``sinkhorn`` (log domain),
``sns`` (Sinkhorn-Newton-Sparse) and ``sparse-ot`` (sparsity-constrained OT)."""

from . import sinkhorn
from . import sns
from . import sparse_ot
