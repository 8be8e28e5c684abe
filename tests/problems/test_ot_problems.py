"""The OT problem generators (problems/ot.py): shapes, marginals, costs, the MNIST reader, suites."""

import pickle
from pathlib import Path

import numpy as np
import pytest

import optkit
from optkit.ot_problem import OTProblem
from problems import ot as otp

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HAS_MNIST = (SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").exists()
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=f"MNIST test images not in {SHARED_DATA}")


@pytest.fixture
def mnist_data(monkeypatch):
    monkeypatch.setenv("OPTKIT_DATA", str(SHARED_DATA))


def _check_ot(p, n, m, eta):
    assert isinstance(p, OTProblem) and p.shape == (n, m) and p.C.shape == (n, m)
    np.testing.assert_allclose([p.a.sum(), p.b.sum()], [1.0, 1.0], rtol=1e-14)
    assert p.a.min() > 0 and p.b.min() > 0
    assert p.C.min() >= 0 and p.C.max() == 1.0
    np.testing.assert_allclose(p.reg, 1.0 / eta, rtol=1e-15)
    md = p.metadata
    assert (md["eta"], md["n"], md["m"]) == (eta, n, m)
    np.testing.assert_allclose(md["reg"], 1.0 / eta, rtol=1e-15)


def test_random_assignment():
    p = optkit.get_problem("ot/random-assignment", n=30, eta=50, seed=3)
    _check_ot(p, 30, 30, 50.0)
    assert p.name == "ot/random-assignment" and p.metadata["cost"] == "uniform"
    np.testing.assert_array_equal(p.a, np.full(30, 1 / 30))
    # U[0, 1] entries (divided by their max): mean 1/2, variance 1/12
    big = optkit.get_problem("ot/random-assignment", n=300, emd=False)
    np.testing.assert_allclose([big.C.mean(), big.C.var()], [0.5, 1 / 12], atol=5e-3)
    np.testing.assert_array_equal(p.C, optkit.get_problem("ot/random-assignment", n=30, eta=50, seed=3).C)
    assert not np.array_equal(p.C, optkit.get_problem("ot/random-assignment", n=30, eta=50, seed=4).C)


def test_point_clouds():
    p = optkit.get_problem("ot/point-clouds", n=40, m=25, eta=100, seed=1, components=2)
    _check_ot(p, 40, 25, 100.0)
    assert p.metadata["cost"] == "sqeuclidean" and p.metadata["components"] == 2
    # a squared-Euclidean cost: C = |x|^2 + |y|^2 - 2 x.y has rank <= 4
    assert np.linalg.matrix_rank(p.C, tol=1e-10) <= 4
    assert optkit.get_problem("ot/point-clouds", n=10).shape == (10, 10)
    # random marginals: the same points (drawn first), weights in [0.5, 1.5] before normalising
    q = optkit.get_problem("ot/point-clouds", n=40, m=25, eta=100, seed=1, components=2, marginals="random")
    np.testing.assert_allclose(q.C, p.C, rtol=0, atol=0)
    for w, size in ((q.a, 40), (q.b, 25)):
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-14)
        assert 0.5 / 1.5 <= w.min() * size and w.max() * size <= 1.5 / 0.5
    assert q.metadata["marginals"] == "random" and p.metadata["marginals"] == "uniform"


def test_grid_costs_and_image_weights():
    l1, l2 = otp.grid_cost(8, 8, "l1"), otp.grid_cost(8, 8, "l2")
    # pixel 0 = (0, 0), pixel 9 = (1, 1), pixel 63 = (7, 7): max L1 = 14, max squared L2 = 98
    np.testing.assert_allclose([l1[0, 9], l1[0, 63], l1[9, 0]], [2 / 14, 1.0, 2 / 14])
    np.testing.assert_allclose([l2[0, 9], l2[0, 63], l2[0, 2]], [2 / 98, 1.0, 4 / 98])
    np.testing.assert_array_equal(np.diag(l1), 0)
    img = np.zeros((2, 2))
    img[0, 1] = 3.0
    img[1, 1] = 1.0
    w = otp.image_weights(img, floor=1e-6)
    np.testing.assert_allclose(w, (np.array([0, 0.75, 0, 0.25]) + 1e-6) / (1 + 4e-6), rtol=1e-15)


@pytest.mark.parametrize("cost", ["l1", "l2"])
def test_digits_always_available(cost):
    p = optkit.get_problem("ot/digits", i=5, j=7, cost=cost, eta=100)
    _check_ot(p, 64, 64, 100.0)
    assert p.metadata["cost"] == cost and (p.metadata["i"], p.metadata["j"]) == (5, 7)
    np.testing.assert_array_equal(p.C, otp.grid_cost(8, 8, cost))
    from sklearn.datasets import load_digits

    np.testing.assert_allclose(p.a, otp.image_weights(load_digits().images[5], 1e-6), rtol=1e-15)
    assert p.a.min() == pytest.approx(1e-6 / (1 + 64e-6), rel=1e-9)


def test_emd_cost_is_lazy_computed_once_and_shared(monkeypatch):
    ot = pytest.importorskip("ot")
    p = optkit.get_problem("ot/digits", i=0, j=10, cost="l1")
    lazy = p.metadata["emd_cost"]
    assert isinstance(lazy, otp.LazyFloat) and not lazy.computed
    assert "not computed" in repr(p.metadata)
    calls = []
    real = ot.emd2
    monkeypatch.setattr(ot, "emd2", lambda *args, **kw: calls.append(kw) or real(*args, **kw))
    value = float(lazy)
    np.testing.assert_allclose(value, real(p.a, p.b, p.C), rtol=1e-12)
    assert calls == [{"numItermax": 10**7}]
    moved = p.to("torch") if optkit.backend.has_module("torch") else p
    assert float(moved.metadata["emd_cost"]) == value and len(calls) == 1
    assert float(pickle.loads(pickle.dumps(lazy))) == value and len(calls) == 1
    # the rounded-plan gap of OTProblem.evaluate reads it
    assert p.evaluate(p.C * 0 + p.a[:, None] * p.b[None, :])["emd_gap"] > 0


def test_emd_cost_left_out_for_big_problems(monkeypatch):
    monkeypatch.setattr(otp, "EMD_MAX_SIZE", 100)
    assert "emd_cost" not in optkit.get_problem("ot/random-assignment", n=11).metadata
    assert "emd_cost" in optkit.get_problem("ot/random-assignment", n=10).metadata
    assert "emd_cost" in optkit.get_problem("ot/random-assignment", n=11, emd=True).metadata
    assert "emd_cost" not in optkit.get_problem("ot/random-assignment", n=10, emd=False).metadata


@pytest.mark.parametrize(
    "name, params, word",
    [
        ("ot/random-assignment", {"n": 1}, "n"),
        ("ot/random-assignment", {"eta": 0}, "eta"),
        ("ot/random-assignment", {"seed": -1}, "seed"),
        ("ot/point-clouds", {"m": 1}, "m"),
        ("ot/point-clouds", {"components": 0}, "components"),
        ("ot/point-clouds", {"emd": "yes"}, "emd"),
        ("ot/point-clouds", {"marginals": "dirichlet"}, "marginals"),
        ("ot/digits", {"cost": "l3"}, "cost"),
        ("ot/digits", {"i": -1}, "i"),
        ("ot/digits", {"j": 1797}, "j"),
        ("ot/digits", {"floor": 0}, "floor"),
        ("ot/mnist", {"cost": "euclidean"}, "cost"),
        ("ot/mnist", {"eta": -5}, "eta"),
    ],
)
def test_bad_parameters_are_named(name, params, word):
    with pytest.raises(ValueError, match=rf"\b{word}\b"):
        optkit.get_problem(name, **params)


def test_unknown_parameter_is_named():
    with pytest.raises(TypeError, match="'size'"):
        optkit.get_problem("ot/random-assignment", size=3)


def test_mnist_absent_names_optkit_data(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTKIT_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="OPTKIT_DATA"):
        optkit.get_problem("ot/mnist")


@needs_mnist
def test_mnist_reader(mnist_data):
    images = otp.load_mnist_images()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8 and not images.flags.writeable
    # the canonical MNIST test-set pixel statistics (the usual normalisation constants)
    x = images / 255.0
    np.testing.assert_allclose([x.mean(), x.std()], [0.1325, 0.3105], atol=5e-5)
    assert images.min() == 0 and images.max() == 255
    # the first images (a 7, a 2, a 1): ink totals, and an empty border
    np.testing.assert_array_equal(images[:3].reshape(3, -1).sum(1), [18454, 28850, 9871])
    assert images[:, 0, :].sum() < images[:, 14, :].sum() / 100
    assert otp.load_mnist_images() is images  # parsed once


@needs_mnist
@pytest.mark.parametrize("cost", ["l1", "l2"])
def test_mnist_problem(mnist_data, cost):
    p = optkit.get_problem("ot/mnist", i=2, j=3, cost=cost, eta=1200)
    _check_ot(p, 784, 784, 1200.0)
    images = otp.load_mnist_images()
    np.testing.assert_allclose(p.a, otp.image_weights(images[2], 1e-6), rtol=1e-15)
    np.testing.assert_array_equal(p.C, otp.grid_cost(28, 28, cost))
    with pytest.raises(ValueError, match=r"\bi\b"):
        optkit.get_problem("ot/mnist", i=10000)


def test_mnist_reader_rejects_a_bad_file(tmp_path):
    bad = tmp_path / "images"
    bad.write_bytes((0x801).to_bytes(4, "big") + bytes(12))
    with pytest.raises(ValueError, match="magic"):
        otp.load_mnist_images(bad)
    short = tmp_path / "short"
    short.write_bytes((0x803).to_bytes(4, "big") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2 + bytes(5))
    with pytest.raises(ValueError, match="expected 2 x 2 x 2"):
        otp.load_mnist_images(short)


def test_suites_resolve(mnist_data):
    quick = optkit.get_suite("ot-quick")
    assert quick[:3] == [
        "ot/random-assignment:n=100,eta=100",
        "ot/digits:cost=l2,eta=100",
        "ot/point-clouds:n=200,eta=100",
    ]
    rectangular = optkit.get_problem(quick[3])
    assert rectangular.shape == (150, 100) and float(rectangular.a.max()) > 1.5 * float(rectangular.a.min())
    for spec in quick:
        p = optkit.get_problem(spec)
        assert isinstance(p, OTProblem) and p.metadata["eta"] == 100
    paper = optkit.get_suite("ot-paper")
    assert len(paper) == 4
    for spec in paper:
        if "mnist" in spec and not HAS_MNIST:
            continue
        p = optkit.get_problem(spec)
        assert p.metadata["eta"] == 1200 and p.shape in ((500, 500), (784, 784), (2000, 2000))
    demo = [s for s in optkit.get_suite("demo") if s.startswith("ot/")]
    assert len(demo) == 1 and isinstance(optkit.get_problem(demo[0]), OTProblem)
