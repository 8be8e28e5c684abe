"""Forest-structured blocks of a sparse symmetric matrix, for block coordinate descent.

For a quadratic ``f(x) = x^T Q x / 2 - c^T x`` with ``Q`` sparse, the graph of ``Q`` has one
node per coordinate and one edge per nonzero off-diagonal entry. A block ``b`` whose induced
subgraph is a forest can be updated exactly in ``O(|b|)`` time by Gaussian belief propagation
(:func:`solvers.bcd._gabp.solve_forest`). This module builds such blocks (Nutini, Laradji and
Schmidt, JMLR 2022):

- :func:`red_black_blocks`: a greedy colouring; each colour class is an independent set (a
  forest without edges, so ``Q_bb`` is diagonal);
- :func:`grow_forest`: visit nodes in a given order and keep a node when the selected set stays
  acyclic; :func:`greedy_forest` visits by decreasing score (the GS / GSL / GSD tree rules),
  :func:`random_forest` in a random order;
- :func:`forest_partition`: a cover of all nodes by disjoint forests.

All functions take ``Q`` as a scipy sparse matrix or array, or a dense 2-D numpy array (numpy
backend only; the graph algorithms are numba loops over CSR arrays, compiled on first use and
cached on disk). The graph functions also accept the :class:`Graph` returned by
:func:`graph_of`, so a caller that grows a forest every iteration computes the graph once.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numba
import numpy as np
import scipy.sparse as sp

__all__ = [
    "Graph",
    "as_csr",
    "check_block",
    "forest_partition",
    "graph_of",
    "greedy_forest",
    "grow_forest",
    "is_forest",
    "random_forest",
    "red_black_blocks",
]


class Graph(NamedTuple):
    """Adjacency of the graph of a symmetric matrix, in CSR form, without the diagonal.

    Attributes
    ----------
    indptr : ndarray of int64, shape (n + 1,)
        Row pointers: the neighbours of node ``i`` are ``indices[indptr[i]:indptr[i + 1]]``.
    indices : ndarray of int64, shape (nnz,)
        Neighbour indices, sorted within each row.
    """

    indptr: np.ndarray
    indices: np.ndarray

    @property
    def n(self) -> int:
        """Number of nodes."""
        return self.indptr.size - 1


def as_csr(Q):
    """Return ``Q`` as a canonical CSR matrix (sorted indices, no duplicates), checking its shape.

    Parameters
    ----------
    Q : scipy sparse matrix or array, or ndarray of shape (n, n)
        A real square matrix. A CSR input in canonical form is returned as is (no copy).

    Returns
    -------
    scipy.sparse CSR matrix or array of shape (n, n)

    Raises
    ------
    TypeError
        If ``Q`` is neither a scipy sparse matrix nor a numpy array.
    ValueError
        If ``Q`` is not 2-D and square, or is complex.
    """
    if isinstance(Q, np.ndarray):
        if Q.ndim != 2:
            raise ValueError(f"Q must be a square 2-D matrix, got an array of shape {Q.shape}")
        Q = sp.csr_array(Q)
    elif sp.issparse(Q):
        if Q.format != "csr":
            Q = Q.tocsr()
    else:
        raise TypeError(f"Q must be a scipy sparse matrix or a numpy array, got {type(Q).__name__}")
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise ValueError(f"Q must be a square 2-D matrix, got shape {Q.shape}")
    if np.issubdtype(Q.dtype, np.complexfloating):
        raise ValueError(f"Q must be real, got dtype {Q.dtype}")
    if not Q.has_canonical_format:
        Q = Q.copy()
        Q.sum_duplicates()
    return Q


@numba.njit(cache=True)
def _has_repeats(values, n):  # pragma: no cover - compiled
    """Whether ``values`` (all in ``[0, n)``) repeats an entry, in ``O(len(values))`` time.

    ``first[v] = k`` records where ``v`` was first seen; an entry of the uninitialised array is
    trusted only when it points back to ``v`` (the sparse-set trick), so nothing of size ``n`` is
    initialised and a small block of a large matrix costs only its own length.
    """
    first = np.empty(n, np.int64)
    for k in range(values.size):
        v = values[k]
        seen = first[v]
        if 0 <= seen < k and values[seen] == v:
            return True
        first[v] = k
    return False


def check_block(block, n: int, name: str = "block") -> np.ndarray:
    """Validate a block of node indices and return it as an int64 array.

    Parameters
    ----------
    block : array_like of int, shape (m,)
        Distinct node indices in ``[0, n)``.
    n : int
        Number of nodes.
    name : str
        Name of the argument, for the error messages.

    Returns
    -------
    ndarray of int64, shape (m,)

    Raises
    ------
    ValueError
        If ``block`` is not a 1-D integer array of distinct indices in ``[0, n)``.
    """
    arr = np.asarray(block)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of node indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer node indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{name} must hold node indices in [0, {n}), got values in [{arr.min()}, {arr.max()}]")
    if _has_repeats(arr, n):
        raise ValueError(f"{name} must hold distinct node indices, got repeated ones")
    return arr


def graph_of(Q) -> Graph:
    """Adjacency of the graph of ``Q``: an edge ``(i, j)`` for every nonzero ``Q[i, j]``, ``i != j``.

    Parameters
    ----------
    Q : scipy sparse matrix or array, or ndarray of shape (n, n)
        A real square matrix with a symmetric sparsity pattern. Explicitly stored zeros are not
        edges.

    Returns
    -------
    Graph
        ``(indptr, indices)`` in CSR form, int64, indices sorted within each row.

    Raises
    ------
    ValueError
        If ``Q`` is not square, or its pattern (of nonzero off-diagonal entries) is not symmetric.
    """
    if isinstance(Q, Graph):
        return Q
    csr = as_csr(Q)
    n = csr.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(csr.indptr))
    keep = (rows != csr.indices) & (csr.data != 0)
    rows, cols = rows[keep], csr.indices[keep].astype(np.int64)
    pattern = sp.csr_array((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n, n))
    if (pattern != pattern.T).nnz:
        raise ValueError("Q must have a symmetric sparsity pattern (Q[i, j] != 0 exactly when Q[j, i] != 0)")
    # a CSR built from sorted (row, col) pairs without duplicates has sorted rows already
    return Graph(np.ascontiguousarray(pattern.indptr, dtype=np.int64), cols)


@numba.njit(cache=True)
def _find(parent, i):  # pragma: no cover - compiled
    """Root of ``i`` in the union-find forest ``parent``, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True)
def _grow_forest_kernel(indptr, indices, order, max_size):  # pragma: no cover - compiled
    """Nodes of ``order`` kept greedily so that the selected set induces a forest.

    A node joins when its selected neighbours all lie in distinct trees (then it links them
    without closing a cycle); the trees are tracked by union-find with union by size.
    """
    n = indptr.size - 1
    parent = np.arange(n)
    size = np.ones(n, np.int64)
    selected = np.zeros(n, np.bool_)
    # stamp[r] == v marks tree r as already met among the neighbours of v
    stamp = np.full(n, -1, np.int64)
    chosen = np.empty(min(order.size, max_size), np.int64)
    count = 0
    for v in order:
        if count == max_size:
            break
        acyclic = True
        for p in range(indptr[v], indptr[v + 1]):
            u = indices[p]
            if selected[u]:
                r = _find(parent, u)
                if stamp[r] == v:
                    acyclic = False
                    break
                stamp[r] = v
        if not acyclic:
            continue
        selected[v] = True
        for p in range(indptr[v], indptr[v + 1]):
            u = indices[p]
            if selected[u]:
                ru, rv = _find(parent, u), _find(parent, v)
                if size[ru] < size[rv]:
                    ru, rv = rv, ru
                parent[rv] = ru
                size[ru] += size[rv]
        chosen[count] = v
        count += 1
    return chosen[:count]


@numba.njit(cache=True)
def _has_cycle_kernel(indptr, indices, block):  # pragma: no cover - compiled
    """Whether the subgraph induced by ``block`` has a cycle (union-find over its edges)."""
    n = indptr.size - 1
    inside = np.zeros(n, np.bool_)
    for v in block:
        inside[v] = True
    parent = np.arange(n)
    for v in block:
        for p in range(indptr[v], indptr[v + 1]):
            u = indices[p]
            # each undirected edge is stored twice; take it once
            if u < v and inside[u]:
                ru, rv = _find(parent, u), _find(parent, v)
                if ru == rv:
                    return True
                parent[rv] = ru
    return False


@numba.njit(cache=True)
def _greedy_colouring_kernel(indptr, indices):  # pragma: no cover - compiled
    """Colour nodes in index order with the smallest colour unused by earlier neighbours."""
    n = indptr.size - 1
    colour = np.full(n, -1, np.int64)
    # used[c] == v marks colour c as taken by a neighbour of v
    used = np.full(n + 1, -1, np.int64)
    for v in range(n):
        for p in range(indptr[v], indptr[v + 1]):
            c = colour[indices[p]]
            if c >= 0:
                used[c] = v
        c = 0
        while used[c] == v:
            c += 1
        colour[v] = c
    return colour


def red_black_blocks(Q) -> list[np.ndarray]:
    """Colour classes of a greedy colouring of the graph of ``Q``, in node order.

    Node ``i`` gets the smallest colour not used by its neighbours ``j < i``. On a 2-D lattice
    numbered row by row this is the red-black (checkerboard) colouring with 2 colours; in
    general it uses at most ``max degree + 1`` colours.

    Parameters
    ----------
    Q : scipy sparse matrix or array, ndarray of shape (n, n), or Graph
        Symmetric sparsity pattern.

    Returns
    -------
    list of ndarray of int64
        One sorted array of nodes per colour; each is an independent set (``Q_bb`` is
        diagonal), together they partition ``range(n)``.
    """
    graph = graph_of(Q)
    colour = _greedy_colouring_kernel(graph.indptr, graph.indices)
    n_colours = int(colour.max()) + 1 if colour.size else 0
    return [np.flatnonzero(colour == c).astype(np.int64) for c in range(n_colours)]


def is_forest(Q, block) -> bool:
    """Whether the subgraph of the graph of ``Q`` induced by ``block`` has no cycle.

    Parameters
    ----------
    Q : scipy sparse matrix or array, ndarray of shape (n, n), or Graph
        Symmetric sparsity pattern.
    block : array_like of int, shape (m,)
        Distinct node indices.

    Returns
    -------
    bool
    """
    graph = graph_of(Q)
    nodes = check_block(block, graph.n)
    return not _has_cycle_kernel(graph.indptr, graph.indices, nodes)


def _check_max_size(max_size) -> int:
    if max_size is None:
        return np.iinfo(np.int64).max
    if isinstance(max_size, bool) or not isinstance(max_size, numbers.Integral) or max_size < 1:
        raise ValueError(f"max_size must be a positive integer or None, got {max_size!r}")
    return int(max_size)


def grow_forest(Q, order, max_size=None) -> np.ndarray:
    """Grow a forest greedily: visit ``order`` and keep each node that leaves the set acyclic.

    A visited node is kept when its already-kept neighbours lie in distinct trees of the
    current forest. Trees only merge as nodes are added, so a node rejected once can never be
    added later: without ``max_size`` the result is a maximal forest among the nodes of
    ``order``. Cost ``O(sum of degrees)`` (union-find, near-constant per edge).

    Parameters
    ----------
    Q : scipy sparse matrix or array, ndarray of shape (n, n), or Graph
        Symmetric sparsity pattern.
    order : array_like of int, shape (k,)
        Distinct node indices, in the order they are offered.
    max_size : int, optional
        Stop once this many nodes are kept (default: no limit).

    Returns
    -------
    ndarray of int64, shape (m,)
        The kept nodes, a subsequence of ``order``; with ``max_size=k`` the first ``k`` of them.
    """
    graph = graph_of(Q)
    nodes = check_block(order, graph.n, name="order")
    limit = _check_max_size(max_size)
    return _grow_forest_kernel(graph.indptr, graph.indices, nodes, limit)


def greedy_forest(Q, scores, max_size=None) -> np.ndarray:
    """Forest grown in decreasing score order (ties by node index): the GS / GSL / GSD tree rules.

    Parameters
    ----------
    Q : scipy sparse matrix or array, ndarray of shape (n, n), or Graph
        Symmetric sparsity pattern.
    scores : array_like of float, shape (n,)
        Finite score per node, e.g. ``|g_i|`` (GS) or ``|g_i| / sqrt(Q_ii)`` (GSD).
    max_size : int, optional
        Largest block size.

    Returns
    -------
    ndarray of int64, shape (m,)
        The forest, in the order its nodes were kept; its first node is ``argmax(scores)``.
    """
    graph = graph_of(Q)
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (graph.n,):
        raise ValueError(f"scores must have shape ({graph.n},), got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("scores must be finite")
    return grow_forest(graph, np.argsort(-values, kind="stable"), max_size)


def random_forest(Q, rng=None, max_size=None) -> np.ndarray:
    """Forest grown in a uniformly random node order.

    Parameters
    ----------
    Q : scipy sparse matrix or array, ndarray of shape (n, n), or Graph
        Symmetric sparsity pattern.
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for ``numpy.random.default_rng``.
    max_size : int, optional
        Largest block size.

    Returns
    -------
    ndarray of int64, shape (m,)
    """
    graph = graph_of(Q)
    generator = np.random.default_rng(rng)
    return grow_forest(graph, generator.permutation(graph.n), max_size)


def forest_partition(Q) -> list[np.ndarray]:
    """Partition all nodes into forests by growing maximal forests on the remaining nodes.

    Each round grows a forest over the not yet covered nodes in index order; the first such
    node can always be kept, so every round covers at least one node and the loop ends.

    Parameters
    ----------
    Q : scipy sparse matrix or array, ndarray of shape (n, n), or Graph
        Symmetric sparsity pattern.

    Returns
    -------
    list of ndarray of int64
        Disjoint sorted blocks covering ``range(n)``, each inducing a forest.
    """
    graph = graph_of(Q)
    remaining = np.arange(graph.n, dtype=np.int64)
    forests = []
    while remaining.size:
        forest = np.sort(_grow_forest_kernel(graph.indptr, graph.indices, remaining, remaining.size))
        forests.append(forest)
        remaining = np.setdiff1d(remaining, forest, assume_unique=True)
    return forests
