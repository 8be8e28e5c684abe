"""optkit.analysis against closed forms, dense Hessians (torch.func.hessian) and numpy.linalg.eigh."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optkit.analysis import (
    hessian_diagonal_estimate,
    hessian_spectrum,
    hgp_penalty,
    hutchinson_alignment_penalty,
    stability_check,
)

# torch.func's forward-mode AD registers its decompositions with torch.jit.script on first use (torch 2.13 warns)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


class Vector(torch.nn.Module):
    """One parameter vector ``w``; ``model(X) = X @ w``."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())

    def forward(self, X):
        return X @ self.w


def quadratic_loss(model, R):
    """``||R w||^2 / 2``: Hessian ``R^T R``."""
    return 0.5 * (model(R) ** 2).sum()


def least_squares_loss(model, batch):
    X, y = batch
    r = model(X) - y
    return 0.5 * (r * r).mean()


def matrix_with_spectrum(eigenvalues, seed):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return Q, (Q * eigenvalues) @ Q.T


def logistic_envs(seed, envs=3, m=40, d=5):
    """Per-environment logistic losses of one weight vector (with bias), float64."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d + 1, generator=gen, dtype=torch.float64, requires_grad=True)
    data = []
    for e in range(envs):
        X = torch.randn(m, d, generator=gen, dtype=torch.float64) * (1 + 0.5 * e)
        y = (torch.rand(m, generator=gen, dtype=torch.float64) < 0.5).to(torch.float64)
        data.append((X, y))

    def loss(w, X, y):
        z = X @ w[:-1] + w[-1]
        return torch.nn.functional.binary_cross_entropy_with_logits(z, y)

    return w, data, loss


def test_hgp_penalty_equals_its_formula_with_explicit_hessian_vector_products():
    w, data, loss = logistic_envs(0)
    grads, hgps = [], []
    for X, y in data:
        f = lambda v, X=X, y=y: loss(v, X, y)
        g = torch.autograd.grad(f(w), w, create_graph=True)[0]
        _, hg = torch.autograd.functional.hvp(f, w, g, create_graph=True)
        hg_dense = torch.func.hessian(f)(w.detach()) @ g.detach()
        np.testing.assert_allclose(hg.detach().numpy(), hg_dense.numpy(), rtol=1e-12, atol=1e-14)
        grads.append(g)
        hgps.append(hg)
    # the reference: H g of the mean loss over environments
    mean_loss = lambda v: sum(loss(v, X, y) for X, y in data) / len(data)
    g_mean = torch.autograd.grad(mean_loss(w), w, create_graph=True)[0]
    _, hg_mean = torch.autograd.functional.hvp(mean_loss, w, g_mean, create_graph=True)
    G, HG = torch.stack(grads), torch.stack(hgps)
    scale = float(g_mean.detach().abs().max())
    np.testing.assert_allclose(G.mean(0).detach().numpy(), g_mean.detach().numpy(), rtol=1e-12, atol=1e-14 * scale)
    alpha, beta = 0.7, 0.3
    explicit = alpha * ((HG - hg_mean) ** 2).sum(1).mean() + beta * ((G - g_mean) ** 2).sum(1).mean()
    penalty = hgp_penalty([loss(w, X, y) for X, y in data], [w], alpha, beta)
    assert penalty.ndim == 0
    np.testing.assert_allclose(penalty.item(), explicit.item(), rtol=1e-6)
    # environments (L_0, 0): H g = (H_0 g_0, 0) against H_0 g_0 / 4: (9/16 + 1/16) / 2 = 5/16 of ||H_0 g_0||^2
    one = hgp_penalty([loss(w, *data[0]), 0 * w.sum()], [w], 1.0, 0.0)
    np.testing.assert_allclose(one.item(), 5 / 16 * (hgps[0] ** 2).sum().item(), rtol=1e-6)
    # differentiable: the gradient of the penalty is the gradient of the explicit formula
    (d_penalty,) = torch.autograd.grad(penalty, w)
    (d_explicit,) = torch.autograd.grad(explicit, w)
    np.testing.assert_allclose(d_penalty.numpy(), d_explicit.numpy(), rtol=1e-6, atol=1e-12)


def test_hutchinson_diagonal_error_falls_as_one_over_sqrt_probes():
    w, data, loss = logistic_envs(1, envs=1, d=7)
    f = lambda v: loss(v, *data[0])
    H = torch.func.hessian(f)(w.detach()).numpy()
    exact = np.diag(H)
    # E ||D - diag(H)||^2 = sum_{i != j} H_ij^2 / probes for Rademacher probes
    theory = np.sum(H * H) - np.sum(exact**2)
    for probes in (4, 64):
        errors = [
            np.sum(
                (hessian_diagonal_estimate(f(w), [w], probes=probes, seed=s, create_graph=False).numpy() - exact) ** 2
            )
            for s in range(40)
        ]
        ratio = np.mean(errors) / (theory / probes)
        assert 0.6 < ratio < 1.4, (probes, ratio)


def test_hutchinson_penalty_approaches_the_exact_diagonal_penalty():
    w, data, loss = logistic_envs(2, d=4)
    diags, grads = [], []
    for X, y in data:
        diags.append(np.diag(torch.func.hessian(lambda v, X=X, y=y: loss(v, X, y))(w.detach()).numpy()))
        grads.append(torch.autograd.grad(loss(w, X, y), w)[0].numpy())
    D, G = np.array(diags), np.array(grads)
    exact = 2.0 * ((D - D.mean(0)) ** 2).sum(1).mean() + 0.5 * ((G - G.mean(0)) ** 2).sum(1).mean()
    errors = []
    for probes in (8, 800):
        penalty = hutchinson_alignment_penalty([loss(w, X, y) for X, y in data], [w], 2.0, 0.5, probes=probes, seed=3)
        errors.append(abs(penalty.item() - exact) / exact)
        (dw,) = torch.autograd.grad(penalty, w)
        assert torch.isfinite(dw).all()
    assert errors[1] < 0.05 and errors[1] < errors[0]


def test_stability_check_on_a_quadratic_with_known_trace_and_top_eigenvalue():
    lam = np.linspace(1.0, 10.0, 30)
    Q, _ = matrix_with_spectrum(lam, seed=0)
    R = torch.from_numpy(np.sqrt(lam)[:, None] * Q.T)  # R^T R = Q diag(lam) Q^T
    model = Vector(torch.randn(30, dtype=torch.float64))
    eta = 0.15
    out = stability_check(model, quadratic_loss, R, eta, probes=200, seed=1)
    assert out["trace_stderr"] > 0
    assert abs(out["trace"] - lam.sum()) < 4 * out["trace_stderr"]
    np.testing.assert_allclose(out["lambda_max"], 10.0, rtol=1e-8)
    np.testing.assert_allclose(out["eta_trace_over_2"], eta * out["trace"] / 2, rtol=1e-15)
    np.testing.assert_allclose(out["eta_lambda_max_over_2"], 0.75, rtol=1e-8)


def spectrum_case(n=60, k=4, m=120, seed=0):
    """Least squares whose Hessian ``X^T X / m`` has ``k`` eigenvalues in [50, 100] and a bulk in [0.01, 1]."""
    rng = np.random.default_rng(seed)
    lam = np.concatenate([rng.uniform(50, 100, k), rng.uniform(0.01, 1.0, n - k)])
    Q, _ = matrix_with_spectrum(lam, seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    X = np.sqrt(m) * (U * np.sqrt(lam)) @ Q.T  # X^T X / m = Q diag(lam) Q^T
    batch = (torch.from_numpy(X), torch.from_numpy(rng.standard_normal(m)))
    return Vector(torch.zeros(n, dtype=torch.float64)), batch, np.sort(lam)[::-1]


@pytest.mark.parametrize("k", [1, 4, 7])
def test_hessian_spectrum_counts_the_outliers_of_a_known_spectrum(k):
    model, batch, lam = spectrum_case(k=k, seed=k)
    spec = hessian_spectrum(model, least_squares_loss, [batch], top_k=12, probes=20, steps=40, seed=0)
    np.testing.assert_allclose(spec.eigenvalues, lam[:12], rtol=1e-8)
    assert spec.outliers() == k
    assert lam[k] < spec.bulk_edge() < lam[k - 1]
    assert spec.outliers(threshold=0.5 * (lam[2] + lam[3])) == 3
    assert abs(spec.trace - lam.sum()) < 4 * spec.trace_stderr
    assert spec.n == 60
    # the density's own count: all n below the support, about k above the edge (rel. s.e. sqrt(2 / (20 k)))
    np.testing.assert_allclose(spec.count_above(lam[-1] - 1.0), 60, rtol=1e-10)
    assert abs(spec.count_above(spec.bulk_edge()) - k) < 3 * k * np.sqrt(2 / (20 * k))


def test_hessian_spectrum_sees_no_outliers_in_a_flat_spectrum():
    rng = np.random.default_rng(5)
    lam = rng.uniform(1.0, 2.0, 30)
    Q, _ = matrix_with_spectrum(lam, 5)
    X = np.sqrt(30) * (Q * np.sqrt(lam)) @ Q.T
    batch = (torch.from_numpy(X), torch.zeros(30, dtype=torch.float64))
    spec = hessian_spectrum(Vector(torch.zeros(30, dtype=torch.float64)), least_squares_loss, [batch], top_k=8)
    assert spec.outliers() == 0
    assert spec.outliers(gap=1.0) > 0


def test_spectrum_plot_draws_the_density_and_the_eigenvalues():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    model, batch, _ = spectrum_case(k=3, seed=3)
    spec = hessian_spectrum(model, least_squares_loss, [batch], top_k=6, probes=4, steps=30)
    ax = spec.plot()
    assert ax.get_yscale() == "log"
    assert len(ax.lines) == 1 + 6
    assert "3 outliers" in ax.get_title()
    matplotlib.pyplot.close("all")


def test_gauss_newton_spectrum_equals_eigh_of_the_dense_gauss_newton_matrix():
    from optkit.hessian import HessianOperator
    from optkit.linop import materialize

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(40, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (40,), generator=gen))

    def outputs_fn(m, b):
        return m(b[0])

    def ce(outputs, b):
        return torch.nn.functional.cross_entropy(outputs, b[1])

    options = {"kind": "ggn", "outputs_fn": outputs_fn, "loss_on_outputs": ce}
    spec = hessian_spectrum(model, None, [batch], top_k=5, probes=10, steps=30, **options)
    # the dense GGN by the other product method (both are checked against J^T H J in test_hessian.py)
    dense = materialize(HessianOperator.from_model(model, None, [batch], method="forward-over-reverse", **options))
    dense = dense.numpy()
    exact = np.linalg.eigvalsh(dense)[::-1]
    np.testing.assert_allclose(spec.eigenvalues, exact[:5], rtol=1e-8)
    assert exact[-1] > -1e-12 and abs(spec.trace - exact.sum()) < 4 * spec.trace_stderr
    hessian = hessian_spectrum(model, lambda m, b: ce(m(b[0]), b), [batch], top_k=5)
    assert np.abs(hessian.eigenvalues - spec.eigenvalues).max() > 1e-4


def test_stability_check_gives_the_same_numbers_with_either_product_method():
    model, batch, _ = spectrum_case(k=2, seed=2)
    one = stability_check(model, least_squares_loss, batch, 0.01, probes=20, method="double-backward")
    two = stability_check(model, least_squares_loss, batch, 0.01, probes=20, method="forward-over-reverse")
    for key in one.keys() - {"lambda_max_residual"}:
        np.testing.assert_allclose(one[key], two[key], rtol=1e-8, atol=1e-10, err_msg=key)
    # the residual is Lanczos's stopping quantity: rounding may end the two runs a step apart
    assert max(one["lambda_max_residual"], two["lambda_max_residual"]) <= 1e-6 * one["lambda_max"]


def test_bad_inputs_are_refused_before_any_work():
    model, batch, _ = spectrum_case(k=2, seed=2)
    with pytest.raises(ValueError, match="top_k"):
        hessian_spectrum(model, least_squares_loss, [batch], top_k=61)
    with pytest.raises(ValueError, match="probes"):
        hessian_spectrum(model, least_squares_loss, [batch], probes=0)
    with pytest.raises(TypeError, match="batches"):
        hessian_spectrum(model, least_squares_loss, [])
    with pytest.raises(ValueError, match="eta"):
        stability_check(model, least_squares_loss, batch, 0.0)
    w, data, loss = logistic_envs(0)
    with pytest.raises(ValueError, match="env_losses"):
        hgp_penalty([loss(w, *data[0])], [w], 1.0, 1.0)
    with pytest.raises(ValueError, match="env_losses"):
        hgp_penalty([w * 2, loss(w, *data[0])], [w], 1.0, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        hgp_penalty([loss(w, X, y) for X, y in data], [w], -1.0, 1.0)
    with pytest.raises(TypeError, match="params"):
        hutchinson_alignment_penalty([loss(w, X, y) for X, y in data], [w.detach()], 1.0, 1.0)
    with pytest.raises(ValueError, match="probes"):
        hutchinson_alignment_penalty([loss(w, X, y) for X, y in data], [w], 1.0, 1.0, probes=0)
