"""The BCD paper's problems A-E (problems.bcd_paper): data recipes, optima by a second method, registration."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import log_softmax

import optkit
from optkit import CompositeProblem, LinearSystemProblem
from problems._bcd_optima import classification_optimum, least_squares_optimum, nonnegative_lasso_optimum
from problems.bcd_paper import (
    PAPER_F_OPT,
    classification_data,
    label_propagation,
    lattice_quadratic,
    regression_data,
    two_moons_quadratic,
)
from problems.linear_models import SoftmaxRegression


def _keep_probability(m):
    return 10 * np.log(m) / m


def test_regression_data_at_paper_size_has_the_recipes_shapes_and_density():
    X, y, w_star = regression_data("regression")
    assert isinstance(X, sp.csc_array) and X.shape == (1000, 10000) and y.shape == (1000,)
    # 1e7 Bernoulli(0.069) draws: standard deviation 8e-5, so 1e-3 is over 10 of them
    np.testing.assert_allclose(X.nnz / (1000 * 10000), _keep_probability(1000), atol=1e-3)
    # 1e4 Bernoulli(0.1) draws: standard deviation 3e-3
    np.testing.assert_allclose(np.mean(w_star != 0), 0.1, atol=0.015)
    _, labels, w_b = regression_data("classification")
    np.testing.assert_array_equal(w_b, w_star)  # A and B share X and w*, as in the paper
    assert set(np.unique(labels)) == {-1.0, 1.0}
    # 1000 flips with probability 0.1: standard deviation 0.0095
    np.testing.assert_allclose(np.mean(labels != np.where(X @ w_star >= 0, 1.0, -1.0)), 0.1, atol=0.04)


def test_seeds_reproduce_and_different_seeds_differ():
    X1, y1, _ = regression_data("regression", 50, 80, seed=3)
    X2, y2, _ = regression_data("regression", 50, 80, seed=3)
    X3, y3, _ = regression_data("regression", 50, 80, seed=4)
    np.testing.assert_array_equal(X1.toarray(), X2.toarray())
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, y3) and not np.array_equal(X1.toarray(), X3.toarray())
    Xc1, l1 = classification_data(60, 30, 4, seed=3)
    Xc2, l2 = classification_data(60, 30, 4, seed=3)
    np.testing.assert_array_equal(Xc1, Xc2)
    np.testing.assert_array_equal(l1, l2)
    assert not np.array_equal(l1, classification_data(60, 30, 4, seed=4)[1])
    g1, g2 = two_moons_quadratic(200, 20, seed=3), two_moons_quadratic(200, 20, seed=3)
    np.testing.assert_array_equal(g1.c, g2.c)
    assert (g1.W != two_moons_quadratic(200, 20, seed=4).W).nnz > 0
    np.testing.assert_array_equal(lattice_quadratic(8, 5, seed=3).c, lattice_quadratic(8, 5, seed=3).c)
    assert not np.array_equal(lattice_quadratic(8, 5, seed=3).labelled, lattice_quadratic(8, 5, seed=4).labelled)


def test_classification_data_shapes_and_labels():
    X, labels = classification_data(120, 40, 5)
    assert X.shape == (120, 40) and labels.shape == (120,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 5


def test_least_squares_optimum_zero_at_full_row_rank_else_the_qr_minimum():
    X, y, _ = regression_data("regression", 100, 300)
    assert np.linalg.matrix_rank(X.toarray()) == 100 and least_squares_optimum(X, y) == 0.0
    X, y, _ = regression_data("regression", 300, 100)
    Q, _ = np.linalg.qr(X.toarray())
    residual = y - Q @ (Q.T @ y)
    # two backward-stable factorisations of a well-conditioned 300 x 100 matrix agree to ~1e-13
    np.testing.assert_allclose(least_squares_optimum(X, y), residual @ residual / 600, rtol=1e-10)


def test_nonnegative_lasso_optimum_matches_clarabel():
    cp = pytest.importorskip("cvxpy")
    m, n, lam = 100, 300, 50.0
    X, y, _ = regression_data("regression", m, n)
    f_opt, w = nonnegative_lasso_optimum(X, y, lam / m)
    assert np.all(w >= 0) and 0 < np.count_nonzero(w) < n
    x = cp.Variable(n, nonneg=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(X @ x - y) / (2 * m) + lam / m * cp.sum(x)))
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    # the interior-point optimum is good to its gap tolerance 1e-12; we measured agreement to 2e-13
    np.testing.assert_allclose(f_opt, problem.value, rtol=1e-10)
    p = optkit.get_problem("bcd/A-l1", m=m, n=n, lam=lam)
    np.testing.assert_allclose(p.metadata["f_opt"], f_opt, rtol=0, atol=0)
    np.testing.assert_allclose(p.fun(w), f_opt, rtol=1e-13)


def _sklearn_unregularised(X, labels):
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=np.inf, fit_intercept=False, solver="newton-cg", tol=1e-12, max_iter=1000)
    return fit.fit(X, labels).coef_


def test_logistic_optimum_zero_when_separable_else_matches_newton_cg():
    pytest.importorskip("sklearn")
    assert optkit.get_problem("bcd/B", m=100, n=300).metadata["f_opt"] == 0.0
    X, labels, _ = regression_data("classification", 300, 40)
    f_opt = optkit.get_problem("bcd/B", m=300, n=40).metadata["f_opt"]
    margins = labels * (X.toarray() @ _sklearn_unregularised(X.toarray(), labels).ravel())
    # newton-cg stops at tol 1e-12 on the gradient; the two minima agree to ~1e-15 (measured)
    np.testing.assert_allclose(f_opt, np.logaddexp(0.0, -margins).mean(), rtol=1e-9)


def test_classification_optimum_is_zero_on_separable_data_with_more_rows_than_columns():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    assert classification_optimum(X, np.sign(X @ np.ones(5))) == 0.0
    assert classification_optimum(X, np.argmax(X @ rng.standard_normal((5, 3)), axis=1), 3) == 0.0


def test_softmax_optimum_zero_when_separable_else_matches_newton_cg():
    pytest.importorskip("sklearn")
    paper = optkit.get_problem("bcd/C", m=60, d=80, n_classes=5)
    assert isinstance(paper, SoftmaxRegression) and paper.metadata["f_opt"] == 0.0
    p = optkit.get_problem("bcd/C", m=300, d=20, n_classes=3)
    assert p.n == 60 and p.lam == 0.0 and not p.bias
    X, labels = classification_data(300, 20, 3)
    log_p = log_softmax(X @ _sklearn_unregularised(X, labels).T, axis=1)
    # newton-cg at tol 1e-12 stopped 2e-10 (relative) above our L-BFGS minimum (measured)
    np.testing.assert_allclose(p.metadata["f_opt"], -log_p[np.arange(300), labels].mean(), rtol=1e-8)


def test_lattice_has_at_most_four_neighbours_and_an_spd_system_with_the_dense_optimum():
    graph = lattice_quadratic(grid=10, n_labelled=10)
    W = graph.W.toarray()
    np.testing.assert_array_equal(W, W.T)
    degree = np.count_nonzero(W, axis=1)
    assert degree.max() == 4 and degree.min() == 2 and np.count_nonzero(degree == 2) == 4
    assert set(np.unique(W)) == {0.0, 1e5}
    Q = graph.Q.toarray()
    assert Q.shape == (90, 90)
    np.linalg.cholesky(Q)  # SPD: raises otherwise
    p = optkit.get_problem("bcd/D", grid=10, n_labelled=10)
    assert {"symmetric", "psd", "matrix"} <= p.capabilities
    # a dense solve of a 90 x 90 system of condition ~1e3
    np.testing.assert_allclose(p.metadata["f_opt"], -0.5 * graph.c @ np.linalg.solve(Q, graph.c), rtol=1e-12)


def test_lattice_at_paper_size_reproduces_the_papers_optimum():
    p = optkit.get_problem("bcd/D")
    assert p.n == 2400
    # the reference's generator and seed give its data, so its hard-coded f* to all 17 digits
    np.testing.assert_allclose(p.metadata["f_opt"], PAPER_F_OPT["D"], rtol=1e-14)


def test_two_moons_graph_is_the_symmetrised_knn_graph_with_an_spd_system():
    graph = two_moons_quadratic(n_nodes=300, n_labelled=30, n_neighbors=5)
    W = graph.W.toarray()
    np.testing.assert_array_equal(W, W.T)
    assert set(np.unique(W)) == {0.0, 1.0} and np.all(np.diag(W) == 0)
    distances = np.linalg.norm(graph.points[:, None] - graph.points[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :5]
    knn = np.zeros_like(W)
    np.put_along_axis(knn, nearest, 1.0, axis=1)
    np.testing.assert_array_equal(W, np.maximum(knn, knn.T))
    assert set(graph.labels) <= {1.0, 2.0}
    Q = graph.Q.toarray()
    np.linalg.cholesky(Q)
    p = optkit.get_problem("bcd/E", n_nodes=300, n_labelled=30)
    # a dense solve of a 270 x 270 graph Laplacian block
    np.testing.assert_allclose(p.metadata["f_opt"], -0.5 * graph.c @ np.linalg.solve(Q, graph.c), rtol=1e-10)


def test_label_propagation_refuses_bad_graphs_and_labels():
    W = sp.csr_array(np.kron(np.eye(2), np.ones((2, 2)) - np.eye(2)))
    with pytest.raises(ValueError, match="hold no labelled node"):
        label_propagation(W, np.array([0]), np.array([1.0]), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="W must be symmetric"):
        label_propagation(sp.csr_array(np.triu(np.ones((4, 4)), 1)), np.array([0]), np.array([1.0]), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="labelled must hold distinct node indices in 0 .. 3"):
        label_propagation(W, np.array([0, 0]), np.array([1.0, 2.0]), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        label_propagation(W, np.array([0, 2]), np.array([1.0]), np.zeros((4, 2)))


SMALL = {
    "bcd/A": {"m": 40, "n": 100},
    "bcd/A-l1": {"m": 40, "n": 100, "lam": 20.0},
    "bcd/B": {"m": 40, "n": 100},
    "bcd/C": {"m": 40, "d": 50, "n_classes": 4},
    "bcd/D": {"grid": 6, "n_labelled": 4},
    "bcd/E": {"n_nodes": 120, "n_labelled": 20},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_evaluate_reports_f_gap_and_metadata(name):
    p = optkit.get_problem(name, **SMALL[name])
    key = name.removeprefix("bcd/")
    assert p.name == name and p.metadata["paper_f_opt"] == PAPER_F_OPT[key]
    assert p.metadata["block_sizes"] == (5, 50, 100) and p.metadata["block_sizes_small"] == (5, 20, 50)
    assert p.metadata["seed"] == 1 and p.metadata["recipe"]
    out = p.evaluate(p.x0)
    if isinstance(p, LinearSystemProblem):
        # at x = 0 the energy is 0, so the gap is -f_opt; f_gap is computed as e^T Q e / 2
        np.testing.assert_allclose(out["f_gap"], -p.metadata["f_opt"], rtol=1e-12)
        np.testing.assert_allclose(p.evaluate(p.metadata["x_true"])["f_gap"], 0.0, atol=1e-12)
    else:
        value = p.fun(p.x0) if isinstance(p, CompositeProblem) else out["fun"]
        np.testing.assert_allclose(out["f_gap"], value - p.metadata["f_opt"], rtol=1e-15)


def test_the_suite_lists_the_six_problems_at_paper_size():
    assert optkit.registry.get_suite("bcd-paper") == ["bcd/A", "bcd/A-l1", "bcd/B", "bcd/C", "bcd/D", "bcd/E"]


@pytest.mark.parametrize(
    ("name", "params", "argument"),
    [
        ("bcd/A", {"m": 0}, "m"),
        ("bcd/A", {"n": 2.5}, "n"),
        ("bcd/A-l1", {"m": 20, "n": 30, "lam": -1.0}, "lam"),
        ("bcd/B", {"seed": -1}, "seed"),
        ("bcd/C", {"n_classes": 1}, "n_classes"),
        ("bcd/C", {"d": 0}, "d"),
        ("bcd/D", {"grid": 1}, "grid"),
        ("bcd/D", {"grid": 3, "n_labelled": 9}, "n_labelled"),
        ("bcd/D", {"weight": 0.0}, "weight"),
        ("bcd/E", {"n_nodes": 10, "n_labelled": 3, "n_neighbors": 10}, "n_neighbors"),
        ("bcd/E", {"n_nodes": 10, "n_labelled": 0}, "n_labelled"),
    ],
)
def test_bad_sizes_name_the_argument(name, params, argument):
    with pytest.raises(ValueError, match=rf"^{argument} must"):
        optkit.get_problem(name, **params)
