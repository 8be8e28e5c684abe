"""Helpers of the linear operators (:mod:`optkit.linop`): structure tags, dtypes, backends, scalars,
and the bridge to scipy."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from .backend import convert, get_namespace, is_torch, to_numpy, torch_or_none

#: The structure tags an operator may carry.
#: ``symmetric``: self-adjoint, ``A^H = A`` (Hermitian when complex); square only.
#: ``psd``: Hermitian positive semidefinite, ``x^H A x >= 0``; implies ``symmetric``; square only.
#: ``diagonal``: ``A[i, j] = 0`` for ``i != j``.
#: ``low_rank``: held in factored form of small rank.
#: ``orthonormal``: orthonormal columns, ``A^H A = I``.
TAGS = frozenset({"symmetric", "psd", "diagonal", "low_rank", "orthonormal"})


def _normalize_tags(tags: Iterable[str] | None, shape: tuple[int, int], dtype: Any) -> frozenset:
    tags = frozenset([tags] if isinstance(tags, str) else (tags or ()))
    unknown = tags - TAGS
    if unknown:
        raise ValueError(f"unknown tags {sorted(unknown)}; allowed tags are {sorted(TAGS)}")
    square = shape[0] == shape[1]
    for t in ("symmetric", "psd"):
        if t in tags and not square:
            raise ValueError(f"tag {t!r} needs a square operator, got shape {shape}")
    if "psd" in tags:
        tags |= {"symmetric"}
    if "diagonal" in tags and square and not _is_complex(dtype):
        tags |= {"symmetric"}
    return tags


def _is_complex(dtype: Any) -> bool:
    torch = torch_or_none()
    if torch is not None and isinstance(dtype, torch.dtype):
        return dtype.is_complex
    return np.dtype(dtype).kind == "c"


def _dummy(backend: str, device: Any = None, dtype: Any = None):
    """A zero-length array of ``backend``/``device``/``dtype`` (default float64)."""
    return convert(np.empty(0), backend, device, dtype)


def _namespace(backend: str, device: Any = None):
    return get_namespace(_dummy(backend, device))


def _canon_dtype(backend: str, dtype: Any):
    """``dtype`` (numpy/torch dtype or name; None = float64) as a dtype object of ``backend``."""
    if backend == "numpy" and not _is_torch_dtype(dtype):
        return np.dtype("float64" if dtype is None else dtype)
    return _dummy(backend, None, dtype).dtype


def _is_torch_dtype(dtype: Any) -> bool:
    torch = torch_or_none()
    return torch is not None and isinstance(dtype, torch.dtype)


def _result_dtype(backend: str, dtypes: Iterable[Any], scalars: Iterable[Any] = ()):
    """Promotion of ``dtypes`` with Python ``scalars`` (weakly typed) on ``backend``."""
    dtypes, scalars = list(dtypes), list(scalars)
    if backend == "numpy":
        return np.result_type(*dtypes, *scalars)
    torch = torch_or_none()
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    for s in scalars:
        out = torch.result_type(torch.empty((), dtype=out), s)
    return out


def _conj(xp, x):
    """Physical complex conjugate (no lazy conj bit on torch); real arrays pass through."""
    return xp.conj(x) if _is_complex(x.dtype) else x


def _as_scalar(c: Any):
    """``c`` as a Python number if it is a scalar (number, 0-d array or tensor), else None."""
    if isinstance(c, numbers.Number):
        return c.item() if isinstance(c, np.generic) else c
    if (isinstance(c, np.ndarray) or is_torch(c)) and c.ndim == 0:
        return c.item()
    return None


def _is_real_scalar(c: Any) -> bool:
    return not isinstance(c, complex) or c.imag == 0


def _scipy_operator(op):
    """``op`` (an optkit operator) as a :class:`scipy.sparse.linalg.LinearOperator` on numpy
    arrays; for torch operators inputs become tensors and outputs numpy arrays on each call."""
    from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator

    back, dev, op_dtype = op.backend, op.device, op.dtype
    if back == "numpy":

        def wrap(f):
            return f
    else:
        cplx = _is_complex(op_dtype)

        def wrap(f):  # torch kernels want the operator's dtype (unless a complex input meets a real op)
            def g(a):
                a = np.asarray(a)
                return to_numpy(f(convert(a, back, dev, None if a.dtype.kind == "c" and not cplx else op_dtype)))

            return g

    mv, rmv = wrap(op.matvec), wrap(op.rmatvec)
    mm, rmm = wrap(op.matmat), wrap(op.rmatmat)
    try:
        dtype = np.dtype(str(op_dtype).removeprefix("torch."))
    except TypeError:  # a torch-only dtype such as bfloat16
        dtype = np.dtype(np.float32)
    return ScipyLinearOperator(
        op.shape,
        dtype=dtype,
        matvec=lambda v: mv(np.ravel(v)),
        rmatvec=lambda v: rmv(np.ravel(v)),
        matmat=mm,
        rmatmat=rmm,
    )
