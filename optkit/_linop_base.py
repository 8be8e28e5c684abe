"""The :class:`LinearOperator` base class and its lazy algebra (sums, products, scaling, adjoints).

Public names are re-exported from :mod:`optkit.linop`; see there for the overview.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._linop_support import (
    TAGS,
    _normalize_tags,
    _as_scalar,
    _canon_dtype,
    _conj,
    _dummy,
    _is_complex,
    _is_real_scalar,
    _namespace,
    _result_dtype,
    _scipy_operator,
)
from .backend import is_torch

__all__ = ["TAGS", "LinearOperator"]



# ----------------------------------------------------------------------------- helpers
def _unify(ops: list[LinearOperator], dtype) -> list[LinearOperator]:
    """``ops`` converted to ``dtype`` on torch, whose kernels do not promote mixed dtypes."""
    return [op if op.backend == "numpy" or op.dtype == dtype else op.to(dtype=dtype) for op in ops]


def _is_adjoint_pair(A: LinearOperator, B: LinearOperator) -> bool:
    """Whether ``B`` is known to be ``A^H`` (without building any adjoint)."""
    if A is B:
        return "symmetric" in A.tags
    return (isinstance(A, _Adjoint) and A._op is B) or (isinstance(B, _Adjoint) and B._op is A)


def _rmv(op: LinearOperator, y):
    """``op^H y`` for a composite's part: the part itself when it is tagged symmetric (it may
    define no adjoint of its own, as ``A.H`` is then ``A``)."""
    return op._matvec(y) if "symmetric" in op._tags else op._rmatvec(y)


def _rmm(op: LinearOperator, Y):
    """``op^H Y`` for a composite's part, as :func:`_rmv`."""
    return op._matmat(Y) if "symmetric" in op._tags else op._rmatmat(Y)


def _common_backend(ops: Iterable[LinearOperator]) -> tuple[str, str]:
    places = {(op.backend, op.device) for op in ops}
    if len(places) > 1:
        raise TypeError(f"operators mix backends/devices {sorted(places)}; convert them with .to(...) first")
    return places.pop()


# ----------------------------------------------------------------------------- base class
class LinearOperator:
    """A linear map ``A: C^n -> C^m`` on numpy arrays or torch tensors (scipy's contract).

    Subclasses call ``super().__init__(shape, dtype, tags=..., backend=..., device=...)`` and
    implement ``_matvec`` or ``_matmat`` (each derives from the other) and, for the adjoint,
    ``_adjoint`` or ``_rmatvec``/``_rmatmat``. The private methods receive already
    shape-checked arrays of the operator's backend.

    Parameters
    ----------
    shape : tuple of 2 ints
        ``(m, n)``.
    dtype : numpy dtype (numpy backend) or torch dtype (torch backend), or a dtype name
    tags : iterable of str, optional
        Structure tags from :data:`TAGS`; ``symmetric`` and ``psd`` need a square shape.
    backend : {"numpy", "torch"}
    device : str, optional
        ``"cpu"`` for numpy; any torch device for torch (default ``"cpu"``).

    Notes
    -----
    Algebra is lazy: ``A + B``, ``A - B``, ``-A``, ``A @ B``, ``c * A``, ``A / c``, ``A.T``,
    ``A.H`` build new operators; ``A @ x`` (and ``A.dot(x)``) applies ``A`` to a vector
    ``(n,)`` or matrix ``(n, k)``. ``A * B`` and ``A * x`` are a ``TypeError``: use ``@``.

    Inputs follow scipy's contract: ``matvec`` and ``rmatvec`` take a vector ``(n,)`` or a
    column ``(n, 1)`` and return the same form; numpy operators take any array-like (lists,
    ``np.matrix``; converted with ``np.asarray``, results are plain arrays); torch operators
    take tensors only (a silent host-device copy would hide a bug); sparse matrices are
    refused (compose with ``aslinearoperator(S)`` instead).

    Adjoints: ``A.H`` is a light view that refers to ``A``; ``A`` keeps only a weak reference
    to it, so no reference cycle forms (scipy's gh-10634) and an operator is freed as soon as
    it is unreferenced, without the cycle collector. ``A.H.H is A`` holds, and ``A.H @ A`` is
    tagged psd.
    """

    __array_ufunc__ = None  # make ``ndarray @ A`` and ``np.float64(2) * A`` defer to us

    def __init__(self, shape, dtype, *, tags=None, backend: str = "numpy", device: Any = None) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 0:
            raise ValueError(f"shape must be a pair of non-negative ints, got {shape}")
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        dummy = _dummy(backend, device, None)
        self._shape = shape
        self._backend = backend
        self._device = str(dummy.device) if backend == "torch" else "cpu"
        self._dtype = _canon_dtype(backend, dtype)
        self._tags = _normalize_tags(tags, shape, self._dtype)
        cls = type(self)
        if cls._matvec is LinearOperator._matvec and cls._matmat is LinearOperator._matmat:
            raise TypeError(f"{cls.__name__} must implement _matvec or _matmat")

    def __getstate__(self) -> dict:
        # the cached namespace (a module) and the weak reference to the adjoint view do not
        # pickle, and a copy (with_tags) must not share the original's view, of other tags
        return {k: v for k, v in self.__dict__.items() if k not in ("_xp", "_H_view")}

    # --------------------------------------------------------------- properties
    shape = property(lambda self: self._shape, doc="``(m, n)``.")
    dtype = property(lambda self: self._dtype, doc="numpy dtype (numpy backend) or torch dtype.")
    tags = property(lambda self: self._tags, doc="frozenset of structure tags (see :data:`TAGS`).")
    backend = property(lambda self: self._backend, doc='``"numpy"`` or ``"torch"``.')
    device = property(lambda self: self._device, doc='``"cpu"`` or a torch device string such as ``"cuda:0"``.')
    ndim = 2

    @property
    def xp(self):
        """The array-API namespace of this operator's backend."""
        xp = self.__dict__.get("_xp")
        if xp is None:
            xp = self.__dict__["_xp"] = _namespace(self._backend, self._device)
        return xp

    def with_tags(self, tags) -> LinearOperator:
        """A shallow copy of this operator carrying ``tags`` in addition to its own."""
        import copy

        new = copy.copy(self)
        extra = _normalize_tags(tags, self._shape, self._dtype)
        new._tags = _normalize_tags(self._tags | extra, self._shape, self._dtype)
        return new

    # --------------------------------------------------------------- application
    def _operand(self, x, what: str):
        """``x`` as an array of this operator's backend, or a ``TypeError`` naming ``what``."""
        if sp.issparse(x):
            raise TypeError(
                f"{what}: sparse matrices are not accepted as operands; use aslinearoperator(S) and compose with @"
            )
        if self._backend == "numpy":
            if is_torch(x):
                raise TypeError(
                    f"{what}: a numpy operator takes numpy arrays, got a torch.Tensor; convert the operator "
                    "with .to('torch') or the tensor with .numpy()"
                )
            return np.asarray(x)
        if not is_torch(x):
            raise TypeError(
                f"{what}: a torch operator takes torch tensors on {self._device}, got {type(x).__name__}; "
                "convert it with torch.as_tensor"
            )
        return x

    def matvec(self, x):
        """``A @ x`` for ``x`` of shape ``(n,)`` or ``(n, 1)``; returns ``(m,)`` or ``(m, 1)``.

        Numpy operators take array-likes; torch operators take tensors (see the class notes).
        """
        x = self._operand(x, "matvec")
        n = self._shape[1]
        s = tuple(x.shape)
        if s == (n,):
            return self._matvec(x)
        if s == (n, 1):
            return self._matmat(x)
        raise ValueError(f"matvec: operator of shape {self._shape} expects x of shape ({n},) or ({n}, 1), got {s}")

    def matmat(self, X):
        """``A @ X`` for ``X`` of shape ``(n, k)``; returns shape ``(m, k)``."""
        X = self._operand(X, "matmat")
        s = tuple(X.shape)
        if len(s) != 2 or s[0] != self._shape[1]:
            raise ValueError(
                f"matmat: operator of shape {self._shape} expects X of shape ({self._shape[1]}, k), got {s}"
            )
        return self._matmat(X)

    def rmatvec(self, y):
        """``A^H @ y`` for ``y`` of shape ``(m,)`` or ``(m, 1)``; returns ``(n,)`` or ``(n, 1)``."""
        y = self._operand(y, "rmatvec")
        m = self._shape[0]
        s = tuple(y.shape)
        if s == (m,):
            return self._rmatvec(y)
        if s == (m, 1):
            return self._rmatmat(y)
        raise ValueError(f"rmatvec: operator of shape {self._shape} expects y of shape ({m},) or ({m}, 1), got {s}")

    def rmatmat(self, Y):
        """``A^H @ Y`` for ``Y`` of shape ``(m, k)``; returns shape ``(n, k)``."""
        Y = self._operand(Y, "rmatmat")
        s = tuple(Y.shape)
        if len(s) != 2 or s[0] != self._shape[0]:
            raise ValueError(
                f"rmatmat: operator of shape {self._shape} expects Y of shape ({self._shape[0]}, k), got {s}"
            )
        return self._rmatmat(Y)

    def dot(self, x):
        """scipy's ``dot``: the product ``A @ x`` for an operator ``x``, ``x * A`` for a scalar,
        else ``matvec`` for ``(n,)`` or ``(n, 1)`` and ``matmat`` for ``(n, k)``."""
        if isinstance(x, LinearOperator):
            return _Product(self, x)
        c = _as_scalar(x)
        if c is not None:
            return _Scaled(self, c)
        x = self._operand(x, "dot")
        if x.ndim == 1 or (x.ndim == 2 and x.shape[1] == 1):
            return self.matvec(x)
        if x.ndim == 2:
            return self.matmat(x)
        raise ValueError(
            f"dot expects an operator, a scalar, or an array of 1 or 2 dimensions, got shape {tuple(x.shape)}"
        )

    # defaults: each of _matvec/_matmat from the other, the adjoint from whatever exists
    def _matvec(self, x):
        return self._matmat(x[:, None])[:, 0]

    def _matmat(self, X):
        xp = self.xp
        if X.shape[1] == 0:
            return xp.zeros((self._shape[0], 0), dtype=self._dtype, device=X.device)
        return xp.stack([self._matvec(X[:, j]) for j in range(X.shape[1])], axis=1)

    def _overrides(self, name: str) -> bool:
        return getattr(type(self), name) is not getattr(LinearOperator, name)

    def _rmatvec(self, y):
        if self._overrides("_rmatmat"):
            return self._rmatmat(y[:, None])[:, 0]
        if self._overrides("_adjoint"):
            return self._adjoint()._matvec(y)
        raise NotImplementedError(f"{type(self).__name__} defines no adjoint: implement _adjoint, _rmatvec or _rmatmat")

    def _rmatmat(self, Y):
        if self._overrides("_rmatvec"):
            xp = self.xp
            if Y.shape[1] == 0:
                return xp.zeros((self._shape[1], 0), dtype=self._dtype, device=Y.device)
            return xp.stack([self._rmatvec(Y[:, j]) for j in range(Y.shape[1])], axis=1)
        if self._overrides("_adjoint"):
            return self._adjoint()._matmat(Y)
        raise NotImplementedError(f"{type(self).__name__} defines no adjoint: implement _adjoint, _rmatvec or _rmatmat")

    def _adjoint(self) -> LinearOperator:
        """scipy's hook: a subclass may return its adjoint as an operator (used by ``_rmatvec``
        and ``_rmatmat`` when it defines neither, and built once per ``A.H`` view)."""
        return _Adjoint(self)

    # --------------------------------------------------------------- adjoint / transpose
    @property
    def H(self) -> LinearOperator:
        """The (lazy) conjugate transpose ``A^H``: ``A`` itself when tagged symmetric, else a
        view that refers to ``A``. ``A`` keeps only a weak reference to its view (no cycle), so
        ``A.H`` returns the same view while it lives, and ``A.H.H`` is ``A``."""
        if "symmetric" in self._tags:
            return self
        ref = self.__dict__.get("_H_view")
        adj = None if ref is None else ref()
        if adj is None:
            adj = _Adjoint(self)
            self._H_view = weakref.ref(adj)
        return adj

    def adjoint(self) -> LinearOperator:
        """Same as :attr:`H`."""
        return self.H

    @property
    def T(self) -> LinearOperator:
        """The (lazy) transpose ``A^T`` (equal to ``A.H`` for real operators)."""
        if not _is_complex(self._dtype):
            return self.H
        return _Transposed(self)

    def transpose(self) -> LinearOperator:
        """Same as :attr:`T`."""
        return self.T

    # --------------------------------------------------------------- algebra
    def __matmul__(self, other):
        if isinstance(other, LinearOperator):
            return _Product(self, other)
        if _as_scalar(other) is not None:
            raise TypeError("A @ c with a scalar c is not defined; use c * A")
        if not (hasattr(other, "shape") or isinstance(other, (list, tuple))):
            return NotImplemented
        x = self._operand(other, "A @ x")
        if x.ndim == 1:
            return self.matvec(x)
        if x.ndim == 2:
            return self.matmat(x)
        raise ValueError(f"A @ x needs x of 1 or 2 dimensions, got shape {tuple(x.shape)}")

    def __rmatmul__(self, other):
        if _as_scalar(other) is not None:
            raise TypeError("c @ A with a scalar c is not defined; use c * A")
        if not (hasattr(other, "shape") or isinstance(other, (list, tuple))):
            return NotImplemented
        x = self._operand(other, "x @ A")
        if x.ndim == 1:
            return self.T.matvec(x)
        if x.ndim == 2:
            return self.T.matmat(x.T).T
        raise ValueError(f"x @ A needs x of 1 or 2 dimensions, got shape {tuple(x.shape)}")

    def __mul__(self, other):
        c = _as_scalar(other)
        if c is not None:
            return _Scaled(self, c)
        if isinstance(other, LinearOperator):
            raise TypeError("A * B of two operators is not defined; use A @ B for the operator product")
        if hasattr(other, "shape"):
            raise TypeError("A * x is not defined for arrays; use A @ x or A.matvec(x)")
        return NotImplemented

    def __rmul__(self, other):
        c = _as_scalar(other)
        if c is not None:
            return _Scaled(self, c)
        if hasattr(other, "shape"):
            raise TypeError("x * A is not defined for arrays; use x @ A or A.T @ x")
        return NotImplemented

    def __truediv__(self, other):
        c = _as_scalar(other)
        if c is None:
            raise TypeError(f"an operator can only be divided by a scalar, got {type(other).__name__}")
        return _Scaled(self, 1 / c)

    def __neg__(self):
        return _Scaled(self, -1)

    def __pos__(self):
        return self

    def __add__(self, other):
        if not isinstance(other, LinearOperator):
            raise TypeError(
                f"can only add an operator to an operator, got {type(other).__name__}"
                " (for A + c*I use A + c * Identity(n))"
            )
        return _Sum([self, other])

    def __radd__(self, other):
        if isinstance(other, int) and other == 0:  # lets sum([A, B, C]) work
            return self
        return self.__add__(other)

    def __sub__(self, other):
        if not isinstance(other, LinearOperator):
            raise TypeError(f"can only subtract an operator from an operator, got {type(other).__name__}")
        return _Sum([self, -other])

    # --------------------------------------------------------------- conversion
    def to(self, backend: str | None = None, device: Any = None, dtype: Any = None) -> LinearOperator:
        """The same operator on another ``backend`` (``"numpy"``/``"torch"``), ``device`` or ``dtype``.

        ``None`` keeps the current value (``device`` becomes ``"cpu"`` when moving to numpy,
        and defaults to ``"cpu"`` when moving to torch). Composite operators convert their parts.
        """
        backend = backend or self._backend
        if device is None and backend == self._backend:
            device = self._device if backend == "torch" else None
        return self._to(backend, device, dtype)

    def _to(self, backend, device, dtype) -> LinearOperator:
        raise NotImplementedError(f"{type(self).__name__} does not implement .to(); override _to")

    def to_scipy(self):
        """This operator as a :class:`scipy.sparse.linalg.LinearOperator` on numpy arrays.

        Torch operators convert their inputs to tensors and outputs back to numpy on each call.
        """
        return _scipy_operator(self)

    def __repr__(self) -> str:
        tags = ", tags=" + "{" + ", ".join(sorted(self._tags)) + "}" if self._tags else ""
        dev = f", device={self._device!r}" if self._backend == "torch" else ""
        return f"<{type(self).__name__} {self._shape[0]}x{self._shape[1]} {self._dtype} {self._backend}{dev}{tags}>"


# ----------------------------------------------------------------------------- composites
def _init_transposed_view(view: LinearOperator, op: LinearOperator) -> None:
    """The attributes of a view of shape ``op.shape[::-1]`` (adjoint, transpose), copied from
    the already validated ``op``: views are built on every ``.H`` of a loop, so they skip the
    checks and dtype normalisation of ``LinearOperator.__init__``."""
    view._shape = op.shape[::-1]
    view._dtype, view._backend, view._device = op.dtype, op.backend, op.device
    view._tags = op.tags if op.shape[0] == op.shape[1] else op.tags - {"orthonormal"}


class _Adjoint(LinearOperator):
    """``A^H``, a view that refers to ``A`` and applies its ``_rmatvec``/``_rmatmat``.

    When ``A`` defines its adjoint through scipy's ``_adjoint`` hook, that operator is built
    on first use and kept here, in the view, so ``A`` still refers to nothing of its adjoint.
    """

    def __init__(self, op: LinearOperator) -> None:
        _init_transposed_view(self, op)
        self._op = op
        self._built: LinearOperator | None = None

    @property
    def H(self) -> LinearOperator:
        return self._op

    def _hooked(self) -> LinearOperator | None:
        """The operator ``A._adjoint()`` returns when ``A`` overrides that hook, else None."""
        if self._built is None and self._op._overrides("_adjoint"):
            self._built = self._op._adjoint()
        return self._built

    def _matvec(self, x):
        built = self._hooked()
        return self._op._rmatvec(x) if built is None else built._matvec(x)

    def _matmat(self, X):
        built = self._hooked()
        return self._op._rmatmat(X) if built is None else built._matmat(X)

    def _rmatvec(self, y):
        return self._op._matvec(y)

    def _rmatmat(self, Y):
        return self._op._matmat(Y)

    def _adjoint(self):
        return self._op

    def _to(self, backend, device, dtype):
        return self._op.to(backend, device, dtype).H


class _Transposed(LinearOperator):
    """``A^T = conj(A^H)`` for complex ``A`` (real operators use ``A.H``)."""

    def __init__(self, op: LinearOperator) -> None:
        _init_transposed_view(self, op)
        self._op = op

    def _matvec(self, x):
        xp = self.xp
        return _conj(xp, _rmv(self._op, _conj(xp, x)))

    def _matmat(self, X):
        xp = self.xp
        return _conj(xp, _rmm(self._op, _conj(xp, X)))

    def _rmatvec(self, y):
        xp = self.xp
        return _conj(xp, self._op._matvec(_conj(xp, y)))

    def _rmatmat(self, Y):
        xp = self.xp
        return _conj(xp, self._op._matmat(_conj(xp, Y)))

    @property
    def T(self):
        return self._op

    def _to(self, backend, device, dtype):
        return self._op.to(backend, device, dtype).T


class _Sum(LinearOperator):
    """``A_1 + A_2 + ...`` (nested sums are flattened)."""

    def __init__(self, ops: list[LinearOperator]) -> None:
        flat: list[LinearOperator] = []
        for op in ops:
            flat.extend(op._ops if type(op) is _Sum else [op])
        shapes = {op.shape for op in flat}
        if len(shapes) > 1:
            raise ValueError(f"cannot add operators of shapes {[op.shape for op in flat]}")
        backend, device = _common_backend(flat)
        tags = set(TAGS - {"low_rank", "orthonormal"})
        for op in flat:
            tags &= op.tags
        dtype = _result_dtype(backend, [op.dtype for op in flat])
        super().__init__(flat[0].shape, dtype, tags=tags, backend=backend, device=device)
        self._ops = _unify(flat, dtype)

    def _matvec(self, x):
        ops = self._ops
        y = ops[0]._matvec(x)
        for op in ops[1:]:
            y = y + op._matvec(x)  # not in place: an operator may return an internal buffer
        return y

    def _matmat(self, X):
        ops = self._ops
        Y = ops[0]._matmat(X)
        for op in ops[1:]:
            Y = Y + op._matmat(X)
        return Y

    def _rmatvec(self, y):
        ops = self._ops
        x = _rmv(ops[0], y)
        for op in ops[1:]:
            x = x + _rmv(op, y)
        return x

    def _rmatmat(self, Y):
        ops = self._ops
        X = _rmm(ops[0], Y)
        for op in ops[1:]:
            X = X + _rmm(op, Y)
        return X

    def _to(self, backend, device, dtype):
        return _Sum([op.to(backend, device, dtype) for op in self._ops])


class _Scaled(LinearOperator):
    """``c * A`` for a Python scalar ``c``."""

    def __init__(self, op: LinearOperator, c) -> None:
        if type(op) is _Scaled:
            op, c = op._op, op._c * c
        tags = set(op.tags)
        if not _is_real_scalar(c):
            tags -= {"symmetric", "psd"}
        elif c.real < 0:
            tags -= {"psd"}
        if abs(c) != 1:
            tags -= {"orthonormal"}
        dtype = _result_dtype(op.backend, [op.dtype], [c])
        super().__init__(op.shape, dtype, tags=tags, backend=op.backend, device=op.device)
        self._op, self._c = _unify([op], dtype)[0], c
        self._c_conj = c.conjugate() if isinstance(c, complex) else c

    def _matvec(self, x):
        return self._op._matvec(x) * self._c

    def _matmat(self, X):
        return self._op._matmat(X) * self._c

    def _rmatvec(self, y):
        return _rmv(self._op, y) * self._c_conj

    def _rmatmat(self, Y):
        return _rmm(self._op, Y) * self._c_conj

    def _to(self, backend, device, dtype):
        return _Scaled(self._op.to(backend, device, dtype), self._c)


class _Product(LinearOperator):
    """``A @ B`` applied as ``A(Bx)``."""

    def __init__(self, A: LinearOperator, B: LinearOperator) -> None:
        if A.shape[1] != B.shape[0]:
            raise ValueError(f"cannot compose operators of shapes {A.shape} @ {B.shape}")
        backend, device = _common_backend([A, B])
        tags = set()
        if "diagonal" in A.tags and "diagonal" in B.tags:
            tags |= {"diagonal"} | ({"symmetric", "psd"} & A.tags & B.tags)
        if "orthonormal" in A.tags and "orthonormal" in B.tags:
            tags.add("orthonormal")
        if "low_rank" in A.tags or "low_rank" in B.tags:
            tags.add("low_rank")
        if _is_adjoint_pair(A, B):
            tags |= {"symmetric", "psd"}  # A A^H and A^H A are Hermitian PSD
        dtype = _result_dtype(backend, [A.dtype, B.dtype])
        super().__init__((A.shape[0], B.shape[1]), dtype, tags=tags, backend=backend, device=device)
        self._A, self._B = _unify([A, B], dtype)

    def _matvec(self, x):
        return self._A._matvec(self._B._matvec(x))

    def _matmat(self, X):
        return self._A._matmat(self._B._matmat(X))

    def _rmatvec(self, y):
        return _rmv(self._B, _rmv(self._A, y))

    def _rmatmat(self, Y):
        return _rmm(self._B, _rmm(self._A, Y))

    def _to(self, backend, device, dtype):
        return _Product(self._A.to(backend, device, dtype), self._B.to(backend, device, dtype))
