"""The torch-optimizer adapter on smooth and finite-sum problems: hand-written loops, minibatches, epochs, tol."""

import math

import numpy as np
import pytest

import optkit
from optkit import FiniteSumProblem, SmoothProblem, Status
from optkit.backend import get_namespace

torch = pytest.importorskip("torch")


class MultiOutputLeastSquares(FiniteSumProblem):
    """``(1/N) sum_i ||W a_i - y_i||^2 / 2`` over W of shape (k, d): a matrix variable."""

    def __init__(self, A, Y, x0=None, name="toy/multi-ls"):
        k, d = Y.shape[1], A.shape[1]
        xp = get_namespace(A)
        x0 = xp.zeros(k * d, dtype=A.dtype) if x0 is None else x0
        super().__init__(x0, A.shape[0], x_shape=(k, d), name=name)
        self.A, self.Y = A, Y

    def _batch_fg(self, x, indices):
        A, Y = self.A[indices], self.Y[indices]
        W = x.reshape(self.x_shape)
        R = A @ W.T - Y
        return (R * R).sum() / (2 * A.shape[0]), (R.T @ A).reshape(-1) / A.shape[0]

    def _converted(self, conv):
        return MultiOutputLeastSquares(conv(self.A), conv(self.Y), conv(self.x0), name=self.name)


def multi_ls(n=40, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    return MultiOutputLeastSquares(A, A @ rng.standard_normal((d, k)) + 0.1 * rng.standard_normal((n, k)))


def hand_written(problem, optimizer_cls, steps, *, batch_size=None, seed=0, **options):
    """The loop the adapter must equal: torch's optimizer fed the problem's own (batch) gradients."""
    shape = getattr(problem, "x_shape", (problem.n,))
    weight = torch.nn.Parameter(torch.as_tensor(problem.x0).reshape(shape).clone())
    opt = optimizer_cls([weight], **options)
    batches = problem.batches(batch_size, seed=seed) if batch_size else None
    for _ in range(steps):
        x = weight.detach().reshape(-1).numpy()
        _, g = problem.batch_fun_and_grad(x, next(batches)) if batches else problem.fun_and_grad(x)
        weight.grad = torch.as_tensor(g).reshape(shape)
        opt.step()
    return weight.detach().reshape(-1).numpy()


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
