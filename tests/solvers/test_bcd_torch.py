"""Solver ``bcd`` on torch: the dense objectives of ``_torch_objectives`` against the numpy ones.

Same run on ``problem`` and ``problem.to("torch")`` (CPU, float64): the iterates agree to
1e-10 (the two backends differ only in the rounding of their BLAS, ~1e-16 per operation,
which the iteration does not amplify over 50 updates of a well-conditioned problem); the
maintained predictions and gradient equal the recomputed ones; refusals name what runs on torch.
"""

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from optkit.composite_problem import L1, CompositeProblem, LogisticDatafit, QuadraticDatafit
from optkit.problem import LinearSystemProblem
from problems.linear_models import SoftmaxRegression
from solvers.bcd import BCD
from solvers.bcd._torch_objectives import TorchLinearModelObjective, TorchSoftmaxObjective


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The problems are tiny: with several threads torch's per-operation thread wake-ups
    dominate (and on a shared machine, wait for a core), 100x slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: agreement of the numpy and torch runs: BLAS rounding only (see the module docstring)
SAME_RUN_RTOL = 1e-10


def lasso(m=60, n=30, lam=0.02, seed=0):
    rng = np.random.default_rng(seed)
    return CompositeProblem(rng.standard_normal((m, n)), QuadraticDatafit(rng.standard_normal(m)), L1(lam))


def logistic(m=80, n=20, lam=0.0, seed=1):
    rng = np.random.default_rng(seed)
    y = np.where(rng.standard_normal(m) > 0, 1.0, -1.0)
    return CompositeProblem(rng.standard_normal((m, n)), LogisticDatafit(y), L1(lam))


def softmax(N=50, d=8, k=4, lam=0.01, bias=True, seed=3):
    rng = np.random.default_rng(seed)
    return SoftmaxRegression(rng.standard_normal((N, d)), rng.integers(0, k, N), lam=lam, bias=bias, n_classes=k)


def iterates(solver, problem, steps):
    """``x`` after each of ``steps`` block updates (float64 numpy copies)."""
    state = solver.init(problem, problem.x0)
    out = []
    for _ in range(steps):
        state = solver.step(problem, state)
        out.append(state.x.copy())
    return np.array(out), state


SAME_RUN_CASES = [
    ("softmax", {"partition": "variable", "selection": "gsl", "update": "matrix", "block_size": 6}),
    ("softmax", {"partition": "order", "selection": "gs", "update": "newton", "block_size": 4}),
    ("softmax", {"partition": "variable", "selection": "gsq", "update": "gradient", "block_size": 5}),
    ("lasso", {"partition": "order", "selection": "gsl", "update": "gradient", "block_size": 5}),
    ("lasso", {"partition": "variable", "selection": "working-set", "update": "prox-newton", "block_size": 4}),
    # doubling on logistic: on least squares its test is an equality in exact arithmetic whenever the
    # step moves one coordinate (L_i is the exact curvature), so rounding, not the backend, decides it
    ("logistic", {"partition": "sort", "selection": "random", "update": "doubling", "block_size": 3}),
    ("logistic", {"partition": "variable", "selection": "gsd", "update": "matrix", "block_size": 4}),
    ("logistic", {"partition": "order", "selection": "cyclic", "update": "newton", "block_size": 5}),
    ("l1-logistic", {"partition": "variable", "selection": "working-set", "update": "prox-newton", "block_size": 4}),
]
PROBLEMS = {"softmax": softmax, "lasso": lasso, "logistic": logistic, "l1-logistic": lambda: logistic(lam=0.02)}


@pytest.mark.parametrize(("kind", "options"), SAME_RUN_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_numpy_and_torch_runs_give_the_same_iterates(kind, options):
    problem = PROBLEMS[kind]()
    solver = BCD(**options)
    on_numpy, _ = iterates(solver, problem, 50)
    on_torch, state = iterates(solver, problem.to("torch"), 50)
    assert isinstance(state.objective, (TorchLinearModelObjective, TorchSoftmaxObjective))
    scale = max(float(np.abs(on_numpy).max()), 1.0)
    np.testing.assert_allclose(on_torch, on_numpy, rtol=SAME_RUN_RTOL, atol=SAME_RUN_RTOL * scale)


@pytest.mark.parametrize("kind", ["softmax", "lasso", "logistic"])
def test_maintained_predictions_and_gradient_equal_the_recomputed_after_500_updates(kind):
    problem = PROBLEMS[kind]().to("torch")
    state = iterates(BCD(partition="variable", selection="gsl", update="matrix", block_size=4), problem, 500)[1]
    objective = state.objective
    fresh = objective.recomputed()
    # 500 incremental updates each add ~1e-16 relative rounding to z and g
    torch.testing.assert_close(objective.z, fresh["z"], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(objective.g, fresh["g"], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(objective.value(), fresh["f"], rtol=1e-12)


def test_solve_returns_x_on_the_problems_backend_and_the_numpy_solution():
    problem = lasso()
    solver = BCD(partition="variable", selection="working-set", update="prox-newton", block_size=4, tol=1e-10)
    on_numpy = solver.solve(problem)
    on_torch = solver.solve(problem.to("torch"))
    assert isinstance(on_torch.x, torch.Tensor) and on_torch.x.dtype == torch.float64
    assert on_torch.status == on_numpy.status and on_torch.nit == on_numpy.nit
    # the same iterates (BLAS rounding only), and the duality gap measured on the device
    np.testing.assert_allclose(on_torch.x.numpy(), on_numpy.x, rtol=SAME_RUN_RTOL, atol=1e-12)
    np.testing.assert_allclose(on_torch.metrics["duality_gap"], on_numpy.metrics["duality_gap"], rtol=1e-6, atol=1e-14)


def test_float32_softmax_runs_and_returns_float32():
    problem = softmax().to("torch", dtype="float32")
    result = BCD(partition="variable", selection="gsl", update="matrix", block_size=6, max_iter=30).solve(problem)
    assert result.x.dtype == torch.float32
    assert result.metrics["fun"] < problem.fun(problem.x0)


def test_torch_problems_without_dense_work_are_refused():
    Q = np.diag(np.arange(1.0, 5.0))
    system = LinearSystemProblem(torch.as_tensor(Q), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="on torch bcd runs the dense softmax.*LinearSystemProblem"):
        BCD(update="exact").solve(system)
    sparse = CompositeProblem(sp.random_array((20, 10), density=0.3, rng=0), QuadraticDatafit(np.ones(20)), L1(0.1))
    assert BCD().check(sparse.to("torch")) is None  # densified by CompositeProblem.to


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("kind", ["softmax", "logistic"])
def test_a_torch_run_on_the_device_gives_the_numpy_iterates(kind, device):
    problem = PROBLEMS[kind]()
    # tol far below reach: both runs make the same 50 updates
    solver = BCD(partition="variable", selection="gsl", update="matrix", block_size=4, max_iter=50, tol=1e-300)
    on_numpy = solver.solve(problem)
    on_device = solver.solve(problem.to("torch", device=device))
    assert on_device.x.device.type == device and on_device.nit == on_numpy.nit == 50
    np.testing.assert_allclose(on_device.x.cpu().numpy(), on_numpy.x, rtol=SAME_RUN_RTOL, atol=1e-12)
