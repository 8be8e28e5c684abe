"""numba kernels of ``bcd``: sparse block updates, block Gram matrices, Gram-form coordinate sweeps.

A block update ``delta_b`` changes the predictions ``z = A x`` only on the rows where a
column of the block has an entry; :func:`csc_block_product` finds those rows from the CSC
arrays and :func:`csr_rows_transpose_product` adds the change of the datafit's derivative on
them back into the full gradient through the CSR arrays, so one update costs the entries of
the touched rows instead of a pass over ``A``. :func:`weighted_gram` forms a large block's
``A_b^T D A_b`` from the rows; :func:`minimize_gram_l1` minimises an L1-penalised quadratic
model in Gram form (the proximal Newton update's inner solve). Compiled on first use and
cached on disk.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "csc_block_product",
    "csr_rows_transpose_product",
    "empty_marker",
    "minimize_gram_l1",
    "weighted_gram",
    "weighted_gram_columns",
]


@numba.njit(cache=True)
def csc_block_product(indptr, indices, data, block, delta, marker, rows_out, values_out):  # pragma: no cover - numba
    """``A[:, block] @ delta`` restricted to its support.

    Parameters
    ----------
    indptr, indices, data : arrays
        ``A`` (m, n) in CSC form (int32/int64 indices, float64 data).
    block : int64 array (b,)
        Column indices.
    delta : float64 array (b,)
        The change of ``x`` on ``block``.
    marker : int64 array (m,)
        Workspace, all ``-1`` on entry and on return (position of a row in ``rows_out``).
    rows_out, values_out : arrays (m,)
        Workspace receiving the touched rows and the product on them.

    Returns
    -------
    int
        The number ``k`` of touched rows: ``rows_out[:k]``, ``values_out[:k]``.
    """
    count = 0
    for s in range(block.shape[0]):
        j = block[s]
        step = delta[s]
        for p in range(indptr[j], indptr[j + 1]):
            row = indices[p]
            slot = marker[row]
            if slot < 0:
                slot = count
                marker[row] = slot
                rows_out[slot] = row
                values_out[slot] = 0.0
                count += 1
            values_out[slot] += data[p] * step
    for s in range(count):
        marker[rows_out[s]] = -1
    return count


@numba.njit(cache=True)
def csr_rows_transpose_product(indptr, indices, data, rows, weights, out):  # pragma: no cover - numba
    """``out += A[rows, :]^T weights`` for ``A`` in CSR form (adds in place)."""
    for s in range(rows.shape[0]):
        row = rows[s]
        w = weights[s]
        if w == 0.0:
            continue
        for p in range(indptr[row], indptr[row + 1]):
            out[indices[p]] += data[p] * w


def empty_marker(m: int) -> np.ndarray:
    """The ``marker`` workspace of :func:`csc_block_product` for ``m`` rows."""
    return np.full(m, -1, dtype=np.int64)


@numba.njit(cache=True)
def weighted_gram(indptr, indices, data, position, weights, size):  # pragma: no cover - numba
    """``A_W^T diag(weights) A_W`` from ``A``'s CSR arrays; ``position[j]`` is column ``j``'s index in ``W``
    or -1. Costs ``O(nnz(A) + sum_i nnz_W(row i)^2)``: each row adds the outer product of its entries in ``W``."""
    H = np.zeros((size, size))
    slots = np.empty(size, dtype=np.int64)
    values = np.empty(size)
    for i in range(indptr.shape[0] - 1):
        count = 0
        for p in range(indptr[i], indptr[i + 1]):
            k = position[indices[p]]
            if k >= 0:
                slots[count] = k
                values[count] = data[p]
                count += 1
        w = weights[i]
        for a in range(count):
            scaled = w * values[a]
            for b in range(a, count):
                H[slots[a], slots[b]] += scaled * values[b]
    # each row added only one of (k, l) and (l, k): fold the two triangles into a symmetric matrix
    for k in range(size):
        for l in range(k + 1, size):
            total = H[k, l] + H[l, k]
            H[k, l] = total
            H[l, k] = total
    return H


@numba.njit(cache=True)
def weighted_gram_columns(indptr, indices, data, block, weights, scratch):  # pragma: no cover - numba
    """``A_W^T diag(weights) A_W`` from ``A``'s CSC arrays: column ``k`` of the block is scattered into the
    zeroed ``scratch`` (m,) and gathered against columns ``k..`` of the block, ``O(|W| nnz(A_W) / 2)``;
    ``scratch`` is zero again on return."""
    size = block.shape[0]
    H = np.zeros((size, size))
    for k in range(size):
        j = block[k]
        for p in range(indptr[j], indptr[j + 1]):
            scratch[indices[p]] = weights[indices[p]] * data[p]
        for l in range(k, size):
            other = block[l]
            total = 0.0
            for p in range(indptr[other], indptr[other + 1]):
                total += scratch[indices[p]] * data[p]
            H[k, l] = total
            H[l, k] = total
        for p in range(indptr[j], indptr[j + 1]):
            scratch[indices[p]] = 0.0
    return H


@numba.njit(cache=True, inline="always")
def _coordinate_step(v_j: float, grad_j: float, h_jj: float, lam: float, nonneg: bool) -> float:  # pragma: no cover
    """The exact minimiser along ``v_j`` of ``grad_j d + h_jj d^2 / 2 + lam |v_j + d|`` (or the
    non-negative variant); returns the new ``v_j``."""
    z = v_j - grad_j / h_jj
    t = lam / h_jj
    if nonneg:
        return max(z - t, 0.0)
    if z > t:
        return z - t
    if z < -t:
        return z + t
    return 0.0


@numba.njit(cache=True)
def _update(H, grad, v, j, new):  # pragma: no cover - numba
    d = new - v[j]
    v[j] = new
    row = H[j]
    for i in range(grad.shape[0]):
        grad[i] += row[i] * d


@numba.njit(cache=True)
def _minimize(H, grad, v, lam, nonneg, max_sweeps, rtol):  # pragma: no cover - numba
    n = v.shape[0]
    first = 0.0
    for sweep in range(max_sweeps):
        largest = 0.0
        for j in range(n):
            h = H[j, j]
            if h <= 0.0:
                continue
            new = _coordinate_step(v[j], grad[j], h, lam, nonneg)
            d = new - v[j]
            if d != 0.0:
                # the exact step lowers q by h d^2 / 2: the sweep's largest decrease tells convergence
                largest = max(largest, 0.5 * h * d * d)
                _update(H, grad, v, j, new)
        if sweep == 0:
            first = largest
        if largest <= rtol * first:
            return sweep + 1
    return max_sweeps


def minimize_gram_l1(
    H: np.ndarray,
    v: np.ndarray,
    grad: np.ndarray,
    lam: float,
    *,
    nonneg: bool = False,
    max_sweeps: int = 1,
    rtol: float = 0.0,
) -> int:
    """Minimise ``v^T H v / 2 - c^T v + lam * |v|_1`` by cyclic coordinate sweeps, ``v`` and ``grad`` in place.

    ``c`` enters only through the gradient ``grad = H v - c``, which the sweeps keep up to date.

    Parameters
    ----------
    H : ndarray (n, n), float64, C-contiguous
        Symmetric positive semidefinite; a coordinate with ``H_jj = 0`` is left alone.
    v : ndarray (n,), float64
        The start, overwritten with the result.
    grad : ndarray (n,), float64
        ``H v - c`` at the start, kept equal to it (updated in place).
    lam : float
        The L1 weight, ``>= 0``.
    nonneg : bool
        Minimise over ``v >= 0`` with ``lam * sum(v)`` instead of ``lam * |v|_1``.
    max_sweeps : int
        At most this many sweeps over the ``n`` coordinates.
    rtol : float
        Stop after the first sweep whose largest decrease of ``q`` is at most ``rtol`` times
        the first sweep's (the model's own scale: no absolute tolerance to choose).

    Returns
    -------
    int
        Sweeps done.
    """
    return _minimize(H, grad, v, float(lam), bool(nonneg), int(max_sweeps), float(rtol))
