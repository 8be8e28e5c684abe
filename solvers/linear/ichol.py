"""Zero-fill incomplete Cholesky IC(0) of a sparse symmetric positive definite matrix.

``A ~ L L^T`` with ``L`` lower triangular and restricted to the sparsity pattern of
``tril(A)``. The factorisation and the two triangular solves that apply the
preconditioner ``M^-1 = (L L^T)^-1`` are numba-compiled loops over CSR arrays (compiled
on first use and cached on disk).

Breakdown. IC(0) of an SPD matrix may meet a non-positive pivot (it cannot for an
M-matrix, e.g. any Poisson matrix of :mod:`problems.linear`). With ``shift="auto"`` (the
default) the factorisation is then restarted on the diagonally shifted
``A + alpha diag(A)`` for ``alpha = 1e-3, 2e-3, 4e-3, ...`` (Manteuffel's shift) until it
succeeds, and the ``alpha`` used is reported as :attr:`IChol.shift`; with a number it
factors ``A + shift * diag(A)`` once and raises :class:`IcholBreakdown` on a
non-positive pivot.
"""

from __future__ import annotations

import numbers

import numba
import numpy as np
import scipy.sparse as sp

from optkit.linop import FunctionOperator

__all__ = ["IChol", "IcholBreakdown", "ichol"]

_MAX_SHIFT = 1e3


class IcholBreakdown(ArithmeticError):
    """IC(0) met a non-positive pivot."""

    def __init__(self, row: int, pivot: float, shift: float) -> None:
        super().__init__(
            f"incomplete Cholesky broke down: pivot {pivot:.3g} <= 0 in row {row} "
            f"(diagonal shift alpha={shift:g}); pass shift='auto' or a larger shift"
        )
        self.row, self.pivot, self.shift = row, pivot, shift


@numba.njit(cache=True)
def _ic0(indptr, indices, data):  # pragma: no cover - compiled
    """Factor in place the CSR lower triangle (sorted indices, diagonal last in each row).

    Row-oriented: for each stored ``(i, k)``, ``k < i``,
    ``L[i,k] = (A[i,k] - sum_{j<k} L[i,j] L[k,j]) / L[k,k]``, the sum running over the
    columns stored in both rows (a merge of two sorted lists); then
    ``L[i,i] = sqrt(A[i,i] - sum_{j<i} L[i,j]^2)``. Returns -1, or the row of the first
    non-positive pivot.
    """
    n = indptr.size - 1
    for i in range(n):
        start, diag = indptr[i], indptr[i + 1] - 1
        for p in range(start, diag):
            k = indices[p]
            s = data[p]
            # merge row i (entries before p) with row k (entries before its diagonal)
            a, b = start, indptr[k]
            bend = indptr[k + 1] - 1
            while a < p and b < bend:
                ca, cb = indices[a], indices[b]
                if ca == cb:
                    s -= data[a] * data[b]
                    a += 1
                    b += 1
                elif ca < cb:
                    a += 1
                else:
                    b += 1
            data[p] = s / data[bend]
        s = data[diag]
        for p in range(start, diag):
            s -= data[p] * data[p]
        if not s > 0.0:
            data[diag] = s
            return i
        data[diag] = np.sqrt(s)
    return -1


@numba.njit(cache=True)
def _solve_llt(lptr, lind, ldata, uptr, uind, udata, inv_diag, r):  # pragma: no cover - compiled
    """``(L L^T)^-1 r``: forward substitution by the rows of ``L`` (CSR, diagonal last in
    each row), then backward substitution by the rows of ``U = L^T`` (CSR, diagonal first),
    multiplying by the stored reciprocal diagonal rather than dividing."""
    n = lptr.size - 1
    y = np.empty(n, dtype=ldata.dtype)
    for i in range(n):
        s = r[i]
        for p in range(lptr[i], lptr[i + 1] - 1):
            s -= ldata[p] * y[lind[p]]
        y[i] = s * inv_diag[i]
    for i in range(n - 1, -1, -1):
        s = y[i]
        for p in range(uptr[i] + 1, uptr[i + 1]):
            s -= udata[p] * y[uind[p]]
        y[i] = s * inv_diag[i]
    return y


class IChol:
    """An IC(0) factor ``L`` (CSR, lower triangular) and the preconditioner it defines.

    Attributes
    ----------
    L : scipy.sparse.csr_matrix
        The factor, with the pattern of ``tril(A)``.
    shift : float
        The diagonal shift ``alpha`` of the matrix actually factored, ``A + alpha diag(A)``.
    """

    def __init__(self, L: sp.csr_matrix, shift: float) -> None:
        self.L = L
        self.shift = shift
        U = L.T.tocsr()
        U.sort_indices()
        self._U = U
        self._inv_diag = 1.0 / L.data[L.indptr[1:] - 1]

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``."""
        return self.L.shape

    def solve(self, r: np.ndarray) -> np.ndarray:
        """``(L L^T)^-1 r`` for a 1-D numpy array ``r``."""
        L, U = self.L, self._U
        r = np.ascontiguousarray(r, dtype=L.dtype)
        return _solve_llt(L.indptr, L.indices, L.data, U.indptr, U.indices, U.data, self._inv_diag, r)

    def as_operator(self) -> FunctionOperator:
        """The preconditioner ``(L L^T)^-1`` as a symmetric positive definite
        :class:`optkit.linop.FunctionOperator` (numpy only)."""
        return FunctionOperator(self.L.shape, self.solve, self.solve, dtype=self.L.dtype, tags=("symmetric", "psd"))


def _lower_with_diagonal(A: sp.spmatrix) -> sp.csr_matrix:
    if not sp.issparse(A) or A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"ichol needs a square scipy sparse matrix, got {type(A).__name__} {getattr(A, 'shape', '')}")
    if A.dtype.kind != "f":
        A = A.astype(np.float64)
    L = sp.tril(A, format="csr")
    L.sum_duplicates()
    L.sort_indices()
    L.eliminate_zeros()
    rows_last = L.indices[L.indptr[1:] - 1] if L.nnz else np.array([], dtype=L.indices.dtype)
    has_diag = (np.diff(L.indptr) > 0) & (rows_last == np.arange(L.shape[0]))
    if not has_diag.all():
        row = int(np.flatnonzero(~has_diag)[0])
        raise ValueError(f"ichol needs a nonzero diagonal; A[{row}, {row}] is zero or missing")
    return L


def ichol(A: sp.spmatrix, *, shift: float | str = "auto") -> IChol:
    """Zero-fill incomplete Cholesky factorisation of the SPD sparse matrix ``A``.

    Parameters
    ----------
    A : scipy sparse matrix, shape (n, n)
        Symmetric; only its lower triangle is read. A zero or missing diagonal entry is a
        ``ValueError``.
    shift : "auto" or float >= 0
        ``"auto"``: factor ``A``; on a non-positive pivot retry with ``A + alpha diag(A)``,
        ``alpha = 1e-3`` doubling each time. A number: factor ``A + shift diag(A)`` once and
        raise :class:`IcholBreakdown` on a non-positive pivot.

    Returns
    -------
    IChol
        ``.L`` (CSR), ``.shift``, ``.solve(r)`` and ``.as_operator()``.
    """
    auto = isinstance(shift, str)
    if auto and shift != "auto":
        raise ValueError(f"shift must be 'auto' or a number >= 0, got {shift!r}")
    if not auto and (isinstance(shift, bool) or not isinstance(shift, numbers.Real) or not 0 <= shift < np.inf):
        raise ValueError(f"shift must be 'auto' or a number >= 0, got {shift!r}")
    pattern = _lower_with_diagonal(A)
    diag_pos = pattern.indptr[1:] - 1
    diag = pattern.data[diag_pos].copy()
    alpha = 0.0 if auto else float(shift)
    while True:
        data = pattern.data.copy()
        data[diag_pos] = diag * (1.0 + alpha)
        row = _ic0(pattern.indptr, pattern.indices, data)
        if row < 0:
            L = sp.csr_matrix((data, pattern.indices, pattern.indptr), shape=pattern.shape)
            return IChol(L, alpha)
        if not auto or alpha >= _MAX_SHIFT:
            raise IcholBreakdown(int(row), float(data[pattern.indptr[row + 1] - 1]), alpha)
        alpha = 1e-3 if alpha == 0.0 else 2.0 * alpha
