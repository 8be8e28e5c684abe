"""Least squares and logistic regression: derivatives, optima, torch parity, errors."""

import numpy as np
import pytest

import optkit

torch = pytest.importorskip("torch")

PROBLEMS = [
    ("ml/least-squares", {}),
    ("ml/least-squares", {"m": 30, "n": 60, "lam": 0.5, "seed": 3}),
    ("ml/logistic", {}),
    ("ml/logistic", {"dataset": "synthetic", "m": 80, "n": 12, "lam": 0.0, "seed": 1}),
]


def central_difference(f, x, v, eps=1e-6):
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


@pytest.fixture(params=PROBLEMS, ids=lambda p: p[0] + str(p[1]))
def problem(request):
    name, params = request.param
    return optkit.get_problem(name, **params)


def test_gradient_and_hvp_against_finite_differences(problem):
    rng = np.random.default_rng(0)
    x = 0.3 * rng.standard_normal(problem.n)
    g = problem.grad(x)
    for _ in range(3):
        v = rng.standard_normal(problem.n)
        np.testing.assert_allclose(g @ v, central_difference(problem.fun, x, v), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(problem.hvp(x, v), central_difference(problem.grad, x, v), rtol=1e-5, atol=1e-7)
    # the dense Hessian agrees with the hvp
    v = rng.standard_normal(problem.n)
    np.testing.assert_allclose(problem.hess(x) @ v, problem.hvp(x, v), rtol=1e-12, atol=1e-12)


def test_fun_and_grad_shares_and_counts(problem):
    x = np.linspace(-1, 1, problem.n)
    problem.reset_counters()
    f, g = problem.fun_and_grad(x)
    np.testing.assert_allclose(f, problem.fun(x), rtol=1e-15)
    np.testing.assert_allclose(g, problem.grad(x), rtol=1e-15)
    assert problem.counters["fun"] == 2 and problem.counters["grad"] == 2


def test_torch_parity(problem):
    t = problem.to("torch")
    assert t.backend == "torch" and t.metadata == problem.metadata
    rng = np.random.default_rng(1)
    x, v = rng.standard_normal(problem.n), rng.standard_normal(problem.n)
    xt, vt = torch.as_tensor(x), torch.as_tensor(v)
    np.testing.assert_allclose(t.fun(xt), problem.fun(x), rtol=1e-13)
    np.testing.assert_allclose(t.grad(xt).numpy(), problem.grad(x), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(t.hvp(xt, vt).numpy(), problem.hvp(x, v), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(t.hess(xt).numpy(), problem.hess(x), rtol=1e-12, atol=1e-15)
    f32 = problem.to("torch", dtype="float32")
    assert f32.fun_and_grad(xt.float())[1].dtype == torch.float32
    np.testing.assert_allclose(f32.fun(xt.float()), problem.fun(x), rtol=1e-5)


@pytest.mark.parametrize("params", [{}, {"m": 40, "n": 10, "lam": 0.1, "seed": 7}, {"m": 20, "n": 30, "lam": 0.0}])
def test_least_squares_optimum_matches_lstsq(params):
    p = optkit.get_problem("ml/least-squares", **params)
    m, n, lam = p.metadata["m"], p.metadata["n"], p.metadata["lam"]
    if lam == 0:
        x_ref = np.linalg.lstsq(p.A, p.b, rcond=None)[0]
    else:  # the normal equations
        x_ref = np.linalg.solve(p.A.T @ p.A / m + lam * np.eye(n), p.A.T @ p.b / m)
    np.testing.assert_allclose(p.metadata["x_opt"], x_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p.metadata["f_opt"], p.fun(x_ref), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(p.grad(x_ref), 0.0, atol=1e-10)
    np.testing.assert_allclose(p.evaluate(x_ref)["f_gap"], 0.0, atol=1e-12)


def test_logistic_optimum_against_cvxpy():
    cp = pytest.importorskip("cvxpy")
    p = optkit.get_problem("ml/logistic")
    assert (p.metadata["m"], p.metadata["n"]) == (569, 30)
    np.testing.assert_allclose(p.A.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(p.A.std(axis=0), 1.0, rtol=1e-12)
    m = p.A.shape[0]
    w = cp.Variable(p.n)
    objective = cp.sum(cp.logistic(-cp.multiply(p.y, p.A @ w))) / m + 0.5 * p.lam * cp.sum_squares(w)
    cp.Problem(cp.Minimize(objective)).solve(solver="CLARABEL")
    x_cvx = w.value
    # Newton on our own derivatives, from the cvxpy point: both must agree
    x = x_cvx.copy()
    for _ in range(5):
        x = x - np.linalg.solve(p.hess(x), p.grad(x))
    np.testing.assert_allclose(np.linalg.norm(p.grad(x)), 0.0, atol=1e-12)
    np.testing.assert_allclose(p.fun(x_cvx), p.fun(x), rtol=1e-9)
    np.testing.assert_allclose(x_cvx, x, rtol=0, atol=1e-6)


def test_synthetic_logistic_is_seeded():
    a = optkit.get_problem("ml/logistic", dataset="synthetic", seed=2)
    b = optkit.get_problem("ml/logistic", dataset="synthetic", seed=2)
    np.testing.assert_array_equal(a.A, b.A)
    np.testing.assert_array_equal(a.y, b.y)
    assert set(np.unique(a.y)) == {-1.0, 1.0} and a.A.shape == (500, 20)


def test_logistic_is_stable_for_large_margins():
    p = optkit.get_problem("ml/logistic", dataset="synthetic", m=10, n=3)
    x = np.full(3, 1e3)
    assert np.isfinite(p.fun(x)) and np.isfinite(p.grad(x)).all() and np.isfinite(p.hvp(x, x)).all()


@pytest.mark.parametrize(
    "name,params,word",
    [
        ("ml/least-squares", {"m": 0}, "m"),
        ("ml/least-squares", {"n": -1}, "n"),
        ("ml/least-squares", {"lam": -1.0}, "lam"),
        ("ml/least-squares", {"noise": float("nan")}, "noise"),
        ("ml/logistic", {"lam": -0.1}, "lam"),
        ("ml/logistic", {"dataset": "iris"}, "dataset"),
        ("ml/logistic", {"dataset": "synthetic", "n": 0}, "n"),
    ],
)
def test_bad_parameters_name_the_parameter(name, params, word):
    with pytest.raises(ValueError, match=rf"^{word} must"):
        optkit.get_problem(name, **params)
