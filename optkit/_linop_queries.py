"""Structure queries as ``functools.singledispatch`` functions, extensible by other packages.

Re-exported from :mod:`optkit.linop`. Rules for the composite operators live here; the
concrete operators register theirs in :mod:`optkit._linop_concrete`.
"""

from __future__ import annotations

import functools

from ._linop_base import LinearOperator, _Adjoint, _conj, _dummy, _Product, _Scaled, _Sum, _Transposed

__all__ = ["diagonal", "is_diagonal", "is_psd", "is_symmetric", "materialize"]

_PROBE_MAX = 1024  # largest dimension for which generic queries probe with unit vectors


def _eye(op: LinearOperator, n: int, k: int | None = None, offset: int = 0):
    xp = op.xp
    return xp.eye(n, n if k is None else k, k=-offset, dtype=op.dtype, device=_dummy(op.backend, op.device).device)


@functools.singledispatch
def materialize(op: LinearOperator):
    """The dense ``(m, n)`` matrix of ``op``, as an array of the operator's backend and device.

    Extend for new operator classes with ``@materialize.register``. The generic rule applies
    ``op`` to the identity matrix (``n`` matvecs).
    """
    if not isinstance(op, LinearOperator):
        raise TypeError(f"materialize expects an optkit LinearOperator, got {type(op).__name__}")
    return op.matmat(_eye(op, op.shape[1]))


@materialize.register
def _(op: _Adjoint):
    return _conj(op.xp, materialize(op._op)).T


@materialize.register
def _(op: _Transposed):
    return materialize(op._op).T


@materialize.register
def _(op: _Sum):
    out = materialize(op._ops[0])
    for o in op._ops[1:]:
        out = out + materialize(o)
    return out


@materialize.register
def _(op: _Scaled):
    return materialize(op._op) * op._c


@materialize.register
def _(op: _Product):
    return op._A.matmat(materialize(op._B))


def _probe_diagonal(op: LinearOperator, chunk: int = 256):
    """``diag(op)`` by applying ``op`` to blocks of unit vectors; only for min(m, n) <= _PROBE_MAX."""
    m, n = op.shape
    d = min(m, n)
    if d > _PROBE_MAX:
        raise NotImplementedError(
            f"diagonal() has no efficient rule for {type(op).__name__} of shape {op.shape}; register one with "
            f"optkit.linop.diagonal.register, or use materialize() if the dense matrix fits in memory"
        )
    xp = op.xp
    parts = []
    for j0 in range(0, d, chunk):
        k = min(chunk, d - j0)
        Y = op.matmat(_eye(op, n, k, offset=j0))
        parts.append(xp.linalg.diagonal(Y[j0 : j0 + k, :]))
    if not parts:
        return xp.zeros((0,), dtype=op.dtype, device=_dummy(op.backend, op.device).device)
    return xp.concat(parts)


@functools.singledispatch
def diagonal(op: LinearOperator):
    """The main diagonal of ``op`` as a 1-D array of length ``min(m, n)`` (operator's backend).

    Efficient for Dense, Sparse, Diagonal, Identity, LowRank, Kronecker, Block and for sums,
    scaled operators, adjoints and transposes of those. Other operators are probed with unit
    vectors when ``min(m, n) <= 1024``; larger ones raise ``NotImplementedError``. Extend with
    ``@diagonal.register``.
    """
    if not isinstance(op, LinearOperator):
        raise TypeError(f"diagonal expects an optkit LinearOperator, got {type(op).__name__}")
    return _probe_diagonal(op)


@diagonal.register
def _(op: _Adjoint):
    return _conj(op.xp, diagonal(op._op))


@diagonal.register
def _(op: _Transposed):
    return diagonal(op._op)


@diagonal.register
def _(op: _Sum):
    out = diagonal(op._ops[0])
    for o in op._ops[1:]:
        out = out + diagonal(o)
    return out


@diagonal.register
def _(op: _Scaled):
    return diagonal(op._op) * op._c


@diagonal.register
def _(op: _Product):
    if "diagonal" in op._A.tags and "diagonal" in op._B.tags and op._A.shape[0] == op._A.shape[1] == op._B.shape[1]:
        return diagonal(op._A) * diagonal(op._B)
    return _probe_diagonal(op)


@functools.singledispatch
def is_symmetric(op: LinearOperator) -> bool:
    """Whether ``op`` is known to be self-adjoint (``A^H = A``), from its tags. Extend with ``.register``."""
    return "symmetric" in op.tags


@functools.singledispatch
def is_psd(op: LinearOperator) -> bool:
    """Whether ``op`` is known to be Hermitian positive semidefinite, from its tags. Extend with ``.register``."""
    return "psd" in op.tags


@functools.singledispatch
def is_diagonal(op: LinearOperator) -> bool:
    """Whether ``op`` is known to be diagonal, from its tags. Extend with ``.register``."""
    return "diagonal" in op.tags
