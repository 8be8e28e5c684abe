"""Concrete linear operators and :func:`aslinearoperator`; re-exported from :mod:`optkit.linop`.

The structured compositions :class:`Block` and :class:`Kronecker` live in :mod:`optkit._linop_structured`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from .backend import (
    backend_name,
    convert,
    device_of,
    get_namespace,
    is_torch,
    optional_import,
    to_numpy,
    torch_or_none,
)
from ._linop_base import LinearOperator
from ._linop_support import _conj, _dummy, _is_complex, _result_dtype
from ._linop_queries import diagonal, materialize

__all__ = [
    "Dense",
    "Diagonal",
    "FunctionOperator",
    "Identity",
    "LowRank",
    "Sparse",
    "aslinearoperator",
]

_CSR_BETA = "Sparse CSR tensor support is in beta"


def _array(a):
    """``a`` unchanged if a tensor, else as a numpy array."""
    return a if is_torch(a) else np.asarray(a)


def _place(a) -> dict:
    return {"backend": backend_name(a), "device": device_of(a)}


# ----------------------------------------------------------------------------- Dense
class Dense(LinearOperator):
    """A dense matrix ``M`` of shape ``(m, n)`` (numpy array or torch tensor, any device).

    ``matvec`` is ``M @ x``; the adjoint uses ``M.T`` without copying ``M``.

    Parameters
    ----------
    M : array_like or torch.Tensor, shape (m, n)
        Kept without copying; the operator's dtype, backend and device are ``M``'s.
    tags : iterable of str, optional
        Structure tags the caller vouches for (e.g. ``{"psd"}``); they are not checked.
    """

    def __init__(self, M, *, tags=None) -> None:
        M = _array(M)
        if M.ndim != 2:
            raise ValueError(f"Dense expects a 2-D array, got shape {tuple(M.shape)}")
        super().__init__(M.shape, M.dtype, tags=tags, **_place(M))
        self._M = M
        self._cplx = _is_complex(M.dtype)

    def _matvec(self, x):
        return self._M @ x

    _matmat = _matvec

    def _rmatvec(self, y):
        if self._cplx:
            xp = self.xp
            return xp.conj(self._M.T @ xp.conj(y))
        return self._M.T @ y

    _rmatmat = _rmatvec

    def _to(self, backend, device, dtype):
        return Dense(convert(self._M, backend, device, dtype), tags=self.tags)

    def to_scipy(self):
        if self.backend == "numpy":
            from scipy.sparse.linalg import aslinearoperator as scipy_aslinop

            return scipy_aslinop(self._M)
        return super().to_scipy()


@materialize.register
def _(op: Dense):
    return op._M  # the operator's own storage, not a copy


@diagonal.register
def _(op: Dense):
    return op.xp.linalg.diagonal(op._M) * 1  # a copy, never a read-only view


# ----------------------------------------------------------------------------- Sparse
class Sparse(LinearOperator):
    """A sparse matrix: any scipy.sparse format (converted to CSR once) or a torch sparse tensor.

    Torch COO/CSC/BSR tensors are converted to CSR once (torch's fastest CPU/CUDA ``mv``).
    ``matvec`` is ``M @ x`` with no further overhead; the adjoint's CSR/CSC matrix is built
    on first use and cached.

    Parameters
    ----------
    M : scipy.sparse matrix or array, or sparse torch.Tensor, shape (m, n)
        A CSR input is kept without copying.
    tags : iterable of str, optional
        Structure tags the caller vouches for; they are not checked.
    """

    def __init__(self, M, *, tags=None) -> None:
        if sp.issparse(M):
            M = M.tocsr()
        elif is_torch(M) and M.layout != torch_or_none().strided:
            torch = torch_or_none()
            if M.layout != torch.sparse_csr:
                if M.layout == torch.sparse_coo:
                    M = M.coalesce()
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_CSR_BETA)
                    M = M.to_sparse_csr()
        else:
            raise TypeError(
                f"Sparse expects a scipy.sparse matrix/array or a torch sparse tensor, got {type(M).__name__}"
            )
        if len(M.shape) != 2:
            raise ValueError(f"Sparse expects a 2-D matrix, got shape {tuple(M.shape)}")
        super().__init__(tuple(M.shape), M.dtype, tags=tags, **_place(M))
        self._M = M
        self._MH = None

    def _matvec(self, x):
        return self._M @ x

    _matmat = _matvec

    def _adjoint_matrix(self):
        if self._MH is None:
            M = self._M
            if self.backend == "numpy":
                self._MH = M.conj().T if _is_complex(M.dtype) else M.T
            else:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_CSR_BETA)
                    self._MH = M.mH.to_sparse_csr()
        return self._MH

    def _rmatvec(self, y):
        return self._adjoint_matrix() @ y

    _rmatmat = _rmatvec

    def _to(self, backend, device, dtype):
        M = self._M
        if self.backend == "numpy" and backend == "numpy":
            new = M if dtype is None else M.astype(convert(M.data[:0], "numpy", None, dtype).dtype)
        elif backend == "numpy":
            new = sp.csr_array(
                (convert(M.values(), "numpy", None, dtype), to_numpy(M.col_indices()), to_numpy(M.crow_indices())),
                shape=tuple(M.shape),
            )
        else:
            torch = torch_or_none()
            if self.backend == "numpy":
                crow = convert(M.indptr.astype(np.int64), "torch", device)
                col = convert(M.indices.astype(np.int64), "torch", device)
                vals = convert(M.data, "torch", device, dtype)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_CSR_BETA)
                    new = torch.sparse_csr_tensor(crow, col, vals, size=M.shape, check_invariants=False)
            else:
                tdtype = None if dtype is None else convert(M.values()[:0], "torch", None, dtype).dtype
                new = M.to(device=device or M.device, dtype=tdtype or M.dtype)
        return Sparse(new, tags=self.tags)

    def to_scipy(self):
        if self.backend == "numpy":
            from scipy.sparse.linalg import aslinearoperator as scipy_aslinop

            return scipy_aslinop(self._M)
        return super().to_scipy()


@materialize.register
def _(op: Sparse):
    return op._M.toarray() if op.backend == "numpy" else op._M.to_dense()


@diagonal.register
def _(op: Sparse):
    M = op._M
    if op.backend == "numpy":
        return M.diagonal()
    torch = torch_or_none()
    coo = M.to_sparse_coo().coalesce()
    rows, cols = coo.indices()
    on = rows == cols
    d = torch.zeros(min(M.shape), dtype=M.dtype, device=M.device)
    d[rows[on]] = coo.values()[on]
    return d


# ----------------------------------------------------------------------------- Diagonal / Identity
class Diagonal(LinearOperator):
    """``diag(d)`` for a 1-D array ``d`` of length ``n``; tagged diagonal, plus symmetric (real ``d``)
    and psd (real ``d >= 0``, checked once at construction).

    Parameters
    ----------
    d : array_like or torch.Tensor, shape (n,)
    tags : iterable of str, optional
        Extra tags.
    """

    def __init__(self, d, *, tags=None) -> None:
        d = _array(d)
        if d.ndim != 1:
            raise ValueError(f"Diagonal expects a 1-D array, got shape {tuple(d.shape)}")
        auto = {"diagonal"}
        xp = get_namespace(d)
        if not _is_complex(d.dtype):
            auto.add("symmetric")
            if bool(xp.all(d >= 0)):
                auto.add("psd")
        n = d.shape[0]
        super().__init__((n, n), d.dtype, tags=auto | set(tags or ()), **_place(d))
        self._d = d
        self._dc = _conj(xp, d)

    def _matvec(self, x):
        return self._d * x

    def _matmat(self, X):
        return self._d[:, None] * X

    def _rmatvec(self, y):
        return self._dc * y

    def _rmatmat(self, Y):
        return self._dc[:, None] * Y

    def _to(self, backend, device, dtype):
        return Diagonal(convert(self._d, backend, device, dtype), tags=self.tags)


@materialize.register
def _(op: Diagonal):
    d = op._d
    return op.xp.eye(d.shape[0], dtype=d.dtype, device=d.device) * d[None, :]


@diagonal.register
def _(op: Diagonal):
    return op._d * 1


class Identity(LinearOperator):
    """The ``n x n`` identity. ``matvec`` returns a copy of ``x``.

    Parameters
    ----------
    n : int
    dtype : dtype or name, optional
        Default float64.
    backend : {"numpy", "torch"}
    device : str, optional
    """

    def __init__(self, n: int, *, dtype: Any = None, backend: str = "numpy", device: Any = None) -> None:
        tags = {"symmetric", "psd", "diagonal", "orthonormal"}
        super().__init__((n, n), dtype, tags=tags, backend=backend, device=device)

    def _matvec(self, x):
        return self.xp.asarray(x, copy=True)

    _matmat = _rmatvec = _rmatmat = _matvec

    def _to(self, backend, device, dtype):
        dtype = dtype if dtype is not None else str(self.dtype).removeprefix("torch.")
        return Identity(self.shape[0], dtype=dtype, backend=backend, device=device)


@materialize.register
def _(op: Identity):
    return op.xp.eye(op.shape[0], dtype=op.dtype, device=_dummy(op.backend, op.device).device)


@diagonal.register
def _(op: Identity):
    return op.xp.ones(op.shape[0], dtype=op.dtype, device=_dummy(op.backend, op.device).device)


# ----------------------------------------------------------------------------- LowRank
class LowRank(LinearOperator):
    """``U diag(S) V^H`` with ``U`` of shape ``(m, r)``, ``S`` of shape ``(r,)``, ``V`` of shape ``(n, r)``.

    ``S=None`` means ones; ``V=None`` means ``V = U`` (then tagged symmetric when ``S`` is real,
    and psd when also ``S >= 0``). Applying costs ``O((m + n) r)`` per vector.

    Parameters
    ----------
    U : array or tensor, shape (m, r)
    S : array or tensor, shape (r,), optional
    V : array or tensor, shape (n, r), optional
        All of one backend and device.
    tags : iterable of str, optional
        Extra tags (``low_rank`` is always set).
    """

    def __init__(self, U, S=None, V=None, *, tags=None) -> None:
        xp = get_namespace(U, S, V)
        U = _array(U)
        sym = V is None
        V = U if sym else _array(V)
        S = None if S is None else _array(S)
        if U.ndim != 2 or V.ndim != 2 or U.shape[1] != V.shape[1]:
            raise ValueError(f"LowRank needs U (m, r) and V (n, r), got {tuple(U.shape)} and {tuple(V.shape)}")
        r = U.shape[1]
        if S is not None and tuple(S.shape) != (r,):
            raise ValueError(f"LowRank needs S of shape ({r},), got {tuple(S.shape)}")
        auto = {"low_rank"}
        if sym and (S is None or not _is_complex(S.dtype)):
            auto.add("symmetric")
            if S is None or bool(xp.all(S >= 0)):
                auto.add("psd")
        dtypes = [U.dtype, V.dtype] + ([] if S is None else [S.dtype])
        backend = backend_name(U)
        super().__init__(
            (U.shape[0], V.shape[0]),
            _result_dtype(backend, dtypes),
            tags=auto | set(tags or ()),
            backend=backend,
            device=device_of(U),
        )
        if backend == "torch":  # torch matmul does not promote: one dtype for all factors
            U, V = xp.astype(U, self.dtype), xp.astype(V, self.dtype)
            S = None if S is None else xp.astype(S, self.dtype)
        self._U, self._S, self._V, self._sym = U, S, V, sym
        self._UH = _conj(xp, U).T
        self._VH = self._UH if sym else _conj(xp, V).T
        self._Sc = None if S is None else _conj(xp, S)

    def _matvec(self, x):
        t = self._VH @ x
        return self._U @ (t if self._S is None else self._S * t)

    def _matmat(self, X):
        t = self._VH @ X
        return self._U @ (t if self._S is None else self._S[:, None] * t)

    def _rmatvec(self, y):
        t = self._UH @ y
        return self._V @ (t if self._S is None else self._Sc * t)

    def _rmatmat(self, Y):
        t = self._UH @ Y
        return self._V @ (t if self._S is None else self._Sc[:, None] * t)

    def _to(self, backend, device, dtype):
        def cv(a):
            return convert(a, backend, device, dtype)

        return LowRank(cv(self._U), cv(self._S), None if self._sym else cv(self._V), tags=self.tags)


@materialize.register
def _(op: LowRank):
    US = op._U if op._S is None else op._U * op._S[None, :]
    return US @ op._VH


@diagonal.register
def _(op: LowRank):
    k = min(op.shape)
    US = op._U[:k] if op._S is None else op._U[:k] * op._S[None, :]
    return op.xp.sum(US * op._VH.T[:k], axis=1)


# ----------------------------------------------------------------------------- FunctionOperator
class FunctionOperator(LinearOperator):
    """An operator from callables.

    Parameters
    ----------
    shape : (m, n)
    matvec : callable
        ``x (n,) -> (m,)``.
    rmatvec : callable, optional
        ``y (m,) -> (n,)``, the adjoint ``A^H y``; without it (and ``rmatmat``) ``A.H`` fails on use.
    matmat, rmatmat : callable, optional
        Blocked versions ``(n, k) -> (m, k)`` / ``(m, k) -> (n, k)``; default: column loops.
    dtype : dtype or name, optional
        The operator's dtype. Not given, the operator is real: float64 (numpy) or torch's
        default dtype (torch), and every result of the callables is checked: a complex one
        raises a ``TypeError`` naming its dtype and asking for ``dtype=``. A complex
        operator labelled real would be wrong silently (``A.T`` of a real operator is
        ``A.H``, so it would conjugate). Unlike scipy, the dtype is not inferred by calling
        ``matvec`` on a probe vector: that would run the callable (an expensive solve, a
        counted evaluation) when the operator is built.
    tags : iterable of str, optional
    backend, device : where the callables expect and return arrays.
    """

    def __init__(
        self,
        shape,
        matvec: Callable,
        rmatvec: Callable | None = None,
        *,
        matmat: Callable | None = None,
        rmatmat: Callable | None = None,
        dtype: Any = None,
        tags=None,
        backend: str = "numpy",
        device: Any = None,
    ) -> None:
        self._checked = dtype is None
        if dtype is None and backend == "torch":
            dtype = optional_import("torch", "FunctionOperator(backend='torch')").get_default_dtype()
        super().__init__(shape, dtype, tags=tags, backend=backend, device=device)
        self._mv, self._rmv, self._mm, self._rmm = matvec, rmatvec, matmat, rmatmat

    def _real(self, out, name: str):
        """``out``, after checking that a callable of an operator without a given dtype returned no complex result."""
        if self._checked and _is_complex(getattr(out, "dtype", np.float64)):
            got, own = str(out.dtype).removeprefix("torch."), str(self.dtype).removeprefix("torch.")
            raise TypeError(
                f"FunctionOperator: {name} returned {got} values, but the operator was built without dtype and is "
                f"{own}; pass dtype={got!r} (or dtype={own!r} to apply a real operator to complex vectors)"
            )
        return out

    def _matvec(self, x):
        return self._real(self._mv(x), "matvec")

    def _matmat(self, X):
        return self._real(self._mm(X), "matmat") if self._mm is not None else super()._matmat(X)

    def _rmatvec(self, y):
        if self._rmv is not None:
            return self._real(self._rmv(y), "rmatvec")
        if self._rmm is not None:
            return self._real(self._rmm(y[:, None]), "rmatmat")[:, 0]
        raise NotImplementedError("this FunctionOperator was built without rmatvec/rmatmat; its adjoint is unknown")

    def _rmatmat(self, Y):
        if self._rmm is not None:
            return self._real(self._rmm(Y), "rmatmat")
        if self._rmv is None:
            raise NotImplementedError("this FunctionOperator was built without rmatvec/rmatmat; its adjoint is unknown")
        return super()._rmatmat(Y)

    def _to(self, backend, device, dtype):
        """The callables stay where they are; inputs and outputs are converted around them."""
        src = (self.backend, None if self.backend == "numpy" else self.device)
        label = dtype if dtype is not None else str(self.dtype).removeprefix("torch.")
        # without a given dtype the outputs keep theirs, so that the check still sees a complex one
        checked = self._checked and dtype is None
        cast = None if checked else label

        def wrap(f):
            if f is None:
                return None
            return lambda a: convert(f(convert(a, *src)), backend, device, cast)

        moved = FunctionOperator(
            self.shape,
            wrap(self._mv),
            wrap(self._rmv),
            matmat=wrap(self._mm),
            rmatmat=wrap(self._rmm),
            dtype=label,
            tags=self.tags,
            backend=backend,
            device=device,
        )
        moved._checked = checked
        return moved


# ----------------------------------------------------------------------------- aslinearoperator
def aslinearoperator(obj, tags=None) -> LinearOperator:
    """``obj`` as an optkit :class:`LinearOperator`.

    Accepts an optkit operator (returned as is, or as a copy carrying ``tags`` in addition),
    a 2-D numpy array (:class:`Dense`), a scipy.sparse matrix or array (:class:`Sparse`), a
    torch tensor (dense: :class:`Dense`, sparse: :class:`Sparse`) or a
    :class:`scipy.sparse.linalg.LinearOperator` (wrapped as a :class:`FunctionOperator`).

    Raises
    ------
    TypeError
        For any other type, naming it.
    """
    if isinstance(obj, LinearOperator):
        return obj.with_tags(tags) if tags else obj
    if isinstance(obj, np.ndarray):
        return Dense(obj, tags=tags)
    if sp.issparse(obj):
        return Sparse(obj, tags=tags)
    if is_torch(obj):
        return Dense(obj, tags=tags) if obj.layout == torch_or_none().strided else Sparse(obj, tags=tags)
    from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator

    if isinstance(obj, ScipyLinearOperator):
        return FunctionOperator(
            obj.shape,
            obj.matvec,
            obj.rmatvec,
            matmat=obj.matmat,
            rmatmat=obj.rmatmat,
            dtype=obj.dtype,
            tags=tags,
        )
    raise TypeError(
        f"cannot make a linear operator from an object of type {type(obj).__module__}.{type(obj).__name__}; "
        "expected an optkit LinearOperator, a numpy array, a scipy.sparse matrix/array, a torch tensor "
        "or a scipy.sparse.linalg.LinearOperator"
    )
