"""The solver protocol and its driver, on a gradient-descent toy solver with a known iterate sequence."""

import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

import optkit
from optkit import IterativeSolver, SmoothProblem, Status
from optkit.solver import Recorder


def quadratic(diag=(1.0, 4.0), x0=(1.0, 1.0)):
    d = np.asarray(diag)
    return SmoothProblem(
        lambda x: 0.5 * float(x @ (d * x)),
        lambda x: d * x,
        np.asarray(x0, dtype=float),
        name="toy/quadratic",
        metadata={"f_opt": 0.0},
    )


@dataclass(frozen=True, kw_only=True)
class GradientDescent(IterativeSolver):
    """x_{k+1} = x_k - lr * g(x_k); stops when ||g|| <= tol."""

    accepts = (SmoothProblem,)
    lr: float = 0.25
    max_iter: int = 200
    interrupt_at: int = -1

    def init(self, problem, x0):
        return SimpleNamespace(x=x0, g=problem.grad(x0), k=0)

    def step(self, problem, state):
        if state.k == self.interrupt_at:
            raise KeyboardInterrupt
        x = state.x - self.lr * state.g
        return SimpleNamespace(x=x, g=problem.grad(x), k=state.k + 1)

    def terminate(self, problem, state):
        return Status.CONVERGED if np.linalg.norm(state.g) <= self.tol else None

    def metrics(self, problem, state):
        return {"grad_norm": float(np.linalg.norm(state.g))}


def expected_iterate(k, lr=0.25, diag=(1.0, 4.0)):
    return (1.0 - lr * np.asarray(diag)) ** k


def test_driver_converges_with_the_closed_form_iterates():
    # With lr=0.25, x_k = (0.75^k, 0^k): the second coordinate is exact after one step.
    res = GradientDescent(tol=1e-8).solve(quadratic())
    assert res.status is Status.CONVERGED and res.success
    k = int(np.ceil(np.log(1e-8) / np.log(0.75)))
    assert res.nit == k
    np.testing.assert_allclose(res.x, expected_iterate(k), rtol=1e-12)
    assert [row["iter"] for row in res.trace] == list(range(k + 1))
    np.testing.assert_allclose(
        [row["grad_norm"] for row in res.trace[2:]], [0.75**j for j in range(2, k + 1)], rtol=1e-12
    )
    times = [row["time"] for row in res.trace]
    assert times == sorted(times)
    assert res.counters["grad"] == k + 1
    assert res.time_s >= times[-1]


def test_max_iter_returns_the_partial_iterate():
    res = GradientDescent(tol=1e-12, max_iter=3).solve(quadratic())
    assert res.status is Status.MAX_ITER and not res.success
    assert res.nit == 3
    np.testing.assert_allclose(res.x, expected_iterate(3))


def test_max_iter_zero_returns_x0():
    res = GradientDescent(max_iter=0).solve(quadratic())
    assert res.status is Status.MAX_ITER and res.nit == 0
    np.testing.assert_allclose(res.x, [1.0, 1.0])


def test_callback_stops_and_sees_the_iterate():
    seen = []

    def callback(info):
        seen.append(info["x"].copy())
        return info["iter"] == 2

    res = GradientDescent(tol=1e-12).solve(quadratic(), callback=callback)
    assert res.status is Status.USER_STOPPED and res.nit == 2
    np.testing.assert_allclose(seen[-1], expected_iterate(2))


def test_callback_stop_iteration_stops():
    def callback(info):
        if info["iter"] == 1:
            raise StopIteration

    assert GradientDescent(tol=1e-12).solve(quadratic(), callback=callback).nit == 1


def test_keyboard_interrupt_returns_what_was_finished():
    res = GradientDescent(tol=1e-12, interrupt_at=4).solve(quadratic())
    assert res.status is Status.USER_STOPPED and res.nit == 4
    np.testing.assert_allclose(res.x, expected_iterate(4))


def test_time_limit_gives_time_limit_status():
    res = GradientDescent(tol=1e-300, max_iter=10**9, lr=1e-9, time_limit=0.05).solve(quadratic())
    assert res.status is Status.TIME_LIMIT
    assert 0.05 <= res.time_s < 5.0


def test_nonfinite_metric_becomes_a_status():
    problem = quadratic()
    problem._grad = lambda x: x * np.nan if x[0] < 0.5 else x
    res = GradientDescent(tol=1e-12).solve(problem)
    assert res.status is Status.NONFINITE
    assert res.nit == 3  # 0.75**3 < 0.5: the first non-finite gradient


def test_incompatible_problem_is_refused_before_work():
    A = np.eye(2)
    problem = optkit.LinearSystemProblem(A, np.ones(2))
    with pytest.raises(ValueError, match="accepts SmoothProblem, not LinearSystemProblem"):
        GradientDescent().solve(problem)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"tol": 0.0}, "tol must be a positive"),
        ({"tol": float("nan")}, "tol must be a positive"),
        ({"max_iter": -1}, "max_iter must be an integer >= 0"),
        ({"max_iter": 2.5}, "max_iter must be an integer >= 0"),
        ({"time_limit": 0}, "time_limit must be a positive"),
    ],
)
def test_bad_common_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        GradientDescent(**options)


def test_replace_rejects_unknown_option_by_name():
    with pytest.raises(TypeError, match="unknown option.*'learning_rate'.*valid options: tol, max_iter"):
        GradientDescent().replace(learning_rate=0.1)
    assert GradientDescent().replace(lr=0.5).lr == 0.5


def test_solvers_are_immutable():
    solver = GradientDescent()
    with pytest.raises(AttributeError):
        solver.tol = 1.0


def test_recorder_excludes_callback_time():
    import time

    recorder = Recorder(time_limit=None, callback=lambda info: time.sleep(0.05))
    recorder.start()
    recorder.record(0, {"m": 1.0})
    recorder.record(1, {"m": 0.5})
    recorder.pause()
    assert recorder.elapsed < 0.05
    assert [r["iter"] for r in recorder.rows] == [0, 1]


@dataclass(frozen=True, kw_only=True)
class SlowlyMeasured(GradientDescent):
    """Measuring takes 0.2 s a row: a validation pass, say."""

    def metrics(self, problem, state):
        time.sleep(0.2)
        return super().metrics(problem, state)


def test_measuring_runs_with_the_clock_paused():
    res = SlowlyMeasured(tol=1e-12, max_iter=4).solve(quadratic())
    assert res.nit == 4 and len(res.trace) == 5
    # five trace rows and the final measures sleep 1.2 s; four gradient steps on a 2-vector take
    # microseconds, so even one measurement's sleep in the clock would show
    assert res.time_s < 0.2 and res.trace[-1]["time"] < 0.2
    np.testing.assert_allclose(res.metrics["grad_norm"], res.trace[-1]["grad_norm"])
