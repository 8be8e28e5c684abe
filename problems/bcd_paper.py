"""The test problems A-E of Nutini, Laradji and Schmidt's block coordinate descent paper (JMLR 23(131), 2022).

Registered problems (every one seeded, ``seed=1`` by default, with size parameters so that
tests build small instances; the defaults are the paper's sizes)::

    bcd/A     CompositeProblem(X, QuadraticDatafit(y), L1(0))       F = ||X w - y||^2 / (2 m)
    bcd/A-l1  CompositeProblem(X, QuadraticDatafit(y), L1NonNegative(lam / m)), lam = 50,000
    bcd/B     CompositeProblem(X, LogisticDatafit(labels), L1(0))   F = mean log(1 + exp(-labels * X w))
    bcd/C     SoftmaxRegression(X, labels, lam=0, bias=False)       F = mean cross-entropy, 50 classes
    bcd/D     LinearSystemProblem(Q, c): 50 x 50 lattice label propagation, f = x^T Q x / 2 - c^T x
    bcd/E     LinearSystemProblem(Q, c): 2000-node two-moons 5-NN label propagation

and the suite ``bcd-paper`` (the six at the paper's sizes). Our ``F`` of A, A-l1, B and C is
the paper's ``f`` divided by the number of rows ``m`` (the paper sums over the rows); D and E
are in the paper's scaling.

Recipes (those of the reference code, ``IssamLaradji/BlockCoordinateDescent``,
``src/datasets/{datasets,tree_datasets}.py`` and ``matlab_code/``), every draw from
``numpy.random.RandomState(seed)``, the generator the reference seeds with ``np.random.seed(1)``,
in the reference's order, so that ``seed=1`` gives the reference's B, C and D exactly (D's
optimum matches the paper's to all digits). A's and E's data came from MATLAB files that are
not published: A and A-l1 take the X and w* of B, as the recipe says; E follows the published
MATLAB script with numpy's draws (its optimum, -716.98, is near the paper's -717.71).

* X (m x n): entries N(0, 1) + 1, column j scaled by 10 N(0, 1), each entry kept with
  probability ``min(1, 10 log(m) / m)``; stored as ``scipy.sparse.csc_array``.
  w*: N(0, 1) entries, each kept with probability 0.1.
* A: ``y = X w* + N(0, 1)``. B: ``labels = sign(X w*)`` (+1 where ``X w*`` is 0, which the
  reference leaves at 0), each flipped with probability 0.1.
* C: X as above with ``n = d`` columns (dense), W (d x k) N(0, 1), labels the argmax over the
  classes of ``X W + N(0, 1)``.
* D and E: the label-propagation criterion ``1/2 sum_ij w_ij (x_i - x_j)^2`` over the
  unlabelled nodes U with the labelled ones L fixed, as the reference forms it:
  ``Q = (D - W)[U, U]`` with ``D`` the full degree, ``c = W[U, L] y_L``. ``Q`` is SPD exactly
  when every connected component of the graph holds a labelled node (checked).
* D: the 4-neighbour ``grid x grid`` lattice, node ``i`` at row ``i % grid``, column
  ``i // grid``, every edge weight ``weight = 1e5``; ``n_labelled`` nodes drawn without
  replacement, labels 10 N(0, 1).
* E: the reference's MATLAB two moons (``GD_GenerateData(2, n_nodes, 2)``): class 1 with
  probability 1/2, angle ``phi`` uniform on [0, pi), class 1 at ``(cos phi, sin phi)``, class 2
  at ``(1 + cos phi, 1/2 - sin phi)``, plus N(0, 0.04) noise; a random ``n_labelled`` nodes keep
  their class (1 or 2) as label; node s is joined (weight 1) to its ``n_neighbors`` nearest
  nodes, and the graph symmetrised (an edge when either is a neighbour of the other).

``metadata``: ``f_opt`` (our scaling, by an independent method, see :mod:`problems._bcd_optima`),
``paper_f_opt`` (the reference's ``OPTIMAL_LOSS``, the paper's scaling and data, for reference),
``block_sizes`` (5, 50, 100) (the reference's figures 7, 8 and 11-13) and ``block_sizes_small``
(5, 20, 50) (its figures 9 and 10; both grids run on all five sets), ``recipe``, the parameters;
D and E also ``x_true`` (the solution, so that ``evaluate`` reports the error and an ``f_gap``
free of cancellation) and ``unlabelled_nodes``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from optkit.composite_problem import L1, CompositeProblem, L1NonNegative, LogisticDatafit, QuadraticDatafit
from optkit.problem import LinearSystemProblem
from optkit.registry import register_problem, register_suite
from optkit.validation import check_choice, check_int, check_nonnegative, check_positive

from ._bcd_optima import classification_optimum, least_squares_optimum, nonnegative_lasso_optimum, quadratic_optimum
from .linear_models import SoftmaxRegression

__all__ = [
    "PAPER_F_OPT",
    "GraphQuadratic",
    "classification_data",
    "label_propagation",
    "lattice_quadratic",
    "regression_data",
    "two_moons_quadratic",
]

#: The reference code's ``OPTIMAL_LOSS`` (the paper's scaling, its data).
PAPER_F_OPT = {
    "A": 8.1234048724830014e-25,
    "A-l1": 6725753.5240152273327112,
    "B": 5.0381920857462139e-15,
    "C": 1.0881194612011313e-11,
    "D": -1045999575.2270696,
    "E": -717.708822011346,
}
BLOCK_SIZES = (5, 50, 100)
BLOCK_SIZES_SMALL = (5, 20, 50)
SOURCE = "Nutini, Laradji, Schmidt, JMLR 23(131) 2022; reference code IssamLaradji/BlockCoordinateDescent"


class GraphQuadratic(NamedTuple):
    """A label-propagation quadratic ``x^T Q x / 2 - c^T x`` and the graph it came from.

    Attributes
    ----------
    Q : scipy.sparse.csr_array of float64, shape (u, u)
        SPD, over the unlabelled nodes.
    c : ndarray of float64, shape (u,)
    W : scipy.sparse.csr_array of float64, shape (N, N)
        The symmetric edge weights of all N nodes, zero diagonal.
    labelled, unlabelled : ndarray of int64
        Node indices (sorted for ``unlabelled``; ``Q``'s row ``r`` is node ``unlabelled[r]``).
    labels : ndarray of float64, shape (len(labelled),)
    points : ndarray of float64, shape (N, 2)
        Where the nodes lie: (row, column) on the lattice, the two-moons coordinates.
    """

    Q: Any
    c: np.ndarray
    W: Any
    labelled: np.ndarray
    unlabelled: np.ndarray
    labels: np.ndarray
    points: np.ndarray


def _design(rs: np.random.RandomState, m: int, n: int) -> np.ndarray:
    """The paper's dense X (m, n): N(0,1) + 1, columns scaled by 10 N(0,1), entries kept w.p. 10 log(m)/m."""
    X = rs.randn(m, n) + 1.0
    X *= 10.0 * rs.randn(n)
    X *= rs.rand(m, n) < 10.0 * np.log(m) / m
    return X


def regression_data(kind: str, m: int = 1000, n: int = 10000, seed: int = 1) -> tuple[Any, np.ndarray, np.ndarray]:
    """The seeded data of A (``kind="regression"``) or B (``kind="classification"``).

    Returns
    -------
    X : scipy.sparse.csc_array of float64, shape (m, n)
    target : ndarray of float64, shape (m,)
        ``y`` for A, labels +-1 for B.
    w_star : ndarray of float64, shape (n,)
    """
    check_choice("kind", kind, ("regression", "classification"))
    m, n, seed = check_int("m", m, 2), check_int("n", n, 1), check_int("seed", seed, 0)
    rs = np.random.RandomState(seed)
    X = _design(rs, m, n)
    w_star = rs.randn(n) * (rs.rand(n) < 0.1)
    scores = X @ w_star
    if kind == "regression":
        return sp.csc_array(X), scores + rs.randn(m), w_star
    labels = np.where(scores >= 0, 1.0, -1.0) * np.sign(rs.rand(m) - 0.1)
    return sp.csc_array(X), labels, w_star


def classification_data(m: int = 1000, d: int = 1000, n_classes: int = 50, seed: int = 1) -> tuple[np.ndarray, Any]:
    """The seeded data of C: dense X (m, d) float64 and int64 labels (m,) in ``0 .. n_classes-1``."""
    m, d = check_int("m", m, 2), check_int("d", d, 1)
    n_classes, seed = check_int("n_classes", n_classes, 2), check_int("seed", seed, 0)
    rs = np.random.RandomState(seed)
    X = _design(rs, m, d)
    W = rs.randn(d, n_classes)
    logits = X @ W + rs.randn(m, n_classes)
    return X, np.argmax(logits, axis=1).astype(np.int64)


def label_propagation(W: Any, labelled: np.ndarray, labels: np.ndarray, points: np.ndarray) -> GraphQuadratic:
    """The harmonic label-propagation quadratic of the graph ``W`` with ``labels`` fixed at ``labelled``.

    Parameters
    ----------
    W : scipy sparse, shape (N, N)
        Symmetric non-negative edge weights, zero diagonal.
    labelled : int array (k,)
        Distinct node indices.
    labels : float array (k,)
    points : float array (N, 2)
        The nodes' positions, kept in the result.

    Raises
    ------
    ValueError
        When a connected component holds no labelled node (``Q`` would be singular).
    """
    W = sp.csr_array(W, dtype=np.float64)
    n_nodes = W.shape[0]
    if W.shape != (n_nodes, n_nodes):
        raise ValueError(f"W must be square (N, N), got shape {W.shape}")
    if (W != W.T).nnz or W.diagonal().any() or (W < 0).nnz:
        raise ValueError("W must be symmetric and non-negative with a zero diagonal")
    labelled = np.asarray(labelled)
    if (
        labelled.ndim != 1
        or np.unique(labelled).size != labelled.size
        or np.any((labelled < 0) | (labelled >= n_nodes))
    ):
        raise ValueError(f"labelled must hold distinct node indices in 0 .. {n_nodes - 1}")
    if np.shape(labels) != labelled.shape:
        raise ValueError(f"labels must have shape {labelled.shape} (one per labelled node), got {np.shape(labels)}")
    if np.shape(points) != (n_nodes, 2):
        raise ValueError(f"points must have shape ({n_nodes}, 2), got {np.shape(points)}")
    unlabelled = np.setdiff1d(np.arange(n_nodes), labelled)
    _, component = connected_components(W, directed=False)
    orphans = np.setdiff1d(component[unlabelled], component[labelled])
    if orphans.size:
        raise ValueError(
            f"{orphans.size} connected component(s) of the graph hold no labelled node, so Q is singular; "
            "label more nodes (n_labelled) or change the seed"
        )
    laplacian = sp.csr_array(sp.diags_array(W.sum(axis=0)) - W)
    Q = sp.csr_array(laplacian[unlabelled][:, unlabelled])
    c = W[unlabelled][:, labelled] @ labels
    return GraphQuadratic(Q, c, W, labelled.astype(np.int64), unlabelled, np.asarray(labels, dtype=np.float64), points)


def lattice_quadratic(grid: int = 50, n_labelled: int = 100, weight: float = 1e5, seed: int = 1) -> GraphQuadratic:
    """Problem D's quadratic: the 4-neighbour ``grid x grid`` lattice (see the module docstring)."""
    grid, seed = check_int("grid", grid, 2), check_int("seed", seed, 0)
    n_labelled = check_int("n_labelled", n_labelled, 1)
    weight = check_positive("weight", weight)
    n_nodes = grid * grid
    if n_labelled >= n_nodes:
        raise ValueError(
            f"n_labelled must be < grid**2 = {n_nodes} (some nodes must stay unlabelled), got {n_labelled}"
        )
    rs = np.random.RandomState(seed)
    labelled = rs.choice(n_nodes, n_labelled, replace=False)
    labels = 10.0 * rs.randn(n_labelled)
    node = np.arange(n_nodes).reshape(grid, grid, order="F")
    heads = np.concatenate([node[:-1, :].ravel(), node[:, :-1].ravel()])
    tails = np.concatenate([node[1:, :].ravel(), node[:, 1:].ravel()])
    W = sp.coo_array((np.full(heads.size, weight), (heads, tails)), shape=(n_nodes, n_nodes))
    points = np.column_stack([np.arange(n_nodes) % grid, np.arange(n_nodes) // grid]).astype(np.float64)
    return label_propagation(W + W.T, labelled, labels, points)


def two_moons_quadratic(
    n_nodes: int = 2000, n_labelled: int = 100, n_neighbors: int = 5, seed: int = 1
) -> GraphQuadratic:
    """Problem E's quadratic: the two-moons k-nearest-neighbour graph (see the module docstring)."""
    from scipy.spatial import cKDTree

    n_nodes, seed = check_int("n_nodes", n_nodes, 3), check_int("seed", seed, 0)
    n_labelled = check_int("n_labelled", n_labelled, 1)
    n_neighbors = check_int("n_neighbors", n_neighbors, 1)
    if n_labelled >= n_nodes:
        raise ValueError(f"n_labelled must be < n_nodes = {n_nodes}, got {n_labelled}")
    if n_neighbors >= n_nodes:
        raise ValueError(f"n_neighbors must be < n_nodes = {n_nodes}, got {n_neighbors}")
    rs = np.random.RandomState(seed)
    n_first = int(np.sum(rs.rand(n_nodes) < 0.5))
    phi = np.pi * rs.rand(n_nodes)
    first = np.arange(n_nodes) < n_first
    points = np.column_stack(
        [np.where(first, np.cos(phi), 1.0 + np.cos(phi)), np.where(first, np.sin(phi), 0.5 - np.sin(phi))]
    )
    points += 0.2 * rs.randn(n_nodes, 2)
    classes = np.where(first, 1.0, 2.0)
    labelled = rs.permutation(n_nodes)[:n_labelled]
    # the nearest point to each point is itself (the noise is continuous, so no two coincide)
    _, nearest = cKDTree(points).query(points, k=n_neighbors + 1)
    heads = nearest[:, 1:].ravel()
    tails = np.repeat(np.arange(n_nodes), n_neighbors)
    knn = sp.coo_array((np.ones(heads.size), (heads, tails)), shape=(n_nodes, n_nodes))
    W = sp.csr_array(((knn + knn.T) > 0).astype(np.float64))
    return label_propagation(W, labelled, classes[labelled], points)


# ---------------------------------------------------------------------------- cached optima


@lru_cache(maxsize=8)
def _least_squares_f_opt(m: int, n: int, seed: int) -> float:
    X, y, _ = regression_data("regression", m, n, seed)
    return least_squares_optimum(X, y)


@lru_cache(maxsize=8)
def _nonnegative_lasso_f_opt(m: int, n: int, lam: float, seed: int) -> float:
    X, y, _ = regression_data("regression", m, n, seed)
    return nonnegative_lasso_optimum(X, y, lam / m)[0]


@lru_cache(maxsize=8)
def _logistic_f_opt(m: int, n: int, seed: int) -> float:
    X, labels, _ = regression_data("classification", m, n, seed)
    return classification_optimum(X, labels)


@lru_cache(maxsize=8)
def _softmax_f_opt(m: int, d: int, n_classes: int, seed: int) -> float:
    X, labels = classification_data(m, d, n_classes, seed)
    return classification_optimum(X, labels, n_classes)


@lru_cache(maxsize=8)
def _quadratic_solution(which: str, *params: Any) -> tuple[float, np.ndarray]:
    graph = lattice_quadratic(*params) if which == "D" else two_moons_quadratic(*params)
    f_opt, x_star = quadratic_optimum(graph.Q, graph.c)
    x_star.setflags(write=False)
    return f_opt, x_star


# ---------------------------------------------------------------------------- problems


def _metadata(key: str, f_opt: float, recipe: str, **params: Any) -> dict[str, Any]:
    return {
        "source": SOURCE,
        "f_opt": f_opt,
        "paper_f_opt": PAPER_F_OPT[key],
        "block_sizes": BLOCK_SIZES,
        "block_sizes_small": BLOCK_SIZES_SMALL,
        "recipe": recipe,
        **params,
    }


_RECIPE_X = "X: N(0,1)+1 entries, columns scaled by 10 N(0,1), entries kept w.p. 10 log(m)/m; w* 10% N(0,1)"


@register_problem("bcd/A")
def least_squares(m: int = 1000, n: int = 10000, seed: int = 1) -> CompositeProblem:
    """BCD paper problem A: least squares ``||X w - y||^2 / (2 m)``, X (m, n) sparse (see problems.bcd_paper)."""
    X, y, _ = regression_data("regression", m, n, seed)
    recipe = f"{_RECIPE_X}; y = X w* + N(0,1)"
    metadata = _metadata("A", _least_squares_f_opt(m, n, seed), recipe, m=m, n=n, seed=seed)
    return CompositeProblem(X, QuadraticDatafit(y), L1(0.0), name="bcd/A", metadata=metadata)


@register_problem("bcd/A-l1")
def nonnegative_lasso(m: int = 1000, n: int = 10000, lam: float = 50000.0, seed: int = 1) -> CompositeProblem:
    """BCD paper problem A-l1: A's data, ``||X w - y||^2 / (2 m) + (lam / m) sum w``, ``w >= 0``."""
    lam = check_nonnegative("lam", lam)
    X, y, _ = regression_data("regression", m, n, seed)
    recipe = f"{_RECIPE_X}; y = X w* + N(0,1); paper: 0.5 ||X w - y||^2 + lam sum(w), w >= 0"
    f_opt = _nonnegative_lasso_f_opt(m, n, lam, seed)
    metadata = _metadata("A-l1", f_opt, recipe, m=m, n=n, lam=lam, seed=seed)
    return CompositeProblem(X, QuadraticDatafit(y), L1NonNegative(lam / m), name="bcd/A-l1", metadata=metadata)


@register_problem("bcd/B")
def logistic(m: int = 1000, n: int = 10000, seed: int = 1) -> CompositeProblem:
    """BCD paper problem B: mean logistic loss on A's X, labels sign(X w*) with 10% flipped."""
    X, labels, _ = regression_data("classification", m, n, seed)
    recipe = f"{_RECIPE_X}; labels sign(X w*), each flipped w.p. 0.1"
    metadata = _metadata("B", _logistic_f_opt(m, n, seed), recipe, m=m, n=n, seed=seed)
    return CompositeProblem(X, LogisticDatafit(labels), L1(0.0), name="bcd/B", metadata=metadata)


@register_problem("bcd/C")
def softmax(m: int = 1000, d: int = 1000, n_classes: int = 50, seed: int = 1) -> SoftmaxRegression:
    """BCD paper problem C: unregularised softmax regression, X (m, d) dense, ``n_classes`` classes."""
    X, labels = classification_data(m, d, n_classes, seed)
    recipe = "X as in A with d columns (dense); labels argmax(X W + N(0,1)), W (d, n_classes) N(0,1)"
    f_opt = _softmax_f_opt(m, d, n_classes, seed)
    metadata = _metadata("C", f_opt, recipe, m=m, d=d, n_classes=n_classes, seed=seed)
    return SoftmaxRegression(X, labels, lam=0.0, n_classes=n_classes, bias=False, name="bcd/C", metadata=metadata)


def _quadratic_problem(key: str, graph: GraphQuadratic, params: tuple, recipe: str, **named: Any) -> Any:
    f_opt, x_star = _quadratic_solution(key, *params)
    metadata = _metadata(key, f_opt, recipe, **named) | {
        "x_true": x_star.copy(),
        "unlabelled_nodes": graph.unlabelled,
    }
    return LinearSystemProblem(graph.Q, graph.c, tags=("symmetric", "psd"), name=f"bcd/{key}", metadata=metadata)


@register_problem("bcd/D")
def lattice(grid: int = 50, n_labelled: int = 100, weight: float = 1e5, seed: int = 1) -> LinearSystemProblem:
    """BCD paper problem D: label propagation on the ``grid x grid`` lattice, ``x^T Q x / 2 - c^T x``."""
    graph = lattice_quadratic(grid, n_labelled, weight, seed)
    recipe = "4-neighbour lattice, edge weights `weight`; labels 10 N(0,1); Q = (D - W)[U, U], c = W[U, L] y_L"
    params = (grid, n_labelled, float(weight), seed)
    return _quadratic_problem("D", graph, params, recipe, grid=grid, n_labelled=n_labelled, weight=weight, seed=seed)


@register_problem("bcd/E")
def two_moons(n_nodes: int = 2000, n_labelled: int = 100, n_neighbors: int = 5, seed: int = 1) -> LinearSystemProblem:
    """BCD paper problem E: label propagation on the two-moons k-NN graph, ``x^T Q x / 2 - c^T x``."""
    graph = two_moons_quadratic(n_nodes, n_labelled, n_neighbors, seed)
    recipe = "two moons (noise N(0, 0.04)), symmetrised k-NN graph, unit weights; labels the classes 1, 2"
    params = (n_nodes, n_labelled, n_neighbors, seed)
    named = {"n_nodes": n_nodes, "n_labelled": n_labelled, "n_neighbors": n_neighbors, "seed": seed}
    return _quadratic_problem("E", graph, params, recipe, **named)


register_suite("bcd-paper", ["bcd/A", "bcd/A-l1", "bcd/B", "bcd/C", "bcd/D", "bcd/E"])
