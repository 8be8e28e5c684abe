"""The ``shampoo`` baseline: pytorch_optimizer's Shampoo through the torch-optimizer adapter."""

import numpy as np
import pytest

import optkit
from optkit import Status

torch = pytest.importorskip("torch")
pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
from optimizer_cases import hand_written_path, multi_ls

CONSTANT = {"schedule": "constant", "warmup": 0.0}


def by_hand(problem, steps, *, batch_size=None, seed=0, **options):
    """pytorch_optimizer.Shampoo fed the problem's own (batch) gradients, step by step: the weights after each."""
    make = lambda params: pytorch_optimizer.Shampoo(params, **options)
    return hand_written_path(problem, make, steps, batch_size=batch_size, seed=seed)


def full_matrix_adagrad(problem, steps, lr, eps):
    """The closed form of Shampoo on a vector: x -= lr (eps I + sum_t g_t g_t^T)^(-1/2) g, via eigh."""
    x, stats = problem.x0.copy(), eps * np.eye(problem.n)
    for _ in range(steps):
        g = problem.grad(x)
        stats += np.outer(g, g)
        vals, vecs = np.linalg.eigh(stats)
        x = x - lr * (vecs @ ((vecs.T @ g) / np.sqrt(vals)))
    return x


@pytest.mark.parametrize("options", [
    {"lr": 0.05},
    {"lr": 0.05, "momentum": 0.5, "update_freq": 3, "matrix_eps": 1e-4},
    {"lr": 0.02, "weight_decay": 0.1, "weight_decouple": True},
])
def test_full_batch_run_equals_the_package_driven_by_hand(options):
    p = optkit.get_problem("ml/least-squares", m=30, n=8)
    res = optkit.solve(p, "shampoo", max_iter=12, **CONSTANT, **options)
    package = {"preconditioning_compute_steps" if k == "update_freq" else k: v for k, v in options.items()}
    expected = by_hand(optkit.get_problem("ml/least-squares", m=30, n=8), 12, **package)[-1]
    np.testing.assert_allclose(res.x, expected, rtol=1e-12, atol=1e-14)
    assert res.status is Status.MAX_ITER and res.counters["grad"] == 12


def test_minibatch_run_on_a_matrix_variable_equals_the_package():
    res = optkit.solve(multi_ls(), "shampoo", max_iter=17, batch_size=8, seed=2, lr=0.03, momentum=0.3, **CONSTANT)
    expected = by_hand(multi_ls(), 17, batch_size=8, seed=2, lr=0.03, momentum=0.3)[-1]
    np.testing.assert_allclose(res.x, expected, rtol=1e-12, atol=1e-14)
    assert res.counters["batch_grad"] == 17 and res.counters["samples"] == 17 * 8


def test_a_vector_variable_takes_full_matrix_adagrad_steps():
    p = optkit.get_problem("ml/least-squares", m=30, n=8)
    res = optkit.solve(p, "shampoo", max_iter=10, lr=0.1, matrix_eps=1e-3, **CONSTANT)
    expected = full_matrix_adagrad(optkit.get_problem("ml/least-squares", m=30, n=8), 10, lr=0.1, eps=1e-3)
    np.testing.assert_allclose(res.x, expected, rtol=1e-9)


def test_the_first_update_freq_minus_one_steps_leave_the_weights_unchanged():
    p = optkit.get_problem("ml/least-squares", m=30, n=8)
    path = by_hand(p, 4, lr=0.1, preconditioning_compute_steps=3)
    np.testing.assert_array_equal(path[0], p.x0)
    np.testing.assert_array_equal(path[1], p.x0)
    assert np.linalg.norm(path[2] - p.x0) > 0.01
    fresh = optkit.get_problem("ml/least-squares", m=30, n=8)
    res = optkit.solve(fresh, "shampoo", max_iter=2, lr=0.1, update_freq=3, **CONSTANT)
    np.testing.assert_array_equal(res.x, p.x0)


def test_a_run_reaches_the_least_squares_minimiser():
    p = optkit.get_problem("ml/least-squares", m=60, n=10, lam=0.01)
    res = optkit.solve(p, "shampoo", max_iter=3000, lr=0.5, tol=1e-8, eval_every=10, **CONSTANT)
    assert res.status is Status.CONVERGED
    np.testing.assert_allclose(res.x, p.metadata["x_opt"], atol=1e-7)
    np.testing.assert_allclose(res.fun, p.metadata["f_opt"], rtol=1e-12)


@pytest.mark.parametrize("option, value, error, message", [
    ("momentum", 1.0, ValueError, "momentum must be in \\[0, 1\\)"),
    ("momentum", -0.1, ValueError, "momentum must be a finite number >= 0"),
    ("update_freq", 0, ValueError, "update_freq must be an integer >= 1"),
    ("update_freq", 2.5, ValueError, "update_freq must be an integer >= 1"),
    ("matrix_eps", 0.0, ValueError, "matrix_eps must be a positive finite number"),
    ("weight_decouple", "yes", TypeError, "weight_decouple must be true or false"),
])
def test_bad_options_name_themselves(option, value, error, message):
    with pytest.raises(error, match=message):
        optkit.get_solver("shampoo", **{option: value})


def test_check_says_when_the_package_is_missing(monkeypatch):
    import solvers.baselines.torch_optimizers as recipes

    monkeypatch.setattr(recipes, "has_module", lambda name: name != "pytorch_optimizer")
    reason = optkit.get_solver("shampoo").check(optkit.get_problem("ml/least-squares"))
    assert reason == "solver 'shampoo' needs pytorch_optimizer 4.1.0 (pip install 'optkit[curvature]')"
