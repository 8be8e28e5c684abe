"""Exact block solves ``Q_bb^{-1} r`` in linear time for blocks that induce a forest.

When the graph of ``Q_bb`` (edges = nonzero off-diagonal entries) is a forest, Gaussian belief
propagation with two sweeps per tree is exact (Nutini, Laradji and Schmidt, JMLR 2022; Bickson,
Gaussian belief propagation, 2008). Rooting each tree and ordering its nodes breadth first:

- upward sweep (leaves to root): a node ``c`` with parent ``p`` sends the precision message
  ``-Q_pc^2 / P_c`` and the potential message ``-Q_pc h_c / P_c``, where ``P_c = Q_cc + sum of
  the precision messages from its children`` and ``h_c = r_c + sum of their potential
  messages`` (this is Gaussian elimination of the leaves, which on a tree creates no fill);
- downward sweep (root to leaves): ``x_root = h_root / P_root`` and then
  ``x_c = (h_c - Q_cp x_p) / P_c``.

Every pivot ``P_c`` is a Schur complement pivot of ``Q_bb``, so all are positive exactly when
``Q_bb`` is positive definite; a non-positive one is reported as an error. The cost is
``O(sum over the block of the degrees in Q)`` (the symmetry check of ``Q_bb`` adds a factor of
its largest degree, a small constant here): the block's rows of ``Q`` are read once, and no
array of size ``n`` is initialised (membership uses the sparse-set trick on an uninitialised
position array). numpy backend; the loops are numba-compiled on first use and cached on disk.
"""

from __future__ import annotations

import numba
import numpy as np

from ._forest import as_csr, check_block

__all__ = ["induced_csr", "solve_forest"]

# Q must be symmetric; entries Q[i, j] and Q[j, i] may differ by this relative amount, the
# rounding left when Q is formed as a product (e.g. A^T A in sparse arithmetic)
_SYMMETRY_RTOL = 1e-12

_OK, _CYCLE, _ASYMMETRIC, _PIVOT = 0, 1, 2, 3


@numba.njit(cache=True)
def _induced_kernel(indptr, indices, data, block, n):  # pragma: no cover - compiled
    """CSR of the off-diagonal part of ``Q[block][:, block]`` (local numbering) and its diagonal.

    ``position[j] = k`` when ``block[k] == j``; an entry of the uninitialised array is trusted
    only when it points back to ``j``, so building the map costs ``O(|b|)``, not ``O(n)``.
    Stored zeros are dropped (they are not edges).
    """
    m = block.size
    position = np.empty(n, np.int64)
    for k in range(m):
        position[block[k]] = k
    sub_indptr = np.zeros(m + 1, np.int64)
    diag = np.zeros(m)
    for k in range(m):
        row = block[k]
        count = 0
        for p in range(indptr[row], indptr[row + 1]):
            q = position[indices[p]]
            if 0 <= q < m and block[q] == indices[p]:
                if q == k:
                    diag[k] += data[p]
                elif data[p] != 0.0:
                    count += 1
        sub_indptr[k + 1] = sub_indptr[k] + count
    sub_indices = np.empty(sub_indptr[m], np.int64)
    sub_data = np.empty(sub_indptr[m])
    for k in range(m):
        row = block[k]
        out = sub_indptr[k]
        for p in range(indptr[row], indptr[row + 1]):
            q = position[indices[p]]
            if 0 <= q < m and block[q] == indices[p] and q != k and data[p] != 0.0:
                sub_indices[out] = q
                sub_data[out] = data[p]
                out += 1
    return sub_indptr, sub_indices, sub_data, diag


def induced_csr(Q, block):
    """The principal submatrix ``Q_bb`` split into its off-diagonal CSR part and its diagonal.

    Parameters
    ----------
    Q : scipy sparse matrix or array, or ndarray of shape (n, n)
        Real square matrix.
    block : array_like of int, shape (m,)
        Distinct node indices; local index ``k`` stands for node ``block[k]``.

    Returns
    -------
    indptr : ndarray of int64, shape (m + 1,)
    indices : ndarray of int64, shape (e,)
        Local column indices of the nonzero off-diagonal entries of ``Q_bb``, in the column
        order of ``Q``'s rows.
    data : ndarray of float64, shape (e,)
    diag : ndarray of float64, shape (m,)
        ``Q[block[k], block[k]]``.
    """
    csr = as_csr(Q)
    nodes = check_block(block, csr.shape[0])
    data = np.asarray(csr.data, dtype=np.float64)
    return _induced_kernel(csr.indptr, csr.indices, data, nodes, csr.shape[0])


@numba.njit(cache=True)
def _symmetry_defect(indptr, indices, data, rtol):  # pragma: no cover - compiled
    """First local row whose entries are not mirrored (pattern and value), or -1."""
    m = indptr.size - 1
    for i in range(m):
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            mirrored = False
            for s in range(indptr[j], indptr[j + 1]):
                if indices[s] == i:
                    mirrored = abs(data[s] - data[p]) <= rtol * max(abs(data[s]), abs(data[p]))
                    break
            if not mirrored:
                return i
    return -1


@numba.njit(cache=True)
def _tree_solve_kernel(indptr, indices, data, diag, rhs):  # pragma: no cover - compiled
    """Two-sweep Gaussian BP on each tree of a forest given by a symmetric local CSR.

    Returns ``(status, node, x)``: status ``_OK``, ``_CYCLE`` (``node`` closes a cycle) or
    ``_PIVOT`` (``node`` has a non-positive pivot).
    """
    m = diag.size
    x = np.zeros(m)
    visited = np.zeros(m, np.bool_)
    order = np.empty(m, np.int64)
    parent = np.full(m, -1, np.int64)
    parent_weight = np.zeros(m)
    head = 0
    tail = 0
    for root in range(m):
        if visited[root]:
            continue
        visited[root] = True
        order[tail] = root
        tail += 1
        while head < tail:
            u = order[head]
            head += 1
            for p in range(indptr[u], indptr[u + 1]):
                v = indices[p]
                if v == parent[u]:
                    continue
                # an already reached node other than the parent closes a cycle
                if visited[v]:
                    return _CYCLE, u, x
                visited[v] = True
                parent[v] = u
                parent_weight[v] = data[p]
                order[tail] = v
                tail += 1
    precision = diag.copy()
    potential = rhs.copy()
    for t in range(m - 1, -1, -1):
        c = order[t]
        if not precision[c] > 0.0:
            return _PIVOT, c, x
        p = parent[c]
        if p >= 0:
            weight = parent_weight[c]
            precision[p] -= weight * weight / precision[c]
            potential[p] -= weight * potential[c] / precision[c]
    for t in range(m):
        c = order[t]
        p = parent[c]
        if p >= 0:
            x[c] = (potential[c] - parent_weight[c] * x[p]) / precision[c]
        else:
            x[c] = potential[c] / precision[c]
    return _OK, -1, x


def solve_forest(Q, rhs, block) -> np.ndarray:
    """Solve ``Q_bb x = rhs`` exactly in linear time when ``block`` induces a forest in ``Q``'s graph.

    Parameters
    ----------
    Q : scipy sparse matrix or array, or ndarray of shape (n, n)
        Real symmetric matrix, positive definite on the block. A canonical CSR input is used
        without a copy, which keeps the cost at ``O(sum of the block's degrees)``; other inputs
        are converted first (``O(nnz)``).
    rhs : array_like of float, shape (m,)
        Right-hand side, e.g. the block gradient ``g_b`` in the exact update
        ``x_b <- x_b - Q_bb^{-1} g_b``.
    block : array_like of int, shape (m,)
        Distinct node indices; ``rhs[k]`` and the result's entry ``k`` belong to node ``block[k]``.

    Returns
    -------
    ndarray of float64, shape (m,)
        ``Q_bb^{-1} rhs``.

    Raises
    ------
    ValueError
        If ``rhs`` has the wrong shape or is not finite, ``block`` is not a set of valid node
        indices, ``Q_bb`` is not symmetric, its graph has a cycle, or a pivot is not positive
        (``Q_bb`` is not positive definite).
    """
    csr = as_csr(Q)
    nodes = check_block(block, csr.shape[0])
    values = np.asarray(rhs, dtype=np.float64)
    if values.shape != nodes.shape:
        raise ValueError(f"rhs must have shape {nodes.shape} (one entry per block node), got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("rhs must be finite")
    data = np.asarray(csr.data, dtype=np.float64)
    indptr, indices, sub_data, diag = _induced_kernel(csr.indptr, csr.indices, data, nodes, csr.shape[0])
    defect = _symmetry_defect(indptr, indices, sub_data, _SYMMETRY_RTOL)
    if defect >= 0:
        raise ValueError(f"Q must be symmetric on the block: row {nodes[defect]} is not mirrored by its column")
    status, node, x = _tree_solve_kernel(indptr, indices, sub_data, diag, values)
    if status == _CYCLE:
        raise ValueError(f"block must induce a forest in the graph of Q; node {nodes[node]} lies on a cycle")
    if status == _PIVOT:
        raise ValueError(
            f"Q must be positive definite on the block: non-positive pivot at node {nodes[node]} "
            "in the belief-propagation sweep"
        )
    return x
