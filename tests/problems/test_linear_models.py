"""Logistic and softmax regression (problems/linear_models.py) and their families (problems/ml.py)."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit, log_softmax, softmax

import optkit
from problems import ml
from problems.libsvm import load_libsvm
from problems.linear_models import LogisticRegression, SoftmaxRegression
from problems.mnist import load_mnist_images, load_mnist_labels, read_idx

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _needs(*files):
    missing = [f for f in files if not (SHARED_DATA / f).exists()]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not in {SHARED_DATA}")


needs_mnist = _needs("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def shared_data(monkeypatch):
    monkeypatch.setenv("OPTKIT_DATA", str(SHARED_DATA))


pytestmark = pytest.mark.usefixtures("one_blas_thread")


# ----------------------------------------------------------------------------- dense references

N, D, K, LAM = 37, 5, 3, 0.3


def _data(seed=0, n=N, d=D, k=K):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    classes = rng.integers(0, k, n)
    classes[:k] = np.arange(k)  # every class occurs
    return A, classes


def _logistic(bias, lam=LAM):
    A, classes = _data(k=2)
    return LogisticRegression(A, 2.0 * classes - 1.0, lam, bias=bias)


def _softmax(bias, lam=LAM):
    A, classes = _data()
    return SoftmaxRegression(A, classes, lam, bias=bias)


def _rows_and_mask(p):
    A = p.A[:, : p.n_features]
    rows = np.hstack([A, np.ones((A.shape[0], 1))]) if p.bias else A
    mask = np.ones(p.x_shape)
    if p.bias:
        mask[..., -1] = 0.0
    return rows, mask.ravel()


def dense_logistic(p, x):
    """f, gradient and Hessian of the logistic problem ``p`` from the textbook formulas."""
    rows, mask = _rows_and_mask(p)
    z = p.y * (rows @ x)
    f = np.mean(np.log1p(np.exp(-z))) + 0.5 * p.lam * np.sum((mask * x) ** 2)
    g = -rows.T @ (p.y * expit(-z)) / len(z) + p.lam * mask * x
    H = rows.T @ np.diag(expit(z) * expit(-z)) @ rows / len(z) + p.lam * np.diag(mask)
    return f, g, H


def dense_softmax(p, x):
    """f, gradient and Hessian of the softmax problem ``p``: H = mean_i (diag(p_i) - p_i p_i^T) kron a_i a_i^T."""
    rows, mask = _rows_and_mask(p)
    W = x.reshape(p.x_shape)
    Z = rows @ W.T
    n = rows.shape[0]
    f = -np.mean(log_softmax(Z, axis=1)[np.arange(n), p.y]) + 0.5 * p.lam * np.sum((mask * x) ** 2)
    P = softmax(Z, axis=1)
    onehot = np.eye(p.n_classes)[p.y]
    g = ((P - onehot).T @ rows / n).ravel() + p.lam * mask * x
    H = sum(np.kron(np.diag(P[i]) - np.outer(P[i], P[i]), np.outer(rows[i], rows[i])) for i in range(n)) / n
    return f, g, H + p.lam * np.diag(mask)


CASES = [
    pytest.param(_logistic, dense_logistic, False, id="logistic"),
    pytest.param(_logistic, dense_logistic, True, id="logistic-bias"),
    pytest.param(_softmax, dense_softmax, False, id="softmax"),
    pytest.param(_softmax, dense_softmax, True, id="softmax-bias"),
]


def central_difference(f, x, v, eps=1e-6):
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


@pytest.mark.parametrize("make,dense,bias", CASES)
def test_derivatives_against_dense_formulas_and_finite_differences(make, dense, bias):
    p = make(bias)
    assert p.n == int(np.prod(p.x_shape)) and p.x_shape[-1] == D + bias
    rng = np.random.default_rng(1)
    x = rng.standard_normal(p.n)
    f_ref, g_ref, H_ref = dense(p, x)
    f, g = p.fun_and_grad(x)
    np.testing.assert_allclose(f, f_ref, rtol=1e-13)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-14)
    for _ in range(3):
        v = rng.standard_normal(p.n)
        np.testing.assert_allclose(p.hvp(x, v), H_ref @ v, rtol=1e-12, atol=1e-14)
        # central differences: O(eps^2) truncation, O(1e-16 / eps) rounding, both far below rtol
        np.testing.assert_allclose(g @ v, central_difference(p.fun, x, v), rtol=1e-6)
        np.testing.assert_allclose(p.hvp(x, v), central_difference(p.grad, x, v), rtol=1e-5, atol=1e-8)
    if "hess" in p.capabilities:
        np.testing.assert_allclose(p.hess(x), H_ref, rtol=1e-12, atol=1e-14)
    # the intercepts are not regularised: with unit intercepts and no weights f is the data
    # loss alone, log(k) for softmax (equal logits), mean log(1 + exp(-y_i)) for logistic
    if bias:
        e = np.zeros(p.x_shape)
        e[..., -1] = 1.0
        loss = np.log(K) if isinstance(p, SoftmaxRegression) else np.mean(np.log1p(np.exp(-p.y)))
        np.testing.assert_allclose(p.fun(e.ravel()), loss, rtol=1e-14)


@pytest.mark.parametrize("make,dense,bias", CASES)
def test_an_epoch_of_batch_gradients_averages_to_the_full_gradient(make, dense, bias):
    p = make(bias)
    x = np.random.default_rng(2).standard_normal(p.n)
    stream = p.batches(8, seed=5)
    epoch = [next(stream) for _ in range(5)]  # 37 = 4 x 8 + 5
    assert [len(b) for b in epoch] == [8, 8, 8, 8, 5]
    p.reset_counters()
    parts = [p.batch_fun_and_grad(x, b) for b in epoch]
    assert p.counters["batch_grad"] == 5 and p.counters["samples"] == N and p.counters["grad"] == 0
    weights = [len(b) / N for b in epoch]
    f, g = p.fun_and_grad(x)
    np.testing.assert_allclose(sum(w * fb for w, (fb, _) in zip(weights, parts)), f, rtol=1e-13)
    np.testing.assert_allclose(sum(w * gb for w, (_, gb) in zip(weights, parts)), g, rtol=1e-12, atol=1e-14)
    # one batch against the dense formula on its rows alone
    rows = np.sort(epoch[0])
    sub = type(p)(p.A[rows, : p.n_features], p.y[rows], p.lam, bias=bias)
    np.testing.assert_allclose(p.batch_fun_and_grad(x, epoch[0])[1], dense(sub, x)[1], rtol=1e-12, atol=1e-14)


def test_batches_are_a_permutation_per_epoch_and_seeded():
    p = _softmax(False)
    first = p.batches(10, seed=3)
    epochs = [np.concatenate([next(first) for _ in range(4)]) for _ in range(3)]
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(N))
    assert not np.array_equal(epochs[0], epochs[1])
    again = p.batches(10, seed=3)
    np.testing.assert_array_equal(np.concatenate([next(again) for _ in range(12)]), np.concatenate(epochs))
    other = p.batches(10, seed=4)
    assert not np.array_equal(np.concatenate([next(other) for _ in range(4)]), epochs[0])


@pytest.mark.parametrize("bias", [False, True])
def test_softmax_with_two_classes_is_logistic_reparameterised(bias):
    # softmax(W) with W = [-w/2, w/2] and weight lam is logistic(w) with weight lam/2 (labels
    # class 1 <-> +1): the logits differ by A w and ||W_r||^2 = ||w_r||^2 / 2; then
    # grad_W = [-g, g] and H_W [-v/2, v/2] = [-H v, H v].
    A, classes = _data(seed=3, k=2)
    log = LogisticRegression(A, 2.0 * classes - 1.0, LAM / 2, bias=bias)
    soft = SoftmaxRegression(A, classes, LAM, bias=bias)
    rng = np.random.default_rng(4)
    w, v = rng.standard_normal(log.n), rng.standard_normal(log.n)
    W = np.concatenate([-w / 2, w / 2])
    np.testing.assert_allclose(soft.fun(W), log.fun(w), rtol=1e-13)
    g = log.grad(w)
    np.testing.assert_allclose(soft.grad(W), np.concatenate([-g, g]), rtol=1e-12, atol=1e-15)
    Hv = log.hvp(w, v)
    np.testing.assert_allclose(soft.hvp(W, np.concatenate([-v / 2, v / 2])), np.concatenate([-Hv, Hv]), rtol=1e-12)
    # the same classifier: equal accuracies
    assert soft.evaluate(W)["train_accuracy"] == log.evaluate(w)["train_accuracy"]


# ----------------------------------------------------------------------------- optima against scikit-learn

# f* from Newton's method on the dense Hessian to ||grad|| < 1e-15 (split_seed=0)
F_OPT = {
    ("ml/logistic/ionosphere_scale", 1e-3, True): 0.20266625466372998,
    ("ml/logistic/ionosphere_scale", 1e-3, False): 0.3110988860785836,
    ("ml/softmax/ionosphere_scale", 2e-3, True): 0.20266625466372998,  # = logistic with lam / 2
    ("ml/softmax/digits", 1e-2, False): 0.7330402035753232,
}


def _sklearn_optimum(p, lam):
    """scikit-learn's minimiser of ``p`` as a flat x: C = 1/(N lam), fit_intercept = bias.

    For softmax with two classes scikit-learn fits one logistic w (weight lam / 2, see
    the reparameterisation test); the softmax minimiser is then [-w/2, w/2]."""
    from sklearn.linear_model import LogisticRegression as SkLogistic

    X = p.A[:, : p.n_features]
    two_class_softmax = isinstance(p, SoftmaxRegression) and p.n_classes == 2
    labels = 2.0 * p.y - 1.0 if two_class_softmax else p.y
    C = 1.0 / (p.n_samples * (lam / 2 if two_class_softmax else lam))
    sk = SkLogistic(C=C, fit_intercept=p.bias, tol=1e-12, max_iter=10_000).fit(X, labels)
    W = np.hstack([sk.coef_, sk.intercept_[:, None]]) if p.bias else sk.coef_
    return np.concatenate([-W.ravel() / 2, W.ravel() / 2]) if two_class_softmax else W.ravel()


def _smallest_curvature(p, x):
    """The smallest eigenvalue of the Hessian at x, ignoring the exact null direction of
    softmax intercepts (moving every intercept together changes nothing)."""
    H = np.column_stack([p.hvp(x, e) for e in np.eye(p.n)])
    ev = np.linalg.eigvalsh(H)
    return ev[1] if isinstance(p, SoftmaxRegression) and p.bias else ev[0]


@pytest.mark.parametrize("name,lam,bias", list(F_OPT))
def test_optimum_matches_scikit_learn_and_lbfgsb_reaches_it(shared_data, name, lam, bias):
    if "ionosphere" in name and not (SHARED_DATA / "libsvm" / "ionosphere_scale").exists():
        pytest.skip("ionosphere_scale not in the shared data")
    p = optkit.get_problem(name, lam=lam, bias=bias)
    x_sk = _sklearn_optimum(p, lam)
    res = optkit.solve(p, "scipy-lbfgsb", tol=1e-7, max_iter=5000)
    assert res.status is optkit.Status.CONVERGED, res.message
    g_sk, g_ours = np.linalg.norm(p.grad(x_sk)), np.linalg.norm(p.grad(res.x))
    # scikit-learn minimised the same function: its point is stationary here too
    assert g_sk < 1e-6 and g_ours < 1e-6
    # mu-strong convexity: ||x - x*|| <= ||g(x)|| / mu and f(x) - f* <= ||g(x)||^2 / (2 mu); mu is
    # lam without intercepts; with them the curvature at the optimum, halved for its variation
    mu = lam if not bias else 0.5 * _smallest_curvature(p, res.x)
    diff = res.x - x_sk
    if isinstance(p, SoftmaxRegression) and bias:  # compare the centred intercepts
        W = diff.reshape(p.x_shape)
        diff = (W - np.outer(np.ones(p.n_classes), np.eye(p.x_shape[1])[-1]) * W[:, -1].mean()).ravel()
    assert np.linalg.norm(diff) <= (g_sk + g_ours) / mu
    f_opt = F_OPT[name, lam, bias]
    for x, gnorm in ((x_sk, g_sk), (res.x, g_ours)):
        assert -1e-14 <= p.fun(x) - f_opt <= gnorm**2 / (2 * mu) + 1e-14


# ----------------------------------------------------------------------------- torch


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("make,dense,bias", CASES)
def test_torch_float64_parity(make, dense, bias, device):
    torch = pytest.importorskip("torch")
    p = make(bias)
    p = type(p)(p.A[:, : p.n_features], p.y, p.lam, bias=bias, A_test=2.0 * p.A[:7, : p.n_features], y_test=p.y[:7])
    t = p.to("torch", device=device)
    assert t.backend == "torch" and t.device.startswith(device) and t.x_shape == p.x_shape and t.bias == bias
    rng = np.random.default_rng(6)
    x, v = rng.standard_normal(p.n), rng.standard_normal(p.n)
    xt, vt = torch.as_tensor(x, device=device), torch.as_tensor(v, device=device)
    np.testing.assert_allclose(t.fun(xt), p.fun(x), rtol=1e-13)
    np.testing.assert_allclose(t.grad(xt).cpu().numpy(), p.grad(x), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(t.hvp(xt, vt).cpu().numpy(), p.hvp(x, v), rtol=1e-12, atol=1e-15)
    for bt, b in zip(t.batches(6, seed=1), p.batches(6, seed=1)):
        assert bt.dtype == torch.int64 and bt.device == xt.device
        np.testing.assert_array_equal(bt.cpu().numpy(), b)
        ft, gt = t.batch_fun_and_grad(xt, bt)
        fb, gb = p.batch_fun_and_grad(x, b)
        np.testing.assert_allclose(ft, fb, rtol=1e-13)
        np.testing.assert_allclose(gt.cpu().numpy(), gb, rtol=1e-12, atol=1e-15)
        if len(b) < 6:
            break
    ev_t, ev = t.evaluate(xt), p.evaluate(x)
    assert ev_t.keys() == ev.keys() == {"fun", "grad_norm", "train_accuracy", "test_accuracy"}
    np.testing.assert_allclose([ev_t[k] for k in ev], [ev[k] for k in ev], rtol=1e-12)
    f32 = p.to("torch", device=device, dtype="float32")
    assert f32.fun_and_grad(xt.float())[1].dtype == torch.float32
    assert f32.y.dtype == (torch.int64 if isinstance(p, SoftmaxRegression) else torch.float32)
    np.testing.assert_allclose(f32.fun(xt.float()), p.fun(x), rtol=1e-5)
    back = t.to("numpy")
    np.testing.assert_array_equal(back.A, p.A)
    np.testing.assert_allclose(back.fun(x), p.fun(x), rtol=1e-15)


# ----------------------------------------------------------------------------- data sets


def test_digits_family_data_split_and_metadata():
    p = optkit.get_problem("ml/softmax/digits", lam=1e-3, split_seed=2, bias=False)
    assert isinstance(p, SoftmaxRegression) and p.kind == "finite-sum"
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, test = ml.stratified_split(bunch.target, 0.2, 2)
    assert (len(train), len(test)) == (1438, 359)
    np.testing.assert_array_equal(p.A, bunch.data[train] / 16.0)
    np.testing.assert_array_equal(p.A_test, bunch.data[test] / 16.0)
    np.testing.assert_array_equal(p.y_test, bunch.target[test])
    assert p.x_shape == (10, 64) and p.lam == 1e-3
    assert p.metadata == {
        "source": "scikit-learn load_digits (UCI optical digits, 8 x 8), pixels / 16",
        "dataset": "digits", "classes": 10, "n_train": 1438, "n_test": 359, "n_features": 64,
        "split": "seeded stratified 20% hold-out (split_seed=2)", "split_seed": 2, "lam": 1e-3, "bias": False,
    }  # fmt: skip
    binary = optkit.get_problem("ML/Logistic/Digits", split_seed=2)
    assert binary.name == "ml/logistic/digits" and binary.metadata["classes"] == 2 and binary.bias
    np.testing.assert_array_equal(binary.y, np.where(bunch.target[train] >= 5, 1.0, -1.0))


def test_stratified_split_keeps_class_shares():
    labels = np.repeat([0, 1, 2], [50, 30, 7])
    train, test = ml.stratified_split(labels, 0.2, seed=1)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(87))
    np.testing.assert_array_equal(np.bincount(labels[test]), [10, 6, 1])  # round(0.2 * 7) = 1
    np.testing.assert_array_equal(ml.stratified_split(labels, 0.2, seed=1)[1], test)
    assert not np.array_equal(ml.stratified_split(labels, 0.2, seed=2)[1], test)


def test_families_are_registered_and_resolve():
    names = optkit.list_problems()
    assert "ml/logistic/<name>" in names and "ml/softmax/<name>" in names and "ml/logistic" in names
    assert "a9a.t" not in ml.CLASSIFICATION_SETS and {"a9a", "mnist", "digits"} <= set(ml.CLASSIFICATION_SETS)
    with pytest.raises(KeyError, match="ml/softmax/digits"):
        optkit.get_problem("ml/softmax/digit")
    # ml/logistic itself is still the breast-cancer problem, now a LogisticRegression
    p = optkit.get_problem("ml/logistic")
    assert isinstance(p, LogisticRegression) and p.metadata["dataset"] == "breast-cancer"


@_needs("libsvm/a9a", "libsvm/a9a.t")
def test_a9a_test_accuracy_is_a_direct_count(shared_data):
    p = optkit.get_problem("ml/logistic/a9a", lam=1e-3)
    assert (p.n_samples, p.A_test.shape, p.metadata["split"]) == (32561, (16281, 124), "the LIBSVM test file a9a.t")
    # a least-squares linear classifier: about 84% right, far from every trivial answer
    x = np.linalg.lstsq(p.A, p.y, rcond=None)[0]
    X_test, y_test = load_libsvm("a9a.t")
    correct = np.sum(np.sign(X_test @ x[:-1] + x[-1]) == y_test)
    ev = p.evaluate(x)
    assert ev["test_accuracy"] == correct / 16281 and 0.8 < ev["test_accuracy"] < 0.9
    assert ev["train_accuracy"] == np.sum(np.sign(p.A @ x) == p.y) / 32561


@needs_mnist
def test_mnist_split_and_test_accuracy_is_a_direct_count(shared_data):
    p = optkit.get_problem("ml/softmax/mnist", split_seed=1)
    images = load_mnist_images().reshape(10000, -1) / 255.0
    labels = load_mnist_labels()
    train, test = ml.stratified_split(labels, 0.2, 1)
    assert (p.n_samples, p.A_test.shape[0], p.x_shape) == (8000, 2000, (10, 785))
    np.testing.assert_array_equal(p.A_test[:, :-1], images[test])
    # the nearest-centroid classifier is linear: logits a . mu_c - ||mu_c||^2 / 2
    centroids = np.stack([images[train][labels[train] == c].mean(axis=0) for c in range(10)])
    W = np.hstack([centroids, -0.5 * np.sum(centroids**2, axis=1, keepdims=True)])
    distances = ((images[test][:, None, :] - centroids[None]) ** 2).sum(axis=2)
    correct = np.sum(distances.argmin(axis=1) == labels[test])
    ev = p.evaluate(W.ravel())
    assert ev["test_accuracy"] == correct / 2000 and 0.75 < ev["test_accuracy"] < 0.9


@needs_mnist
def test_mnist_labels_reader(shared_data):
    labels = load_mnist_labels()
    assert labels.shape == (10000,) and labels.dtype == np.uint8 and not labels.flags.writeable
    # /work/shared/data/README.md: the canonical class counts; the first digits are 7, 2, 1
    np.testing.assert_array_equal(np.bincount(labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    np.testing.assert_array_equal(labels[:3], [7, 2, 1])
    assert load_mnist_labels() is labels


def test_idx_reader_rejects_bad_files(tmp_path):
    good = tmp_path / "labels"
    good.write_bytes((0x801).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([4, 0, 9]))
    np.testing.assert_array_equal(read_idx(good, 1), [4, 0, 9])
    with pytest.raises(ValueError, match="magic 0x801, expected 0x803"):
        read_idx(good, 3)
    short = tmp_path / "short"
    short.write_bytes((0x801).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes(2))
    with pytest.raises(ValueError, match="holds 2 label bytes, expected 5"):
        load_mnist_labels(short)


@pytest.mark.parametrize("name", ["ml/logistic/mnist", "ml/softmax/a9a", "ml/logistic/ionosphere_scale"])
def test_absent_data_names_optkit_data(monkeypatch, tmp_path, name):
    monkeypatch.setenv("OPTKIT_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="OPTKIT_DATA"):
        optkit.get_problem(name)


# ----------------------------------------------------------------------------- bad input


def _bad_inputs():
    A, classes = _data()
    pm = 2.0 * (classes > 0) - 1.0
    nan = A.copy()
    nan[3, 1] = np.nan
    return [
        (LogisticRegression, (A, classes.astype(float)), {}, "y must hold the labels"),
        (LogisticRegression, (A, pm[:-1]), {}, r"y must have shape \(37,\)"),
        (LogisticRegression, (A, pm, -0.1), {}, "lam must be"),
        (LogisticRegression, (nan, pm), {}, "A contains NaN"),
        (LogisticRegression, (A, pm), {"A_test": nan, "y_test": pm}, "A_test contains NaN"),
        (LogisticRegression, (A, pm), {"A_test": A[:, :3], "y_test": pm}, "A_test must have 5 columns"),
        (LogisticRegression, (A, pm), {"A_test": A}, "given together"),
        (LogisticRegression, (A, pm, 0.1, np.zeros(4)), {}, r"x0 must have shape \(5,\)"),
        (LogisticRegression, (sp.csr_array(A), pm), {}, "A must be a dense array"),
        (LogisticRegression, (A.astype(int), pm), {}, "A must have a real floating dtype"),
        (LogisticRegression, (A[0], pm), {}, "A must be a non-empty 2-D array"),
        (LogisticRegression, (A, pm), {"bias": 1}, "bias must be"),
        (SoftmaxRegression, (A, classes), {"n_classes": 2}, "y must hold labels < n_classes = 2, got the label 2"),
        (SoftmaxRegression, (A, classes - 1), {}, "y must hold class labels"),
        (SoftmaxRegression, (A, classes + 0.5), {}, "y must hold class labels"),
        (SoftmaxRegression, (A, classes), {"A_test": A, "y_test": -classes}, "y_test must hold class labels"),
        (SoftmaxRegression, (A, classes), {"A_test": A, "y_test": classes + 3, "n_classes": 4}, "y_test must hold"),
        (SoftmaxRegression, (A, classes), {"n_classes": 1}, "n_classes must be an integer >= 2"),
        (SoftmaxRegression, (A, classes, 0.1, np.zeros(5)), {}, r"x0 must have shape \(15,\)"),
    ]


@pytest.mark.parametrize("cls,args,kwargs,message", _bad_inputs())
def test_bad_input_is_a_clear_error(cls, args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(*args, **kwargs)


@pytest.mark.parametrize(
    "params,word", [({"lam": -1.0}, "lam"), ({"split_seed": -1}, "split_seed"), ({"bias": "yes"}, "bias")]
)
def test_bad_family_parameters_name_the_parameter(params, word):
    with pytest.raises(ValueError, match=rf"^{word} must"):
        optkit.get_problem("ml/softmax/digits", **params)
