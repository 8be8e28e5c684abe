"""The solver contract, checked on every registered solver and one tiny problem of each kind it accepts.

A solver added later is in this table automatically (``optkit.list_solvers()``). Each row runs the
solver through its public ``solve`` and checks what every solver promises: ``max_iter=0`` and
``max_iter=1``, a time limit on a fake clock, a callback that stops the run, Ctrl-C (a simulated
``KeyboardInterrupt``) returning the partial result, an unknown option, the ``Result``
invariants and ``to_scipy()``.
"""

import itertools
import math

import numpy as np
import pytest
from scipy.optimize import OptimizeResult

import optkit
from optkit import EqualityConstrainedProblem, LinearSystemProblem, Result, Status
from optkit.backend import has_module
from optkit.registry import SOLVERS

# solvers whose library cannot be interrupted: a time limit is checked once the call returns
UNINTERRUPTIBLE = {"pot-emd", "pot-sparsity-constrained"} | {
    f"regot-{name}" for name in ("ssns", "newton", "sparse-newton", "splr", "lbfgs-dual", "apdagd", "bcd")
} | {f"regot-qrot-{name}" for name in ("assn", "grssn", "bcd", "lbfgs-dual", "lbfgs-semi-dual", "apdagd", "gd", "pdaam")}
# the target-ladder baselines: checked after each library fit, and over all fits while the trace holds one fit's time
UNINTERRUPTIBLE |= {"scipy-spsolve", "sklearn-lasso", "sklearn-l1-logistic", "celer-lasso", "celer-logistic"} | {
    f"skglm-{name}" for name in ("gramcd", "anderson", "prox-newton")
}


def _equality_constrained():
    # min x1^2 + x2^2 + x3^2  s.t.  x1 + x2 + x3 = 1,  x1 - x2 = 0.2: one exact solution
    A = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0]])
    return EqualityConstrainedProblem(
        lambda x: float(x @ x), lambda x: 2 * x, lambda x: A @ x - np.array([1.0, 0.2]), lambda x: A,
        np.array([2.0, -1.0, 0.5]), lag_hess=lambda x, y, s: 2 * s * np.eye(3), name="tiny/equality",
    )


def _feasibility():
    # c(x) = 0 with a constant objective (what scipy-least-squares solves): x1^2 + x2^2 = 1, x1 = x2
    return EqualityConstrainedProblem(
        lambda x: 0.0, np.zeros_like, lambda x: np.array([x @ x - 1.0, x[0] - x[1]]),
        lambda x: np.array([2 * x, [1.0, -1.0]]), np.array([2.0, 0.5]),
        lag_hess=lambda x, y, s: 2 * y[0] * np.eye(2), name="tiny/feasibility", metadata={"feasibility": True},
    )


def _training_task():
    torch = pytest.importorskip("torch")

    class TwoLayers(torch.nn.Module):  # attention/MLP-like names, so every GaLore recipe finds its weights
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.Linear(6, 8)
            self.mlp = torch.nn.Linear(8, 6)

        def forward(self, x):
            return self.mlp(torch.tanh(self.attn(x)))

    def batches():
        gen = torch.Generator().manual_seed(0)
        while True:
            yield torch.randn(4, 6, generator=gen)

    return optkit.TrainingTask(
        TwoLayers, batches, [torch.ones(4, 6)], tokens_per_batch=4,
        loss_fn=lambda model, x: ((model(x) - x.flip(1)) ** 2).mean(), name="tiny/training",
    )


def _training_task_with_blocks():
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):  # attention/MLP-like names, as in _training_task
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.Linear(6, 8)
            self.mlp = torch.nn.Linear(8, 6)

        def forward(self, x):
            return x + self.mlp(torch.tanh(self.attn(x)))

    class Blocks(torch.nn.Module):  # a list of identical blocks: the layer-sampling solvers (lisa, owlore) draw from it
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(Block() for _ in range(3))

        def forward(self, x):
            for block in self.layers:
                x = block(x)
            return x

    def batches():
        gen = torch.Generator().manual_seed(0)
        while True:
            yield torch.randn(4, 6, generator=gen)

    return optkit.TrainingTask(
        Blocks, batches, [torch.ones(4, 6)], tokens_per_batch=4,
        loss_fn=lambda model, x: ((model(x) - x.flip(1)) ** 2).mean(), name="tiny/training-blocks",
    )


TINY = {
    "linear-system": lambda: optkit.get_problem("linear/poisson-2d", n=6),
    # a grid of cells: grid-aware solvers (dcdm) get the contract too
    "linear-system-3d": lambda: optkit.get_problem("linear/pressure-3d", n=4, geometry="liquid"),
    "smooth": lambda: optkit.get_problem("ml/least-squares", m=20, n=5),
    "finite-sum": lambda: optkit.get_problem("ml/logistic", dataset="synthetic", m=30, n=4),
    "ot": lambda: optkit.get_problem("ot/random-assignment", n=8, eta=10),
    "equality-constrained": _equality_constrained,
    "feasibility": _feasibility,
    "composite": lambda: optkit.get_problem("ml/lasso/synthetic", m=20, n=10),
    "composite-logistic": lambda: optkit.get_problem("ml/l1-logistic/synthetic", m=20, n=10),
    "training": _training_task,
    "training-blocks": _training_task_with_blocks,
}


def _available_kinds():
    return [kind for kind in TINY if not kind.startswith("training") or has_module("torch")]


def _pairs():
    """Every (solver, kind) pair that fits, decided at collection: incompatible pairs are not tests."""
    for name in optkit.list_solvers():
        for kind in _available_kinds():
            if optkit.get_solver(name).check(TINY[kind]()) is None:
                yield pytest.param((name, kind), id=f"{name}-{kind}")


@pytest.fixture
def pair(request):
    name, kind = request.param
    solver = optkit.get_solver(name)
    if kind == "finite-sum" and "batch_size" in solver.option_names():
        solver = solver.replace(batch_size=8)  # the minibatch path
    if kind == "training-blocks" and "outlier_threshold" in solver.option_names():
        # freshly initialised blocks have no weight 13x the mean score (OWL's M, meant for pretrained
        # models: owlore refuses to draw from all-zero ratios); 2x gives every block some
        solver = solver.replace(outlier_threshold=2.0)
    return solver, TINY[kind]()


def assert_result_invariants(res, solver, problem):
    assert isinstance(res, Result) and isinstance(res.status, Status)
    assert res.solver == solver.name and res.problem == problem.name
    assert isinstance(res.message, str) and res.message
    assert isinstance(res.nit, int) and res.nit >= 0
    assert math.isfinite(res.time_s) and res.time_s >= 0
    assert res.x is not None and res.trace, "a result holds its iterate and at least the start's trace row"
    iters = [row["iter"] for row in res.trace]
    times = [row["time"] for row in res.trace]
    assert iters[0] == 0 and iters == sorted(iters) and iters[-1] <= res.nit
    assert times == sorted(times) and times[-1] <= res.time_s + 1e-9
    assert all(isinstance(v, int) and v >= 0 for v in res.counters.values())
    if problem.kind != "training":  # a trained model is no array
        scipy_view = res.to_scipy()
        assert isinstance(scipy_view, OptimizeResult)
        assert scipy_view.success == res.success and scipy_view.nit == res.nit
        assert scipy_view.optkit_status == res.status.name


PAIRS = pytest.mark.parametrize("pair", list(_pairs()), indirect=True)


@PAIRS
def test_max_iter_zero_returns_the_start(pair):
    solver, problem = pair
    res = solver.replace(max_iter=0).solve(problem)
    assert res.status in (Status.MAX_ITER, Status.CONVERGED) and res.nit == 0
    assert [row["iter"] for row in res.trace] == [0]
    assert_result_invariants(res, solver, problem)


@PAIRS
def test_max_iter_one(pair):
    solver, problem = pair
    res = solver.replace(max_iter=1).solve(problem)
    assert res.nit <= 1 and res.status in (Status.MAX_ITER, Status.CONVERGED, Status.STALLED)
    assert_result_invariants(res, solver, problem)


@PAIRS
def test_time_limit_on_a_fake_clock(pair, monkeypatch):
    solver, problem = pair
    ticks = itertools.count()
    monkeypatch.setattr("optkit.solver.time.perf_counter", lambda: float(next(ticks)))
    res = solver.replace(time_limit=3.0).solve(problem)
    monkeypatch.undo()
    if solver.name in UNINTERRUPTIBLE:
        # checked once the library returns: over the limit, the run says so unless it converged
        assert res.trace[-1]["time"] < 3.0 or res.status in (Status.TIME_LIMIT, Status.CONVERGED)
    else:
        # one second per clock reading: the limit falls within the first few recorded iterations
        assert res.status in (Status.TIME_LIMIT, Status.CONVERGED) and len(res.trace) < 10
        assert res.status is Status.CONVERGED or res.trace[-1]["time"] >= 3.0
    assert_result_invariants(res, solver, problem)


@PAIRS
def test_a_callback_stops_the_run(pair):
    solver, problem = pair
    seen = []
    res = solver.solve(problem, callback=lambda info: seen.append(info["iter"]) or info["iter"] >= 1)
    if res.status is not Status.USER_STOPPED:
        # finished before its second trace row, or met tol at the row that asked to stop (tol wins,
        # as in BlackBoxRun: a target-ladder baseline's first row may already be many iterations in)
        converged_there = res.status is Status.CONVERGED and seen[-1] == res.nit == res.trace[-1]["iter"]
        assert res.status is Status.CONVERGED and seen[-1] < 1 or res.nit <= 1 or converged_there
    else:
        assert seen[-1] == res.nit == res.trace[-1]["iter"]
    assert_result_invariants(res, solver, problem)


@PAIRS
def test_ctrl_c_returns_the_partial_result(pair):
    solver, problem = pair

    def interrupt(info):
        if info["iter"] >= 1:
            raise KeyboardInterrupt

    res = solver.solve(problem, callback=interrupt)
    assert res.status in (Status.USER_STOPPED, Status.CONVERGED)
    if res.status is Status.USER_STOPPED:
        assert res.nit >= 1 and res.trace[-1]["iter"] >= 1
    assert_result_invariants(res, solver, problem)


@pytest.mark.parametrize("name", optkit.list_solvers())
def test_an_unknown_option_is_a_type_error_naming_it(name):
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'no_such_option'"):
        optkit.get_solver(name, no_such_option=1)
    with pytest.raises(TypeError, match="no_such_option"):
        optkit.get_solver(f"{name}:no_such_option=1")


@pytest.mark.parametrize("name", optkit.list_solvers())
def test_every_solver_takes_the_common_options_and_runs_somewhere(name):
    cls = SOLVERS.get(name)
    assert {"tol", "max_iter", "time_limit"} <= set(cls.option_names())
    reasons = [optkit.get_solver(name).check(TINY[kind]()) for kind in _available_kinds()]
    if all(r is not None for r in reasons):
        missing = [r for r in reasons if "needs" in r]
        assert missing, f"{name} accepts none of the tiny problems: {reasons}"
        pytest.skip(missing[0])


def test_the_table_covers_every_kind_a_solver_accepts():
    kinds = {type(TINY[kind]()) for kind in TINY if not kind.startswith("training")} | {LinearSystemProblem, optkit.TrainingTask}
    for name in optkit.list_solvers():
        assert any(issubclass(k, SOLVERS.get(name).accepts) for k in kinds), name
