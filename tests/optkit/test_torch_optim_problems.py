"""The torch-optimizer adapter on smooth and finite-sum problems: hand-written loops, minibatches, epochs, tol."""

import math

import numpy as np
import pytest

import optkit
from optkit import SmoothProblem, Status

torch = pytest.importorskip("torch")
from optimizer_cases import hand_written_path, multi_ls


def hand_written(problem, optimizer_cls, steps, *, batch_size=None, seed=0, **options):
    """The variable after ``steps`` steps of the hand-written loop (:func:`optimizer_cases.hand_written_path`)."""
    make = lambda params: optimizer_cls(params, **options)
    return hand_written_path(problem, make, steps, batch_size=batch_size, seed=seed)[-1]


CONSTANT = dict(schedule="constant", warmup=0.0)


def test_adamw_full_batch_equals_torch_on_the_problems_gradient():
    p = optkit.get_problem("ml/least-squares")
    res = optkit.solve(p, "adamw", max_iter=25, lr=0.05, weight_decay=0.01, **CONSTANT)
    expected = hand_written(optkit.get_problem("ml/least-squares"), torch.optim.AdamW, 25, lr=0.05, weight_decay=0.01)
    np.testing.assert_array_equal(res.x, expected)
    assert isinstance(res.x, np.ndarray) and res.x.shape == (p.n,) and res.status is Status.MAX_ITER
    assert res.counters["fun"] == res.counters["grad"] == 25  # the solver's own gradients only
    np.testing.assert_allclose(res.fun, p.fun(res.x), rtol=1e-14)
    np.testing.assert_allclose(res.metrics["grad_norm"], np.linalg.norm(p.grad(res.x)), rtol=1e-12)


@pytest.mark.parametrize("name, cls, options", [
    ("adamw", torch.optim.AdamW, {"lr": 0.02, "weight_decay": 0.0}),
    ("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
])
def test_minibatch_steps_equal_a_hand_written_loop(name, cls, options):
    p = multi_ls()
    res = optkit.solve(p, name, max_iter=23, batch_size=8, seed=3, **CONSTANT, **options)
    expected = hand_written(multi_ls(), cls, 23, batch_size=8, seed=3, **options)
    np.testing.assert_array_equal(res.x, expected)
    # 23 steps of 8 samples: 184 samples, 4.6 epochs of 40
    assert res.counters["samples"] == 184 and res.counters["batch_grad"] == 23
    np.testing.assert_allclose(res.trace[-1]["epoch"], 4.6)


def test_epochs_end_the_run_and_size_the_schedule():
    p = multi_ls()
    res = optkit.solve(p, "adamw", max_iter=1000, batch_size=8, epochs=2.0, lr=0.02, warmup=0.5)
    assert res.status is Status.MAX_ITER and res.nit == 10  # 2 epochs of 40 samples in batches of 8
    lrs = [row["lr"] for row in res.trace[1:]]
    np.testing.assert_allclose(lrs[:5], 0.02 * np.arange(1, 6) / 5)  # warm-up over half of the 10 steps
    np.testing.assert_allclose(lrs[-1], 0.02 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 5))))
    # 42 samples in batches of 8: six minibatches an epoch, the last of 2 samples
    partial = optkit.solve(multi_ls(n=42), "adamw", batch_size=8, epochs=2.0, lr=0.02)
    assert partial.nit == 12 and partial.trace[-1]["epoch"] == 2.0 and partial.counters["samples"] == 84
    assert partial.message == "ran the epochs asked for (epochs=2: 12 steps)"


def test_measured_rows_hold_the_problems_evaluation():
    p = multi_ls()
    res = optkit.solve(p, "adamw", max_iter=9, batch_size=10, eval_every=4, lr=0.05)
    measured = [row["iter"] for row in res.trace if "fun" in row]
    assert measured == [0, 4, 8, 9]
    for row in res.trace:
        assert {"loss", "epoch", "lr", "samples_per_s"} <= set(row) or row["iter"] == 0
    # measuring is neither counted nor timed: only the 9 minibatch gradients are the solver's
    assert res.counters == {"batch_grad": 9, "samples": 90}
    np.testing.assert_allclose(res.fun, p.fun(res.x), rtol=1e-14)


def test_tol_is_the_full_gradient_norm_tested_on_measured_steps():
    p = multi_ls()
    res = optkit.solve(p, "sgd", max_iter=5000, lr=0.3, momentum=0.5, tol=1e-8, eval_every=10, **CONSTANT)
    assert res.status is Status.CONVERGED and res.nit % 10 == 0
    assert np.linalg.norm(p.grad(res.x)) <= 1e-8
    # least squares: the minimiser solves the normal equations
    W = np.linalg.lstsq(p.A, p.Y, rcond=None)[0].T
    np.testing.assert_allclose(res.x, W.reshape(-1), atol=1e-7)


def test_galore_projects_a_matrix_variable_and_equals_its_optimizer():
    from solvers.lowrank import GaLoreAdamW

    p = multi_ls(d=12, k=5)
    options = dict(rank=2, update_proj_gap=3, scale=0.5)
    res = optkit.solve(p, "galore-adamw", max_iter=7, lr=0.05, batch_size=10, **CONSTANT, **options)
    expected = hand_written(multi_ls(d=12, k=5), GaLoreAdamW, 7, batch_size=10, lr=0.05, weight_decay=0.0, **options)
    np.testing.assert_array_equal(res.x, expected)
    assert res.trace[-1]["refresh_s"] > 0
    # on a vector variable GaLore trains full-rank: AdamW's step, to the last bit
    q = optkit.get_problem("ml/least-squares")
    galore = optkit.solve(q, "galore-adamw", max_iter=5, lr=0.05, **CONSTANT)
    adamw = optkit.solve(q, "adamw", max_iter=5, lr=0.05, **CONSTANT)
    np.testing.assert_array_equal(galore.x, adamw.x)


def test_torch_problem_runs_on_its_own_tensors():
    p = multi_ls()
    numpy_run = optkit.solve(p, "adamw", max_iter=6, batch_size=8, lr=0.05)
    torch_run = optkit.solve(p.to("torch"), "adamw", max_iter=6, batch_size=8, lr=0.05)
    assert isinstance(torch_run.x, torch.Tensor) and torch_run.x.dtype == torch.float64
    np.testing.assert_allclose(torch_run.x.numpy(), numpy_run.x, rtol=1e-12, atol=1e-14)
    single = optkit.solve(p.to("torch", dtype="float32"), "adamw", max_iter=6, batch_size=8, lr=0.05)
    assert single.x.dtype == torch.float32
    np.testing.assert_allclose(single.x.numpy(), numpy_run.x, rtol=1e-4, atol=1e-5)


def test_nan_loss_ends_with_nonfinite():
    p = SmoothProblem(lambda x: float("nan") if x[0] < 0.9 else 0.5 * float(x @ x), lambda x: x, np.ones(2))
    res = optkit.solve(p, "adamw", max_iter=10, lr=0.5, **CONSTANT)
    # step 1 evaluates x0 (finite) and moves x[0] to 0.5; step 2's loss, at x1, is NaN
    assert res.status is Status.NONFINITE and res.nit == 2 and math.isnan(res.trace[-1]["loss"])
    # the step that measured the NaN is not taken: x stays at x1 (AdamW's first step: lr * sign(g))
    np.testing.assert_allclose(res.x, [0.5, 0.5], rtol=1e-6)


def test_option_checks():
    p = optkit.get_problem("ml/least-squares")
    assert "batch_size need a finite-sum problem" in optkit.get_solver("adamw", batch_size=4).check(p)
    with pytest.raises(ValueError, match="x0 must be an array of shape"):
        optkit.solve(p, "adamw", x0=np.zeros(3))
    with pytest.raises(ValueError, match="momentum must be in"):
        optkit.get_solver("sgd", momentum=1.0)
    with pytest.raises(ValueError, match="epochs must be a positive"):
        optkit.get_solver("adamw", epochs=0)


def test_torch_runs_single_threaded_on_numpy_problems_and_restores_its_setting():
    before = torch.get_num_threads()
    seen = []

    def threads(info):
        seen.append(torch.get_num_threads())

    optkit.solve(multi_ls(), "adamw", max_iter=2, callback=threads)
    optkit.solve(multi_ls().to("torch"), "adamw", max_iter=1, callback=threads)
    optkit.solve(multi_ls(), "adamw", max_iter=1, torch_threads=2, callback=threads)
    assert seen == [1, 1, 1, before, before, 2, 2] and torch.get_num_threads() == before
