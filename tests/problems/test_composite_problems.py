"""The Lasso and L1-logistic problems (problems/composite.py), against scikit-learn and cvxpy."""

from pathlib import Path

import numpy as np
import pytest

import optkit
from optkit.bench import run_benchmark
from optkit.composite_problem import L1, LogisticDatafit, QuadraticDatafit
from problems import composite
from problems.libsvm import DATASETS, load_libsvm

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL = "ionosphere_scale"


@pytest.fixture
def shared_data(monkeypatch):
    if not (SHARED_DATA / "libsvm" / REAL).exists():
        pytest.skip(f"{REAL} not in {SHARED_DATA}")
    monkeypatch.setenv("OPTKIT_DATA", str(SHARED_DATA))


# ----------------------------------------------------------------------------- registry


def test_every_libsvm_set_and_synthetic_is_a_member():
    names = optkit.list_problems()
    assert "ml/lasso/<name>" in names and "ml/l1-logistic/<name>" in names
    for kind in ("lasso", "l1-logistic"):
        for member in [*DATASETS, "synthetic"]:
            assert f"ml/{kind}/{member}" in optkit.registry.PROBLEMS
    with pytest.raises(KeyError, match=r"unknown problem 'ml/lasso/ionosphere'; did you mean ml/lasso/ionosphere_sc"):
        optkit.get_problem("ml/lasso/ionosphere")


@pytest.mark.parametrize("kind", ["lasso", "l1-logistic"])
def test_suite(kind):
    assert optkit.get_suite(f"{kind}-libsvm") == [
        f"ml/{kind}/{name}:lam_ratio={ratio}"
        for name in ("ionosphere_scale", "sonar_scale", "splice_scale", "mushrooms", "a9a")
        for ratio in (0.1, 0.01)
    ]


def test_bench_fails_cleanly_per_problem_when_data_are_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTKIT_DATA", str(tmp_path))
    bench = run_benchmark("lasso-libsvm", "scipy-lbfgsb", progress=False, warmup=False)
    assert len(bench.runs) == 10
    for run in bench.runs:
        assert run.status == "error"
        assert run.message.startswith("could not build problem: FileNotFoundError: LIBSVM file ")
        assert "OPTKIT_DATA" in run.message


def test_smooth_solvers_skip_it(shared_data):
    bench = run_benchmark(f"ml/lasso/{REAL}", "scipy-lbfgsb", progress=False, warmup=False)
    (run,) = bench.runs
    assert run.status == "skipped" and "CompositeProblem" in run.message


# ----------------------------------------------------------------------------- the problems


@pytest.mark.parametrize("kind", ["lasso", "l1-logistic"])
def test_synthetic(kind):
    problem = optkit.get_problem(f"ml/{kind}/synthetic", m=40, n=60, density=0.1, seed=3, lam_ratio=0.2)
    A, target = composite.synthetic_data(kind, m=40, n=60, density=0.1, seed=3)
    np.testing.assert_array_equal(problem.matrix, A)
    np.testing.assert_array_equal(problem.datafit.target, target)
    assert isinstance(problem.datafit, QuadraticDatafit if kind == "lasso" else LogisticDatafit)
    assert isinstance(problem.penalty, L1) and problem.name == f"ml/{kind}/synthetic"
    meta = problem.metadata
    assert meta["source"] == "synthetic" and meta["lam_ratio"] == 0.2 and meta["seed"] == 3
    # lam_max from the dense formula ||A^T L'(0)||_inf, L'(0) = -b/m or -y/(2m)
    scale = 1.0 if kind == "lasso" else 0.5
    np.testing.assert_allclose(meta["lam_max"], scale * np.max(np.abs(A.T @ target)) / 40, rtol=1e-14)
    np.testing.assert_allclose(problem.penalty.lam, 0.2 * meta["lam_max"], rtol=1e-15)
    np.testing.assert_allclose(meta["lam"], problem.penalty.lam, rtol=0)
    if kind == "l1-logistic":
        assert set(np.unique(target)) == {-1.0, 1.0}
    again = optkit.get_problem(f"ml/{kind}/synthetic:m=40,n=60,density=0.1,seed=3,lam_ratio=0.2")
    np.testing.assert_array_equal(again.matrix, A)
    assert not np.array_equal(composite.synthetic_data(kind, m=40, n=60, seed=4)[0], A)


@pytest.mark.parametrize("kind", ["lasso", "l1-logistic"])
def test_real_set(kind, shared_data):
    problem = optkit.get_problem(f"ml/{kind}/{REAL}", lam_ratio=0.05)
    X, labels = load_libsvm(REAL)
    assert problem.matrix.shape == (351, 34) and problem.name == f"ml/{kind}/{REAL}"
    np.testing.assert_array_equal(problem.matrix.toarray(), X.toarray())
    np.testing.assert_array_equal(problem.datafit.target, labels)  # the Lasso's target is the labels
    meta = problem.metadata
    assert meta["source"] == f"LIBSVM {REAL}" and meta["dataset"] == REAL and meta["lam_ratio"] == 0.05
    np.testing.assert_allclose(problem.penalty.lam, 0.05 * meta["lam_max"], rtol=1e-15)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: optkit.get_problem("ml/lasso/synthetic", lam_ratio=0), "lam_ratio must be a positive finite number"),
        (lambda: optkit.get_problem("ml/lasso/synthetic", density=1.5), r"density must be in \(0, 1\]"),
        (lambda: optkit.get_problem("ml/l1-logistic/synthetic", m=0), "m must be an integer >= 1"),
        (lambda: composite.synthetic_data("ridge"), "kind must be one of 'lasso', 'l1-logistic'"),
    ],
)
def test_bad_parameters(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ----------------------------------------------------------------------------- against references

# Clarabel to 1e-11 gap and feasibility (its defaults are 1e-8)
TIGHT = {"tol_gap_abs": 1e-11, "tol_gap_rel": 1e-11, "tol_feas": 1e-11, "tol_ktratio": 1e-9}


def _reference_solutions(problem):
    """``(scikit-learn's solution, cvxpy's solution)`` of the Lasso or L1-logistic ``problem``."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    cp = pytest.importorskip("cvxpy")
    A = problem.matrix.toarray() if hasattr(problem.matrix, "toarray") else problem.matrix
    target, lam = problem.datafit.target, problem.penalty.lam
    m, n = A.shape
    x = cp.Variable(n)
    if isinstance(problem.datafit, QuadraticDatafit):
        # scikit-learn's Lasso objective is ||b - A x||^2 / (2m) + alpha ||x||_1: alpha = lam
        ours = sklearn.Lasso(alpha=lam, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(A, target).coef_
        loss = cp.sum_squares(A @ x - target) / (2 * m)
    else:
        # liblinear minimises ||x||_1 + C sum_i log(1 + exp(-y_i a_i^T x)) = F(x) / lam for C = 1 / (m lam)
        model = sklearn.LogisticRegression(
            l1_ratio=1.0, solver="liblinear", C=1 / (m * lam), fit_intercept=False, tol=1e-12, max_iter=100_000
        )
        ours = model.fit(A, target).coef_.ravel()
        loss = cp.sum(cp.logistic(-cp.multiply(target, A @ x))) / m
    cp.Problem(cp.Minimize(loss + lam * cp.norm1(x))).solve(solver="CLARABEL", **TIGHT)
    return ours, x.value


def _problem(kind, dataset, lam_ratio, monkeypatch):
    """The problem; a real set is read from the shared data (skipped when absent)."""
    if dataset != "synthetic":
        if not (SHARED_DATA / "libsvm" / dataset).exists():
            pytest.skip(f"{dataset} not in {SHARED_DATA}")
        monkeypatch.setenv("OPTKIT_DATA", str(SHARED_DATA))
    return optkit.get_problem(f"ml/{kind}/{dataset}", lam_ratio=lam_ratio)


CASES = [("synthetic", 0.1), ("synthetic", 0.01), (REAL, 0.1)]


@pytest.mark.parametrize("dataset, lam_ratio", CASES)
@pytest.mark.parametrize("kind", ["lasso", "l1-logistic"])
def test_gap_vanishes_at_reference_solutions(kind, dataset, lam_ratio, monkeypatch):
    problem = _problem(kind, dataset, lam_ratio, monkeypatch)
    from_sklearn, from_cvxpy = _reference_solutions(problem)
    at_sklearn, at_cvxpy = problem.evaluate(from_sklearn), problem.evaluate(from_cvxpy)
    # both solved to ~1e-12 (sklearn's gap test, liblinear's tolerance) or ~1e-11 (Clarabel) by
    # their own measures; 1e-8 leaves a margin of 1e3 for how each measures
    assert abs(at_sklearn["duality_gap"]) <= 1e-8
    assert abs(at_cvxpy["duality_gap"]) <= 1e-8
    # each F is within its gap of F*, so the two agree to the sum of the gaps
    np.testing.assert_allclose(at_sklearn["fun"], at_cvxpy["fun"], rtol=0, atol=2e-8)
    # coordinate-descent and liblinear solutions are exactly sparse: optimality by the subgradient too
    assert at_sklearn["optimality"] <= 1e-6 * problem.metadata["lam_max"]
    assert 0 < at_sklearn["nnz"] < problem.n
    assert problem.evaluate(problem.x0)["duality_gap"] > 1e3 * abs(at_sklearn["duality_gap"])


@pytest.mark.parametrize("dataset", ["synthetic", REAL])
def test_lasso_gap_is_scikit_learns(dataset, monkeypatch):
    sklearn = pytest.importorskip("sklearn.linear_model")
    problem = _problem("lasso", dataset, 0.1, monkeypatch)
    A = problem.matrix.toarray() if hasattr(problem.matrix, "toarray") else problem.matrix
    # stopped early (tol 1e-3) so that the gap is far above rounding; sklearn's dual_gap_ is its
    # gap of (1/2)||r||^2 + m alpha ||x||_1 divided by m, our scaling. Its residual is updated in
    # place, so the two agree to rounding relative to F (1e-6 of the gap is wide)
    model = sklearn.Lasso(alpha=problem.penalty.lam, fit_intercept=False, tol=1e-3).fit(A, problem.datafit.target)
    assert model.dual_gap_ > 1e-8
    np.testing.assert_allclose(problem.duality_gap(model.coef_), model.dual_gap_, rtol=1e-6)
