"""BlackBoxRun: the one sequence and status rule of every wrapped library solver, on a toy library."""

import itertools
from dataclasses import dataclass

import numpy as np
import pytest

from optkit import SmoothProblem, Solver, Status
from optkit.blackbox import BlackBoxRun, LibraryVerdict, krylov_verdict


def quadratic():
    return SmoothProblem(lambda x: 0.5 * float(x @ x), lambda x: x.copy(), np.array([1.0, -2.0]), name="toy/q")


@dataclass(frozen=True, kw_only=True)
class Halving(Solver):
    """A toy wrapped library: x <- x / 2 for ``steps`` steps, then it returns ``outcome``."""

    accepts = (SmoothProblem,)
    steps: int = 5
    outcome: Status = Status.CONVERGED
    criterion: str | None = "grad_inf"
    interrupt_at: int = -1

    def library(self, problem, x, callback):
        for k in range(1, self.steps + 1):
            if k == self.interrupt_at:
                raise KeyboardInterrupt
            x = x / 2
            problem.grad(x)  # the library's own (counted) evaluation
            callback(x)
        return x

    def solve(self, problem, *, x0=None, callback=None):
        run = BlackBoxRun(
            self,
            problem,
            callback,
            measure=lambda x: {"fun": problem.fun(x), "grad_inf": float(np.abs(problem.grad(x)).max())},
            criterion=self.criterion,
        )
        verdict = x = None
        if run.begin(problem.x0 if x0 is None else x0) is None:
            with run.library():
                x = self.library(problem, problem.x0, run.iteration)
                verdict = LibraryVerdict(self.outcome, 7, "toy: done")
        return run.finish(x=x, verdict=verdict)


def test_a_library_success_meeting_tol_converges_with_a_trace_of_every_iterate():
    p = quadratic()
    res = Halving(tol=0.2).solve(p)
    assert res.status is Status.CONVERGED and res.nit == 5
    np.testing.assert_allclose(res.x, p.x0 / 32)
    np.testing.assert_allclose([row["grad_inf"] for row in res.trace], [2.0 / 2**k for k in range(6)])
    # measuring is not counted: only the library's 5 gradients are
    assert res.counters == {"grad": 5}
    assert res.extras["library_status"] == 7 and res.to_scipy().status == 7


def test_success_above_tol_is_stalled_with_the_criterion_in_the_message():
    res = Halving(tol=1e-3).solve(quadratic())
    assert res.status is Status.STALLED and "toy: done (grad_inf = 0.0625 > tol = 0.001)" == res.message


def test_without_a_criterion_the_library_verdict_decides():
    assert Halving(tol=1e-3, criterion=None).solve(quadratic()).status is Status.CONVERGED
    assert Halving(outcome=Status.BREAKDOWN, criterion=None).solve(quadratic()).status is Status.BREAKDOWN


def test_meeting_tol_converges_even_when_the_library_reports_a_failure():
    assert Halving(tol=0.2, outcome=Status.FAILED).solve(quadratic()).status is Status.CONVERGED
    failed = Halving(tol=1e-3, outcome=Status.FAILED).solve(quadratic())
    assert failed.status is Status.FAILED and failed.message == "toy: done"


def test_max_iter_callback_time_limit_and_ctrl_c_end_the_library(monkeypatch):
    capped = Halving(tol=1e-9, max_iter=2).solve(quadratic())
    assert capped.status is Status.MAX_ITER and capped.nit == 2 and len(capped.trace) == 3
    stopped = Halving(tol=1e-9).solve(quadratic(), callback=lambda info: info["iter"] == 3)
    assert stopped.status is Status.USER_STOPPED and stopped.nit == 3
    np.testing.assert_allclose(stopped.x, quadratic().x0 / 8)
    interrupted = Halving(tol=1e-9, interrupt_at=4).solve(quadratic())
    assert interrupted.status is Status.USER_STOPPED and interrupted.nit == 3
    ticks = itertools.count()
    monkeypatch.setattr("optkit.solver.time.perf_counter", lambda: float(next(ticks)))
    limited = Halving(tol=1e-9, time_limit=3.0).solve(quadratic())
    assert limited.status is Status.TIME_LIMIT and 0 < limited.nit < 5


def test_the_start_can_end_the_run():
    at_tol = Halving(tol=5.0).solve(quadratic())
    assert at_tol.status is Status.CONVERGED and at_tol.nit == 0 and at_tol.counters == {}
    zero = Halving(tol=1e-9, max_iter=0).solve(quadratic())
    assert zero.status is Status.MAX_ITER and zero.nit == 0
    nan = Halving().solve(quadratic(), x0=np.array([np.nan, 0.0]))
    assert nan.status is Status.NONFINITE


@pytest.mark.parametrize(
    "value, met", [(np.float32(1e-10), True), (np.float64(2e-9), False), (True, False), (None, False)]
)
def test_the_criterion_is_read_from_numpy_scalars_too(value, met):
    run = BlackBoxRun(Halving(tol=1e-9), quadratic(), None, measure=lambda x: {}, criterion="grad_inf")
    assert run.converged({"grad_inf": value}) is met


def test_finish_needs_a_verdict_when_the_run_did_not_decide():
    p = quadratic()
    run = BlackBoxRun(Halving(tol=1e-9), p, None, measure=lambda x: {"grad_inf": 1.0}, criterion="grad_inf")
    run.begin(p.x0)
    with pytest.raises(ValueError, match="verdict"):
        run.finish(x=p.x0)


def test_krylov_info_codes_have_one_reading():
    assert krylov_verdict(0, "cg").outcome is Status.CONVERGED
    assert krylov_verdict(12, "cg").outcome is Status.MAX_ITER
    assert krylov_verdict(-10, "pyamg").outcome is Status.BREAKDOWN


def test_stop_ends_the_library_with_the_status_given():
    p = quadratic()
    run = BlackBoxRun(Halving(tol=1e-9), p, None, measure=lambda x: {"grad_inf": 1.0}, criterion="grad_inf")
    run.begin(p.x0)
    with run.library():
        run.stop(Status.CONVERGED)
        raise AssertionError("stop() must leave the library block")
    assert run.finish().status is Status.CONVERGED


def test_attempts_each_have_their_own_clock_and_trace_and_the_time_limit_counts_them_all(monkeypatch):
    p = quadratic()
    clock = [0.0]
    monkeypatch.setattr("optkit.solver.time.perf_counter", lambda: clock[0])
    solver = Halving(tol=1e-9, time_limit=10.0)
    run = BlackBoxRun(solver, p, None, measure=lambda x: {"grad_inf": float(np.abs(x).max())}, criterion="grad_inf")
    assert run.begin(p.x0) is None
    for seconds, divisor in ((3.0, 2.0), (4.0, 8.0), (5.0, 4.0)):  # the third ends past 10 s in all
        with run.attempt():
            clock[0] += seconds
            run.iteration(p.x0 / divisor, nit=1)
        if run.status is not None:
            break
    assert run.status is Status.TIME_LIMIT and run.spent_s == 12.0
    assert [a.time_s for a in run.attempts] == [3.0, 4.0, 5.0]
    run.use_attempt(1)  # report the second: its iterate, time and trace alone
    res = run.finish()
    np.testing.assert_allclose(res.x, p.x0 / 8)
    assert res.time_s == 4.0 and [(row["iter"], row["time"]) for row in res.trace] == [(0, 0.0), (1, 4.0)]


def test_an_attempt_interrupted_before_recording_returns_to_the_previous_one():
    p = quadratic()
    run = BlackBoxRun(
        Halving(tol=1e-9), p, None, measure=lambda x: {"grad_inf": float(np.abs(x).max())}, criterion="grad_inf"
    )
    run.begin(p.x0)
    with run.attempt():
        run.iteration(p.x0 / 2, nit=3)
    with run.attempt():
        raise KeyboardInterrupt
    assert run.status is Status.USER_STOPPED and len(run.attempts) == 1
    res = run.finish()
    assert res.nit == 3 and len(res.trace) == 2
    np.testing.assert_allclose(res.x, p.x0 / 2)
