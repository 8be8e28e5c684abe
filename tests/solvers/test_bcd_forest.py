"""Forest blocks and Gaussian BP block solves: equality with dense solves, forest properties, errors."""

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp

from solvers.bcd._forest import (
    forest_partition,
    graph_of,
    greedy_forest,
    grow_forest,
    is_forest,
    random_forest,
    red_black_blocks,
)
from solvers.bcd._gabp import induced_csr, solve_forest

# BP and LAPACK are both backward-stable direct solves; the matrices below have condition
# numbers below ~1e4, so the two agree to ~1e-12 and 1e-10 leaves room without hiding errors
RTOL = 1e-10


def lattice_quadratic(k, shift=1.0):
    """``k x k`` lattice Laplacian plus ``shift * I`` (the shape of problem D), CSR."""
    T = sp.diags_array([-np.ones(k - 1), 2 * np.ones(k), -np.ones(k - 1)], offsets=[-1, 0, 1])
    identity = sp.identity(k)
    return sp.csr_array(sp.kron(T, identity) + sp.kron(identity, T) + shift * sp.identity(k * k))


def random_tree_parents(n, rng):
    """Parent of each node ``1..n-1`` among the earlier nodes (a uniformly random recursive tree)."""
    return np.array([rng.integers(0, i) for i in range(1, n)])


def tree_spd(parents, rng):
    """SPD matrix ``L D L^T`` whose graph is exactly the tree; not diagonally dominant in general.

    With ``L`` unit triangular and nonzero only at ``(parent(c), c)``, the product has entries only
    on the diagonal and the tree edges (eliminating a leaf creates no fill on a tree).
    """
    n = parents.size + 1
    children = np.arange(1, n)
    L = sp.csr_array(
        (
            np.concatenate([np.ones(n), rng.uniform(-2, 2, n - 1)]),
            (np.r_[np.arange(n), parents], np.r_[np.arange(n), children]),
        ),
        shape=(n, n),
    )
    D = sp.diags_array(rng.uniform(0.5, 2.0, n))
    return sp.csr_array(L @ D @ L.T)


def random_sparse_spd(n, degree, rng):
    """Weighted random-graph Laplacian plus a random positive diagonal (about ``degree`` neighbours)."""
    rows = rng.integers(0, n, n * degree // 2)
    cols = rng.integers(0, n, n * degree // 2)
    keep = rows != cols
    W = sp.csr_array((rng.uniform(0.1, 1.0, keep.sum()), (rows[keep], cols[keep])), shape=(n, n))
    W = W + W.T
    laplacian = sp.diags_array(np.asarray(W.sum(axis=1)).ravel()) - W
    return sp.csr_array(laplacian + sp.diags_array(rng.uniform(0.1, 1.0, n)))


def dense_block_solve(Q, block, rhs):
    return np.linalg.solve(Q[block][:, block].toarray(), rhs)


def assert_forest_solve(Q, block, rng):
    rhs = rng.standard_normal(len(block))
    np.testing.assert_allclose(solve_forest(Q, rhs, block), dense_block_solve(Q, block, rhs), rtol=RTOL, atol=0)


# ----------------------------------------------------------------------------- BP = dense solve


@pytest.mark.parametrize("n", [2, 3, 17, 200])
def test_bp_matches_dense_solve_on_random_trees(n):
    rng = np.random.default_rng(n)
    parents = random_tree_parents(n, rng)
    Q = tree_spd(parents, rng)
    perm = rng.permutation(n)
    Q = sp.csr_array(Q[perm][:, perm])
    assert is_forest(Q, np.arange(n))
    assert_forest_solve(Q, np.arange(n), rng)
    assert_forest_solve(Q, rng.permutation(n), rng)


def test_bp_matches_dense_solve_on_random_forests_of_a_sparse_spd_matrix():
    rng = np.random.default_rng(1)
    Q = random_sparse_spd(400, 5, rng)
    graph = graph_of(Q)
    for seed in range(5):
        block = random_forest(graph, seed)
        assert is_forest(graph, block)
        assert_forest_solve(Q, block, rng)
    for size in (1, 7, 60):
        assert_forest_solve(Q, random_forest(graph, rng, max_size=size), rng)


def test_bp_matches_dense_solve_on_lattice_forests():
    rng = np.random.default_rng(2)
    Q = lattice_quadratic(20)
    graph = graph_of(Q)
    blocks = [greedy_forest(graph, rng.standard_normal(400)) for _ in range(3)]
    blocks += [greedy_forest(graph, np.abs(rng.standard_normal(400)), max_size=50)]
    blocks += forest_partition(Q) + red_black_blocks(Q)
    for block in blocks:
        assert_forest_solve(Q, block, rng)


def test_bp_on_single_and_isolated_nodes():
    rng = np.random.default_rng(3)
    Q = lattice_quadratic(6, shift=0.5)
    rhs = np.array([3.0])
    np.testing.assert_allclose(solve_forest(Q, rhs, [7]), rhs / Q[7, 7], rtol=1e-15, atol=0)
    # non-adjacent nodes: Q_bb is diagonal, so the solve is a division (exact up to rounding)
    block = np.array([0, 2, 14, 35])
    rhs = rng.standard_normal(block.size)
    np.testing.assert_allclose(solve_forest(Q, rhs, block), rhs / Q.diagonal()[block], rtol=1e-15, atol=0)
    # an isolated node of the whole graph next to a tree
    Q_isolated = sp.csr_array(sp.block_diag([Q, sp.csr_array([[2.5]])]))
    assert_forest_solve(Q_isolated, [36, 0, 1, 2, 8], rng)
    assert solve_forest(Q, np.empty(0), np.empty(0, dtype=np.int64)).shape == (0,)


def test_bp_on_a_1e5_node_path_matches_the_banded_solve():
    rng = np.random.default_rng(4)
    n = 100_000
    off = rng.uniform(-1, 1, n - 1)
    diag = np.abs(np.r_[0, off]) + np.abs(np.r_[off, 0]) + rng.uniform(0.1, 1, n)
    Q = sp.csr_array(sp.diags_array([off, diag, off], offsets=[-1, 0, 1]))
    rhs = rng.standard_normal(n)
    banded = np.vstack([np.r_[0, off], diag, np.r_[off, 0]])
    expected = sla.solve_banded((1, 1), banded, rhs)
    np.testing.assert_allclose(solve_forest(Q, rhs, np.arange(n)), expected, rtol=RTOL, atol=1e-12)
    block = np.arange(n)[::-1]
    np.testing.assert_allclose(solve_forest(Q, rhs[::-1], block), expected[::-1], rtol=RTOL, atol=1e-12)


def test_bp_accepts_other_matrix_formats():
    rng = np.random.default_rng(5)
    Q = lattice_quadratic(5)
    block = red_black_blocks(Q)[0]
    rhs = rng.standard_normal(block.size)
    expected = dense_block_solve(Q, block, rhs)
    for matrix in (Q.toarray(), sp.coo_matrix(Q), sp.csc_array(Q), sp.csr_matrix(Q)):
        np.testing.assert_allclose(solve_forest(matrix, rhs, block), expected, rtol=RTOL, atol=0)


def test_stored_zeros_are_not_edges():
    rng = np.random.default_rng(10)
    Q = lattice_quadratic(4)
    # zero the edge 0-1 of the square {0, 1, 4, 5} while keeping it stored: the square is a path
    Q.data[(Q.indptr[0] + np.flatnonzero(Q.indices[Q.indptr[0] : Q.indptr[1]] == 1))] = 0.0
    Q.data[(Q.indptr[1] + np.flatnonzero(Q.indices[Q.indptr[1] : Q.indptr[2]] == 0))] = 0.0
    assert Q.nnz == lattice_quadratic(4).nnz
    square = [0, 1, 4, 5]
    assert is_forest(Q, square)
    assert_forest_solve(Q, square, rng)


def test_induced_csr_matches_the_dense_submatrix():
    Q = lattice_quadratic(4)
    block = np.array([5, 1, 6, 9, 0])
    indptr, indices, data, diag = induced_csr(Q, block)
    sub = Q[block][:, block].toarray()
    np.testing.assert_array_equal(diag, np.diag(sub))
    rebuilt = sp.csr_array((data, indices, indptr), shape=(5, 5)).toarray() + np.diag(diag)
    np.testing.assert_array_equal(rebuilt, sub)


# ----------------------------------------------------------------------------- forests


def test_grow_forest_is_a_maximal_forest():
    rng = np.random.default_rng(6)
    for Q in (lattice_quadratic(12), random_sparse_spd(150, 5, rng)):
        graph = graph_of(Q)
        order = rng.permutation(graph.n)
        forest = grow_forest(graph, order)
        assert is_forest(graph, forest)
        assert list(forest) == [v for v in order if v in set(forest)], "kept nodes follow the order"
        for v in np.setdiff1d(order, forest):
            assert not is_forest(graph, np.r_[forest, v]), f"node {v} could still be added"


def test_grow_forest_max_size_is_a_prefix_of_the_full_forest():
    graph = graph_of(lattice_quadratic(10))
    order = np.random.default_rng(7).permutation(100)
    full = grow_forest(graph, order)
    np.testing.assert_array_equal(grow_forest(graph, order, max_size=13), full[:13])
    np.testing.assert_array_equal(grow_forest(graph, order, max_size=10_000), full)


def test_greedy_forest_follows_the_scores():
    graph = graph_of(lattice_quadratic(10))
    scores = np.random.default_rng(8).standard_normal(100)
    forest = greedy_forest(graph, scores, max_size=30)
    assert forest[0] == np.argmax(scores)
    assert forest.size == 30
    np.testing.assert_array_equal(forest, grow_forest(graph, np.argsort(-scores, kind="stable"), max_size=30))
    # ties are broken by node index: equal scores visit nodes in index order
    np.testing.assert_array_equal(greedy_forest(graph, np.ones(100)), grow_forest(graph, np.arange(100)))


def test_random_forest_is_reproducible_from_the_seed():
    graph = graph_of(lattice_quadratic(10))
    np.testing.assert_array_equal(random_forest(graph, 3), random_forest(graph, np.random.default_rng(3)))
    assert is_forest(graph, random_forest(graph, 3))


def test_is_forest_detects_cycles():
    Q = lattice_quadratic(4)
    assert not is_forest(Q, [0, 1, 4, 5])  # one lattice square
    assert is_forest(Q, [0, 1, 4])
    assert is_forest(Q, [])


def test_red_black_classes_are_independent_sets_covering_all_nodes():
    rng = np.random.default_rng(9)
    lattice = lattice_quadratic(9)
    assert len(red_black_blocks(lattice)) == 2
    for Q in (lattice, random_sparse_spd(120, 5, rng)):
        blocks = red_black_blocks(Q)
        np.testing.assert_array_equal(np.sort(np.concatenate(blocks)), np.arange(Q.shape[0]))
        for block in blocks:
            off_diagonal = Q[block][:, block].toarray()[~np.eye(block.size, dtype=bool)]
            assert not off_diagonal.any()
    triangle = np.ones((3, 3)) + 2 * np.eye(3)
    assert len(red_black_blocks(triangle)) == 3


@pytest.mark.parametrize("k", [20, 50])
def test_forest_partition_covers_the_lattice_with_two_forests(k):
    Q = lattice_quadratic(k)
    forests = forest_partition(Q)
    np.testing.assert_array_equal(np.sort(np.concatenate(forests)), np.arange(k * k))
    assert all(is_forest(Q, forest) for forest in forests)
    assert len(forests) == 2


def test_graph_of_drops_the_diagonal_and_stored_zeros():
    Q = sp.csr_array(np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 2.0]]))
    # the same matrix with explicitly stored zeros at (0, 2) and (2, 0)
    with_zero = sp.csr_array(
        (np.r_[Q.data, 0.0, 0.0], (np.r_[0, 0, 1, 1, 2, 0, 2], np.r_[0, 1, 0, 1, 2, 2, 0])), shape=(3, 3)
    )
    for matrix in (Q, with_zero):
        graph = graph_of(matrix)
        np.testing.assert_array_equal(graph.indptr, [0, 1, 2, 2])
        np.testing.assert_array_equal(graph.indices, [1, 0])


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    Q = lattice_quadratic(4)
    with pytest.raises(ValueError, match="forest"):
        solve_forest(Q, np.ones(4), [0, 1, 4, 5])
    with pytest.raises(ValueError, match="rhs must have shape"):
        solve_forest(Q, np.ones(3), [0, 1])
    with pytest.raises(ValueError, match="rhs must be finite"):
        solve_forest(Q, np.array([1.0, np.nan]), [0, 1])
    with pytest.raises(ValueError, match="distinct"):
        solve_forest(Q, np.ones(2), [3, 3])
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        is_forest(Q, [0, 16])
    with pytest.raises(ValueError, match="integer"):
        grow_forest(Q, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="max_size"):
        grow_forest(Q, np.arange(16), max_size=0)
    with pytest.raises(ValueError, match="scores must have shape"):
        greedy_forest(Q, np.ones(5))
    with pytest.raises(ValueError, match="square"):
        graph_of(sp.csr_array(np.ones((2, 3))))
    with pytest.raises(ValueError, match="symmetric sparsity pattern"):
        graph_of(np.array([[1.0, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="symmetric on the block"):
        solve_forest(np.array([[2.0, 1.0], [0.5, 2.0]]), np.ones(2), [0, 1])
    with pytest.raises(ValueError, match="symmetric on the block"):
        solve_forest(np.array([[2.0, 1.0], [0.0, 2.0]]), np.ones(2), [0, 1])
    with pytest.raises(TypeError, match="Q must be"):
        graph_of([[1.0]])


def test_non_positive_definite_block_raises():
    indefinite = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 1.0], [0.0, 1.0, 3.0]])
    with pytest.raises(ValueError, match="positive definite"):
        solve_forest(indefinite, np.ones(3), [0, 1, 2])
    with pytest.raises(ValueError, match="positive definite"):
        solve_forest(np.diag([1.0, 0.0]), np.ones(2), [0, 1])
