"""Linear operators on numpy arrays and torch tensors (CPU or CUDA), on scipy's contract.

A :class:`LinearOperator` has an explicit ``shape`` ``(m, n)``, a ``dtype`` (numpy dtype for
numpy operators, torch dtype for torch ones), a ``backend`` (``"numpy"``/``"torch"``), a
``device`` and structure ``tags`` (``symmetric``, ``psd``, ``diagonal``, ``low_rank``,
``orthonormal``). ``matvec`` maps ``(n,) -> (m,)`` and ``(n, 1) -> (m, 1)``, ``matmat``
``(n, k) -> (m, k)``, ``rmatvec``/``rmatmat`` apply the conjugate transpose (scipy's
contract; numpy operators take array-likes, torch operators tensors). Algebra is lazy
(``A + B``, ``A - B``, ``-A``, ``A @ B``, ``c * A``, ``A / c``, ``A.T``, ``A.H``) and tags
propagate where valid; ``A @ x`` and ``A.dot(x)`` apply the operator; ``A * B`` and
``A * x`` are a ``TypeError``. ``A.H`` is a view of ``A`` that ``A`` does not keep (no
reference cycle); ``A.H.H is A``.

Concrete operators: :class:`Dense`, :class:`Sparse`, :class:`Diagonal`, :class:`Identity`,
:class:`LowRank`, :class:`Block`, :class:`Kronecker`, :class:`FunctionOperator`;
:func:`aslinearoperator` wraps arrays, sparse matrices, tensors and scipy operators.

Structure queries are ``functools.singledispatch`` functions, so other packages extend them
for their own operator classes with ``.register``: :func:`materialize`, :func:`diagonal`,
:func:`is_symmetric`, :func:`is_psd`, :func:`is_diagonal`. :func:`dottest` checks an adjoint.

Numpy operators go to scipy's functions as they are (``cg``, ``gmres``, ``eigsh``,
``svds``, ``onenormest``, ...); ``op.to_scipy()`` gives a
:class:`scipy.sparse.linalg.LinearOperator` (numpy in and out, also for torch operators);
``op.to(backend, device, dtype)`` moves an operator.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import convert, get_namespace, torch_or_none
from ._linop_base import TAGS, LinearOperator
from ._linop_support import _is_complex
from ._linop_concrete import (
    Dense,
    Diagonal,
    FunctionOperator,
    Identity,
    LowRank,
    Sparse,
    aslinearoperator,
)
from ._linop_queries import diagonal, is_diagonal, is_psd, is_symmetric, materialize
from ._linop_structured import Block, Kronecker

__all__ = [
    "TAGS",
    "Block",
    "Dense",
    "Diagonal",
    "FunctionOperator",
    "Identity",
    "Kronecker",
    "LinearOperator",
    "LowRank",
    "Sparse",
    "aslinearoperator",
    "diagonal",
    "dottest",
    "is_diagonal",
    "is_psd",
    "is_symmetric",
    "materialize",
]


def _test_dtype(op: LinearOperator):
    """``(dtype, eps)`` of dottest's vectors: the operator's dtype, or float64 for integer operators."""
    dtype = op.dtype
    if op.backend == "torch":
        torch = torch_or_none()
        dtype = dtype if dtype.is_floating_point or dtype.is_complex else torch.float64
        return dtype, float(torch.finfo(dtype).eps)
    dtype = dtype if np.dtype(dtype).kind in "fc" else np.dtype(np.float64)
    return dtype, float(np.finfo(dtype).eps)


def _random(rng: np.random.Generator, n: int, op: LinearOperator, dtype):
    v = rng.standard_normal(n)
    if _is_complex(dtype):
        v = v + 1j * rng.standard_normal(n)
    return convert(v, op.backend, None if op.backend == "numpy" else op.device, dtype)


def dottest(op, *, rtol: float = 1e-6, seed: int = 0) -> bool:
    """Check the adjoint of ``op``: ``<A x, y> == <x, A^H y>`` for random ``x``, ``y``.

    Parameters
    ----------
    op : LinearOperator or anything :func:`aslinearoperator` accepts
    rtol : float
        Relative tolerance on the two inner products. A rounding allowance of
        ``8 eps sqrt(max(m, n)) ||Ax|| ||y||`` (``eps`` of the operator's dtype) is added,
        so single-precision operators pass with the default.
    seed : int
        Seed of the random vectors (real or complex to match ``op.dtype``).

    Returns
    -------
    bool
        True when the test passes.

    Raises
    ------
    AssertionError
        With both inner products when they differ.
    """
    op = aslinearoperator(op)
    m, n = op.shape
    rng = np.random.default_rng(seed)
    dtype, eps = _test_dtype(op)
    x, y = _random(rng, n, op, dtype), _random(rng, m, op, dtype)
    Ax, AHy = op.matvec(x), op.rmatvec(y)
    xp = get_namespace(x, Ax)
    lhs = complex(xp.vecdot(y, Ax))  # y^H (A x)
    rhs = complex(xp.vecdot(AHy, x))  # (A^H y)^H x
    scale = float(xp.linalg.vector_norm(Ax)) * float(xp.linalg.vector_norm(y))
    tol = rtol * max(abs(lhs), abs(rhs)) + 8 * eps * math.sqrt(max(m, n, 1)) * scale
    if not abs(lhs - rhs) <= tol:
        raise AssertionError(
            f"dot test failed for {op!r}: <A x, y> = {lhs:.12g} but <x, A^H y> = {rhs:.12g} "
            f"(difference {abs(lhs - rhs):.3g} > tolerance {tol:.3g}); the adjoint does not match the operator"
        )
    return True
