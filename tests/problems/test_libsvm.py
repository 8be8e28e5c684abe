"""The LIBSVM reader, the data-set registry and the constrained logistic regression (problems/libsvm.py)."""

import bz2
import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit

import optkit
from optkit.bench import run_benchmark
from optkit.cli import main
from problems import libsvm
from problems.libsvm import ConstrainedLogisticProblem, constraint_data, load_libsvm, read_libsvm

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# /work/shared/data/README.md: rows, features, count of the label mapped to +1, count of -1
SHARED_SETS = {
    "ionosphere_scale": (351, 34, 225, 126),
    "sonar_scale": (208, 60, 97, 111),
    "splice_scale": (1000, 60, 517, 483),
    "mushrooms": (8124, 112, 3916, 4208),
    "a9a": (32561, 123, 7841, 24720),
    "a9a.t": (16281, 123, 3846, 12435),
}


def _needs(name):
    return pytest.mark.skipif(not (SHARED_DATA / "libsvm" / name).exists(), reason=f"{name} not in {SHARED_DATA}")


@pytest.fixture
def shared_data(monkeypatch):
    monkeypatch.setenv("OPTKIT_DATA", str(SHARED_DATA))


def _write(path, text, opener=open):
    with opener(path, "wt") as fh:
        fh.write(text)
    return path


# ----------------------------------------------------------------------------- reader

SMALL = """# a comment line
1 3:0.5 1:2
-1 2:-1.5e-1   # a trailing comment

+1 qid:3 4:7
0
"""
SMALL_X = np.array([[2.0, 0, 0.5, 0], [0, -0.15, 0, 0], [0, 0, 0, 7.0], [0, 0, 0, 0]])
SMALL_Y = np.array([1.0, -1.0, 1.0, 0.0])


def test_read_small_file_exactly(tmp_path):
    X, y = read_libsvm(_write(tmp_path / "small", SMALL))
    assert isinstance(X, sp.csr_array) and X.dtype == np.float64 and X.shape == (4, 4)
    assert X.has_sorted_indices
    np.testing.assert_array_equal(X.toarray(), SMALL_X)
    np.testing.assert_array_equal(y, SMALL_Y)
    X6, _ = read_libsvm(tmp_path / "small", n_features=6)
    np.testing.assert_array_equal(X6.toarray(), np.hstack([SMALL_X, np.zeros((4, 2))]))


@pytest.mark.parametrize("name, opener", [("small.gz", gzip.open), ("no-suffix", gzip.open), ("small.bz2", bz2.open)])
def test_read_compressed(tmp_path, name, opener):
    X, y = read_libsvm(_write(tmp_path / name, SMALL, opener))
    np.testing.assert_array_equal(X.toarray(), SMALL_X)
    np.testing.assert_array_equal(y, SMALL_Y)


def test_read_empty_and_comment_only(tmp_path):
    X, y = read_libsvm(_write(tmp_path / "empty", "# nothing\n\n"), n_features=3)
    assert X.shape == (0, 3) and y.shape == (0,)


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("1 1:1\nabc 2:1\n", 2, "bad label 'abc'"),
        ("1 1:1\n\n# c\n1 2\n", 4, "token '2' has no ':'"),
        ("1 1:1\n-1 0:1\n", 2, "index 0 in '0:1' is < 1"),
        ("1 1:1\n1 2:x\n", 2, "value 'x' in '2:x' is not a finite number"),
        ("1 1:nan\n", 1, "value 'nan'"),
        ("1 1.5:2\n", 1, "index '1.5' in '1.5:2' is not an integer"),
        ("1 2.0:1 inf:2\n", 1, "index 'inf' in 'inf:2' is not an integer"),
        ("1 1:1\n1 2:1 3:1 2:5\n", 2, "index 2 appears twice"),
        ("1 3: 4\n", 1, "value '' in '3:' is not a finite number"),
    ],
)
def test_read_malformed_names_file_and_line(tmp_path, text, line, what):
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(ValueError) as info:
        read_libsvm(path)
    assert f"{path}, line {line}: " in str(info.value) and what in str(info.value)


def test_read_index_above_n_features(tmp_path):
    path = _write(tmp_path / "wide", "1 1:1\n1 3:1\n")
    with pytest.raises(ValueError, match="line 2: index 3 in '3:1' exceeds n_features=2"):
        read_libsvm(path, n_features=2)


@pytest.mark.parametrize("name", ["a9a", "mushrooms"])
def test_reader_agrees_with_sklearn(name):
    if not (SHARED_DATA / "libsvm" / name).exists():
        pytest.skip(f"{name} absent")
    from sklearn.datasets import load_svmlight_file

    Xs, ys = load_svmlight_file(str(SHARED_DATA / "libsvm" / name))
    X, y = read_libsvm(SHARED_DATA / "libsvm" / name)
    assert X.shape == Xs.shape and X.nnz == Xs.nnz
    np.testing.assert_array_equal(y, ys)
    assert abs(X - sp.csr_array(Xs)).max() == 0


# ----------------------------------------------------------------------------- data sets


@pytest.mark.parametrize("name", list(SHARED_SETS))
def test_shared_files_load_with_expected_shape_and_labels(shared_data, name):
    if not (SHARED_DATA / "libsvm" / name).exists():
        pytest.skip(f"{name} not in {SHARED_DATA}")
    rows, features, n_pos, n_neg = SHARED_SETS[name]
    X, y = load_libsvm(name)
    assert X.shape == (rows, features) and isinstance(X, sp.csr_array)
    assert set(np.unique(y)) == {-1.0, 1.0}
    assert ((y == 1).sum(), (y == -1).sum()) == (n_pos, n_neg)


@_needs("mushrooms")
def test_mushrooms_labels_one_two_map_to_plus_minus(shared_data):
    _, raw = read_libsvm(SHARED_DATA / "libsvm" / "mushrooms")
    _, y = load_libsvm("mushrooms")
    np.testing.assert_array_equal(y, np.where(raw == 1, 1.0, -1.0))
    assert set(np.unique(raw)) == {1.0, 2.0}


def test_registry_and_data_list_names():
    assert set(libsvm.DATASETS) == {
        "ionosphere_scale", "sonar_scale", "splice_scale", "mushrooms", "a9a", "a9a.t", "phishing", "w8a", "covtype",
    }
    names = {ds.name for ds, _ in optkit.data.list_datasets()}
    assert {f"libsvm/{n}" for n in libsvm.DATASETS} <= names


def test_load_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"unknown LIBSVM data set 'a9b'; known: .*mushrooms, a9a, a9a.t.*covtype"):
        load_libsvm("a9b")


def test_load_missing_file_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTKIT_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_libsvm("w8a")
    msg = str(info.value)
    assert str(tmp_path / "libsvm") in msg and "w8a.gz" in msg and "OPTKIT_DATA" in msg


def test_load_checks_rows_labels_and_pads(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTKIT_DATA", str(tmp_path))
    (tmp_path / "libsvm").mkdir()
    good = "".join(f"{1 if k % 3 else -1} 1:{k} 30:1\n" for k in range(351))
    _write(tmp_path / "libsvm" / "ionosphere_scale.gz", good, gzip.open)
    X, y = load_libsvm("ionosphere_scale")
    assert X.shape == (351, 34) and X.nnz == 702
    np.testing.assert_array_equal(X[[5], [0]], [5.0])
    assert (y == -1).sum() == 117

    _write(tmp_path / "libsvm" / "sonar_scale", "1 1:1\n" * 207)
    with pytest.raises(ValueError, match="has 207 rows, but LIBSVM 'sonar_scale' has 208"):
        load_libsvm("sonar_scale")
    _write(tmp_path / "libsvm" / "mushrooms", "1 1:1\n" * 8000 + "-1 1:1\n" * 124)
    with pytest.raises(ValueError, match=r"labels \[-1.0\], but LIBSVM 'mushrooms' is labelled 1 / 2"):
        load_libsvm("mushrooms")
    _write(tmp_path / "libsvm" / "a9a", "1 124:1\n")
    with pytest.raises(ValueError, match="'a9a' .*line 1: index 124 in '124:1' exceeds n_features=123"):
        load_libsvm("a9a")


@_needs("a9a")
def test_cli_data_list_shows_present_sets(shared_data, capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith("libsvm/")}
    assert " present " in lines["libsvm/a9a"] and str(SHARED_DATA / "libsvm" / "a9a") in lines["libsvm/a9a"]
    assert " missing " in lines["libsvm/w8a"]


# ----------------------------------------------------------------------------- the problem


def _synthetic(n_samples=60, d=8, n_linear=3, seed=1):
    rng = np.random.default_rng(seed)
    X = sp.random_array((n_samples, d), density=0.4, rng=rng, format="csr") * 3.0
    labels = np.where(rng.random(n_samples) < 0.5, 1.0, -1.0)
    A, b = constraint_data(d, n_linear, seed=4)
    return ConstrainedLogisticProblem(X, labels, A, b, name="test/clr"), rng


def _central(fun, x, eps=1e-6):
    cols = [(np.asarray(fun(x + eps * e)) - np.asarray(fun(x - eps * e))) / (2 * eps) for e in np.eye(x.size)]
    return np.stack(cols, axis=-1)


def test_constraint_data_is_seeded_gaussian():
    A, b = constraint_data(5, 3, seed=7)
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(A, rng.standard_normal((3, 5)))
    np.testing.assert_array_equal(b, rng.standard_normal(3))


def test_fun_and_start_against_direct_formula():
    from sklearn.metrics import log_loss

    p, rng = _synthetic()
    np.testing.assert_array_equal(p.x0, np.ones(8))
    np.testing.assert_array_equal(p.y0, np.ones(4))
    assert (p.n, p.m) == (8, 4) and p.metadata["n_samples"] == 60
    dense = p.X.toarray()
    for x in (p.x0, rng.standard_normal(8), 40 * rng.standard_normal(8)):
        direct = np.mean(np.log1p(np.exp(-p.labels * (dense @ x))))
        np.testing.assert_allclose(p.fun(x), direct, rtol=1e-12)
    x = rng.standard_normal(8)
    np.testing.assert_allclose(p.fun(x), log_loss(p.labels, expit(dense @ x), labels=[-1, 1]), rtol=1e-10)
    assert np.isfinite(p.fun(1e4 * x))  # no overflow: logaddexp


def test_derivatives_against_finite_differences():
    p, rng = _synthetic()
    for _ in range(3):
        x, y, v = rng.standard_normal(8), rng.standard_normal(4), rng.standard_normal(8)
        np.testing.assert_allclose(p.grad(x), _central(p.fun, x), rtol=1e-6, atol=1e-9)
        J = p.jac(x)
        assert isinstance(J, np.ndarray) and J.shape == (4, 8)
        np.testing.assert_allclose(J, _central(p.cons, x), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(p.cons(x)[-1], x @ x - 1, rtol=1e-14)
        for s in (1.0, 0.3, 0.0):
            lag_grad = lambda x, s=s, y=y: s * p.grad(x) + p.jac(x).T @ y
            H = p.lag_hess(x, y, s)
            assert isinstance(H, np.ndarray) and H.shape == (8, 8)
            np.testing.assert_allclose(H, _central(lag_grad, x), rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(p.lag_hvp(x, y, v, s), H @ v, rtol=1e-12, atol=1e-14)


def test_infeasible_draw_is_refused():
    X = sp.csr_array(np.eye(4))
    labels = np.ones(4)
    A, b = np.array([[1.0, 0, 0, 0]]), np.array([1.5])  # {x1 = 1.5} is at distance 1.5
    with pytest.raises(ValueError, match="infeasible.*distance 1.5 >= 1.*another seed"):
        ConstrainedLogisticProblem(X, labels, A, b, name="test/clr")
    p = ConstrainedLogisticProblem(X, labels, A, np.array([0.5]), name="test/clr")
    np.testing.assert_allclose(p.metadata["distance"], 0.5)
    with pytest.raises(ValueError, match="needs n_linear < d, got n_linear = 4 and d = 4"):
        ConstrainedLogisticProblem(X, labels, np.eye(4), np.zeros(4), name="test/clr")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown LIBSVM data set 'iris'; known: ionosphere_scale"):
        libsvm.constrained_logreg("iris")


@_needs("ionosphere_scale")
def test_ionosphere_problem(shared_data):
    p = optkit.get_problem("constrained-logreg/ionosphere_scale")
    assert p.name == "constrained-logreg/ionosphere_scale" and (p.n, p.m) == (34, 11)
    md = p.metadata
    assert (md["n"], md["m"], md["dataset"], md["seed"], md["n_linear"]) == (34, 11, "ionosphere_scale", 2023, 10)
    X, y = load_libsvm("ionosphere_scale")
    direct = np.mean(np.logaddexp(0, -y * (X.toarray() @ np.ones(34))))
    np.testing.assert_allclose(p.fun(p.x0), direct, rtol=1e-13)
    A, b = constraint_data(34, 10, 2023)
    np.testing.assert_allclose(p.cons(p.x0), np.concatenate([A.sum(axis=1) - b, [33.0]]), rtol=1e-13)
    q = optkit.get_problem("constrained-logreg/ionosphere_scale:seed=5,n_linear=4")
    assert q.m == 5 and q.metadata["seed"] == 5


@_needs("ionosphere_scale")
def test_infeasible_seed_on_real_data(shared_data):
    # seed 22 puts {A x = b} at distance 1.37 from the origin for d = 34, n_linear = 10
    with pytest.raises(ValueError, match=r"constrained-logreg/ionosphere_scale \(seed=22\).*another seed"):
        optkit.get_problem("constrained-logreg/ionosphere_scale", seed=22)


def test_suite_and_names():
    assert optkit.registry.get_suite("constrained-logreg") == [
        f"constrained-logreg/{n}" for n in ("ionosphere_scale", "sonar_scale", "splice_scale", "mushrooms", "a9a")
    ]
    for name in libsvm.DATASETS:
        assert f"constrained-logreg/{name}" in optkit.registry.list_problems()


def test_bench_reports_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTKIT_DATA", str(tmp_path))
    bench = run_benchmark("constrained-logreg/a9a", "scipy-lbfgsb", progress=False, warmup=False)
    (run,) = bench.runs
    assert run.status == "error"
    assert run.message.startswith("could not build problem: FileNotFoundError: LIBSVM file 'a9a' not found in ")
    assert "OPTKIT_DATA" in run.message
