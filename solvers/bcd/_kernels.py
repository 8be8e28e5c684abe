"""numba kernels for the sparse block updates of :mod:`solvers.bcd._objectives`.

A block update ``delta_b`` changes the predictions ``z = A x`` only on the rows where a
column of the block has an entry; these kernels find those rows from the CSC arrays and
add the change of the datafit's derivative on them back into the full gradient through
the CSR arrays, so one update costs the entries of the touched rows instead of a pass
over ``A``. Compiled on first use and cached on disk.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["csc_block_product", "csr_rows_transpose_product", "empty_marker"]


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
