"""Tests of optkit.bench on toy problems and solvers registered here (independent of the real suite).

The toys live at module level so that joblib workers (``jobs=2``) can import them by reference.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from bench_toys import ToyGD, ToyState, quadratic

import optkit
from optkit.bench import (
    RESULT_COLUMNS,
    SpecError,
    format_summary,
    read_csv,
    resolve_problems,
    run_benchmark,
    split_solver_list,
)
from optkit.registry import register_problem, register_solver, register_suite, scoped_registrations
from optkit.result import Result
from optkit.solver import Solver

# ----------------------------------------------------------------------------- toys


@dataclass(frozen=True, kw_only=True)
class ToyHeavyBall(ToyGD):
    """Gradient descent with momentum; records the velocity norm as an extra metric."""

    name: ClassVar[str] = "test-heavyball"  # also in joblib workers, which do not run the fixture
    momentum: float = 0.5

    def init(self, problem, x0):
        return ToyState(x0, problem.grad(x0), np.zeros_like(x0))

    def step(self, problem, state):
        v = self.momentum * state.v - self.lr / problem.metadata["L"] * state.g
        return ToyState(state.x + v, problem.grad(state.x + v), v)

    def metrics(self, problem, state):
        return {"grad_norm": float(np.linalg.norm(state.g)), "velocity": float(np.linalg.norm(state.v))}


@dataclass(frozen=True, kw_only=True)
class ToyNeedsHvp(ToyGD):
    """Asks for Hessian-vector products, which the toy quadratic does not provide."""

    name: ClassVar[str] = "test-needs-hvp"  # also in joblib workers, which do not run the fixture
    requires: ClassVar = frozenset({"hvp"})


@dataclass(frozen=True, kw_only=True)
class ToyBoom(Solver):
    """Always raises."""

    name: ClassVar[str] = "test-boom"  # also in joblib workers, which do not run the fixture

    def solve(self, problem, *, x0=None, callback=None) -> Result:
        raise RuntimeError("boom")


INTERRUPT = {"runs": 0}


@dataclass(frozen=True, kw_only=True)
class ToyInterrupt(ToyGD):
    """Gradient descent that raises KeyboardInterrupt from ``step`` (where="step") or from
    ``solve`` (where="solve") on the second run in this process."""

    name: ClassVar[str] = "test-interrupt"  # also in joblib workers, which do not run the fixture
    where: str = "step"

    def solve(self, problem, *, x0=None, callback=None):
        INTERRUPT["runs"] += 1
        if self.where == "solve" and INTERRUPT["runs"] == 2:
            raise KeyboardInterrupt
        return super().solve(problem, x0=x0, callback=callback)

    def step(self, problem, state):
        if INTERRUPT["runs"] == 2:
            raise KeyboardInterrupt
        return super().step(problem, state)


SOLVE_CALLS: list = []
SOLVE_LIMITS: list = []


@dataclass(frozen=True, kw_only=True)
class ToyCounting(ToyGD):
    """Gradient descent that logs the max_iter (and time_limit) of every solve() call."""

    name: ClassVar[str] = "test-counting"  # also in joblib workers, which do not run the fixture

    def solve(self, problem, *, x0=None, callback=None):
        SOLVE_CALLS.append(self.max_iter)
        SOLVE_LIMITS.append(self.time_limit)
        return super().solve(problem, x0=x0, callback=callback)


TOY_SOLVERS = {
    "test-gd": ToyGD,
    "test-heavyball": ToyHeavyBall,
    "test-needs-hvp": ToyNeedsHvp,
    "test-boom": ToyBoom,
    "test-interrupt": ToyInterrupt,
    "test-counting": ToyCounting,
}


@pytest.fixture(scope="module", autouse=True)
def toy_registrations():
    """The toys of this module, registered for its tests only (never left in the global registries)."""
    with scoped_registrations():
        register_problem("test/quadratic")(quadratic)
        register_suite("test-suite", ["test/quadratic:n=4", "test/quadratic:n=8,cond=20"])
        for name, cls in TOY_SOLVERS.items():
            register_solver(name)(cls)
        yield


def _results_by_run(rows):
    runs = {}
    for r in rows:
        runs.setdefault((r["problem"], r["solver"], r["rep"]), []).append(r)
    return runs


# ----------------------------------------------------------------------------- records


def test_results_csv_has_one_row_per_trace_iteration(tmp_path):
    bench = run_benchmark(
        ["test/quadratic:n=5"], ["test-gd", "test-gd:lr=0.5"], solver_options={"tol": 1e-8}, out_dir=tmp_path,
        progress=False,
    )
    assert not bench.interrupted
    rows = read_csv(tmp_path / "results.csv")
    assert list(rows[0]) == [*RESULT_COLUMNS, "grad_norm", "fun", "f_gap"]
    runs = _results_by_run(rows)
    assert set(runs) == {("test/quadratic:n=5", "test-gd", 0), ("test/quadratic:n=5", "test-gd:lr=0.5", 0)}

    for (problem, label, _), run_rows in runs.items():
        trace, final = run_rows[:-1], run_rows[-1]
        assert [r["final"] for r in run_rows] == [False] * len(trace) + [True]
        # the same run, done directly, gives the same iterations, metrics and final measures
        solver = optkit.get_solver("test-gd", tol=1e-8, **({"lr": 0.5} if "lr" in label else {}))
        problem_obj = optkit.get_problem(problem)
        direct = solver.solve(problem_obj)
        assert [r["iter"] for r in trace] == list(range(direct.nit + 1))
        np.testing.assert_allclose([r["grad_norm"] for r in trace], [t["grad_norm"] for t in direct.trace])
        times = np.array([r["time"] for r in trace])
        assert np.all(np.diff(times) >= 0) and times[0] >= 0
        assert final["iter"] == direct.nit and final["status"] == "converged"
        assert final["time"] >= times[-1]
        expected = problem_obj.evaluate(direct.x)
        np.testing.assert_allclose([final["fun"], final["f_gap"]], [expected["fun"], expected["f_gap"]])
        assert final["grad_norm"] == pytest.approx(expected["grad_norm"])
        assert all(r["fun"] is None for r in trace)  # evaluate() measures only on the final row
        assert json.loads(final["options"]) == {**solver.options()}
        assert {r["options"] for r in run_rows} == {final["options"]}
    # lr=1 is faster than lr=0.5 on this quadratic
    assert len(runs["test/quadratic:n=5", "test-gd", 0]) < len(runs["test/quadratic:n=5", "test-gd:lr=0.5", 0])

    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["solver"], r["status"]) for r in records] == [("test-gd", "converged"), ("test-gd:lr=0.5", "converged")]
    assert records[0]["counters"]["grad"] == records[0]["nit"] + 1


def test_new_metric_names_widen_the_header(tmp_path):
    run_benchmark("test/quadratic", ["test-gd", "test-heavyball"], out_dir=tmp_path, progress=False)
    rows = read_csv(tmp_path / "results.csv")
    assert list(rows[0]) == [*RESULT_COLUMNS, "grad_norm", "fun", "f_gap", "velocity"]
    gd = [r for r in rows if r["solver"] == "test-gd"]
    hb = [r for r in rows if r["solver"] == "test-heavyball" and not r["final"]]
    assert gd and all(r["velocity"] is None for r in gd)
    assert hb[0]["velocity"] == 0.0 and all(r["velocity"] is not None for r in hb)
    assert (tmp_path / "results.csv").read_text().count("\n") == len(rows) + 1  # no stray header lines


def test_summary_ratio_and_medians(tmp_path):
    bench = run_benchmark(
        ["test/quadratic:n=4", "test/quadratic:n=8,cond=20"], "test-gd:lr=0.5,test-gd,test-heavyball",
        repeat=3, out_dir=tmp_path, progress=False,
    )
    assert bench.solvers == ["test-gd:lr=0.5", "test-gd", "test-heavyball"]
    summary = read_csv(tmp_path / "summary.csv")
    assert [(r["problem"], r["solver"]) for r in summary] == [(p, s) for p in bench.problems for s in bench.solvers]
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 2 * 3 * 3
    for row in summary:
        mine = [r for r in runs if (r["problem"], r["solver"]) == (row["problem"], row["solver"])]
        anchor = [r for r in runs if (r["problem"], r["solver"]) == (row["problem"], bench.solvers[0])]
        time_s = statistics.median(r["time_s"] for r in mine)
        np.testing.assert_allclose(row["time_s"], time_s, rtol=1e-12)
        np.testing.assert_allclose(row["ratio"], time_s / statistics.median(r["time_s"] for r in anchor), rtol=1e-12)
        if row["solver"] == bench.solvers[0]:
            assert row["ratio"] == 1.0
        assert row["status"] == "converged" and row["statuses"] == "converged;converged;converged"
        assert row["reps"] == 3 and row["n_converged"] == 3
        assert row["nit"] == mine[0]["nit"] and row["count_grad"] == mine[0]["nit"] + 1
        np.testing.assert_allclose(row["f_gap"], mine[0]["metrics"]["f_gap"])
    # in-memory summary equals the file
    assert [r["ratio"] for r in bench.summary] == [r["ratio"] for r in summary]


def test_skipped_pair_error_and_the_benchmark_goes_on(tmp_path):
    bench = run_benchmark(
        "test-suite", ["test-needs-hvp", "test-gd", "test-boom", "test-heavyball"], out_dir=tmp_path, progress=False
    )
    by_pair = {(r["problem"], r["solver"]): r for r in read_csv(tmp_path / "summary.csv")}
    assert len(by_pair) == 8
    reason = ToyNeedsHvp().check(quadratic())
    assert reason and "hvp" in reason
    for problem in ("test/quadratic:n=4", "test/quadratic:n=8,cond=20"):
        skipped = by_pair[problem, "test-needs-hvp"]
        assert skipped["status"] == "skipped" and skipped["message"] == reason
        assert skipped["time_s"] is None and skipped["ratio"] is None
        error = by_pair[problem, "test-boom"]
        assert error["status"] == "error" and error["message"] == "RuntimeError: boom"
        heavyball, gd = by_pair[problem, "test-heavyball"], by_pair[problem, "test-gd"]
        assert heavyball["status"] == "converged"  # ran after the failure
        # the first solver was skipped: the ratio's anchor is the first one that ran
        assert gd["ratio"] == 1.0
        np.testing.assert_allclose(heavyball["ratio"], heavyball["time_s"] / gd["time_s"], rtol=1e-12)
    solvers_with_rows = {r["solver"] for r in read_csv(tmp_path / "results.csv")}
    assert solvers_with_rows == {"test-gd", "test-heavyball"}
    table = bench.table()
    assert "test-needs-hvp" not in table
    blocks = table.split("\n\n")
    assert blocks[-1] == "(2 incompatible pairs skipped; reasons in summary.csv)"
    for problem, block in zip(bench.problems, blocks[:-1]):
        # heading, column header, rule, then the three solvers that ran, the failure with its message
        heading, header, _, *rows = block.splitlines()
        assert heading == f"{problem}  (anchor: test-gd)"
        assert header.split() == ["solver", "status", "metric", "nit", "time", "ratio", "note"]
        assert [row.split()[:2] for row in rows] == [
            ["test-gd", "converged"], ["test-boom", "error"], ["test-heavyball", "converged"]
        ]
        assert rows[1].split()[2:] == ["RuntimeError:", "boom"]


def test_a_problem_that_fails_to_build_is_an_error_for_each_run(tmp_path):
    bench = run_benchmark(["test/quadratic:n=-1", "test/quadratic:n=3"], ["test-gd", "test-heavyball"], repeat=2,
                          out_dir=tmp_path, progress=False)
    assert [(r["problem"], r["status"]) for r in bench.summary] == [
        ("test/quadratic:n=-1", "error"), ("test/quadratic:n=-1", "error"),
        ("test/quadratic:n=3", "converged"), ("test/quadratic:n=3", "converged"),
    ]
    assert bench.summary[0]["message"].startswith("could not build problem: ValueError:")
    assert bench.summary[0]["reps"] == 2 and bench.summary[0]["nit"] is None


@pytest.mark.parametrize("where", ["step", "solve"])
def test_interrupt_keeps_the_finished_runs(tmp_path, where):
    INTERRUPT["runs"] = 0
    bench = run_benchmark(
        "test/quadratic", [f"test-interrupt:where={where}"], repeat=3, out_dir=tmp_path, progress=False, warmup=False
    )
    assert bench.interrupted
    assert INTERRUPT["runs"] == 2  # the third repetition was never started
    rows = read_csv(tmp_path / "results.csv")
    first = [r for r in rows if r["rep"] == 0]
    assert first[-1]["final"] and first[-1]["status"] == "converged"
    assert [r["iter"] for r in first[:-1]] == list(range(first[-1]["iter"] + 1))
    assert {r["rep"] for r in rows} <= {0, 1}
    assert all(r["status"] == "user_stopped" for r in rows if r["rep"] == 1)
    (summary,) = read_csv(tmp_path / "summary.csv")
    assert summary["statuses"] == "converged;user_stopped" and summary["status"] == "user_stopped"
    assert summary["ratio"] is None


def test_a_run_stopped_inside_the_solver_has_no_ratio_and_is_not_the_anchor(tmp_path):
    # rep 0: test-interrupt and test-gd converge; rep 1: test-interrupt's step raises
    # KeyboardInterrupt, the driver returns its partial result as user_stopped, the benchmark stops
    INTERRUPT["runs"] = 0
    bench = run_benchmark("test/quadratic", ["test-interrupt", "test-gd"], repeat=2, out_dir=tmp_path,
                          progress=False, warmup=False)
    assert bench.interrupted
    assert [(r.solver, r.rep, r.status) for r in bench.runs] == [
        ("test-interrupt", 0, "converged"), ("test-gd", 0, "converged"), ("test-interrupt", 1, "user_stopped"),
    ]
    stopped, gd = read_csv(tmp_path / "summary.csv")
    assert stopped["status"] == "user_stopped" and stopped["time_s"] is not None and stopped["ratio"] is None
    assert gd["ratio"] == 1.0
    heading = format_summary(bench.summary).splitlines()[0]
    assert heading == "test/quadratic  (anchor: test-gd)"


@pytest.mark.parametrize("warmup", [True, False])
def test_warmup_is_one_short_untimed_run_per_pair(tmp_path, warmup):
    SOLVE_CALLS.clear()
    bench = run_benchmark(["test/quadratic:n=4", "test/quadratic:n=5"], ["test-counting:max_iter=500"], repeat=3,
                          warmup=warmup, out_dir=tmp_path, progress=False)
    assert SOLVE_CALLS == ([2, 500, 500, 500] if warmup else [500, 500, 500]) * 2
    assert [(r.problem, r.rep) for r in bench.runs] == [(p, k) for p in bench.problems for k in range(3)]
    assert all(r.status == "converged" and r.nit > 2 for r in bench.runs)
    assert all(r.counters == {"grad": r.nit + 1} for r in bench.runs)  # the warm-up's evaluations are not counted
    rows = read_csv(tmp_path / "results.csv")
    assert len(rows) == sum(r.nit + 2 for r in bench.runs)


@pytest.mark.parametrize(("time_limit", "warmup_limit"), [(None, 30.0), (100.0, 30.0), (5.0, 5.0)])
def test_warmup_time_is_capped(tmp_path, time_limit, warmup_limit):
    SOLVE_LIMITS.clear()
    run_benchmark("test/quadratic:n=4", ["test-counting"], time_limit=time_limit, out_dir=tmp_path, progress=False)
    assert SOLVE_LIMITS == [warmup_limit, time_limit]


def test_jobs_2_gives_the_same_summary_as_jobs_1(tmp_path):
    kwargs = dict(problems="test-suite", solvers=["test-gd", "test-needs-hvp", "test-boom", "test-heavyball"],
                  repeat=2, progress=False)
    serial = run_benchmark(**kwargs, out_dir=tmp_path / "serial")
    parallel = run_benchmark(**kwargs, jobs=2, out_dir=tmp_path / "parallel")
    keys = ("problem", "solver", "status", "statuses", "message", "nit", "reps", "count_grad")
    assert [[r.get(k) for k in keys] for r in parallel.summary] == [[r.get(k) for k in keys] for r in serial.summary]
    np.testing.assert_allclose(
        [r.get("f_gap") or 0.0 for r in parallel.summary], [r.get("f_gap") or 0.0 for r in serial.summary]
    )
    rows_serial = read_csv(tmp_path / "serial" / "results.csv")
    rows_parallel = read_csv(tmp_path / "parallel" / "results.csv")
    key = lambda r: (r["problem"], r["solver"], r["rep"], r["iter"], r["final"])  # noqa: E731
    assert sorted(map(key, rows_parallel)) == sorted(map(key, rows_serial))


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("solvers", "shared", "match"),
    [
        (["test-gd:learning_rate=0.1"], {}, "unknown option.*'learning_rate'.*valid options: .*lr"),
        (["test-gd"], {"max_iters": 5}, "unknown option.*'max_iters'"),
        (["test-gdd"], {}, "unknown solver 'test-gdd'; did you mean 'test-gd'"),
        (["test-gd:lr"], {}, "solver spec 'test-gd:lr'"),
        (["test-gd"], {"tol": -1.0}, "tol must be a positive"),
        (["test-gd", "test-gd"], {}, "distinct"),
    ],
)
def test_bad_solver_specs_fail_before_any_run(tmp_path, solvers, shared, match):
    INTERRUPT["runs"] = 0
    with pytest.raises(SpecError, match=match) as info:
        # test-interrupt counts its runs: none may start
        run_benchmark("test/quadratic", ["test-interrupt", *solvers], solver_options=shared,
                      out_dir=tmp_path / "out", progress=False)
    assert "\n" not in str(info.value)
    assert INTERRUPT["runs"] == 0
    assert not (tmp_path / "out").exists()


def test_bad_problem_specs_are_errors():
    with pytest.raises(SpecError, match="did you mean 'test/quadratic'"):
        resolve_problems(["test/quadratc"])
    with pytest.raises(SpecError, match="'size'"):
        resolve_problems(["test/quadratic:size=3"])
    specs = resolve_problems(["test-suite", "test/quadratic:n=4", "test/quadratic"])
    assert [s.label for s in specs] == ["test/quadratic:n=4", "test/quadratic:n=8,cond=20", "test/quadratic"]
    assert specs[1].params == {"n": 8, "cond": 20}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cg", ["cg"]),
        ("cg,scipy-cg", ["cg", "scipy-cg"]),
        ("cg,pcg:preconditioner=ichol,tol=1e-8,scipy-cg", ["cg", "pcg:preconditioner=ichol,tol=1e-8", "scipy-cg"]),
        ("cg,tol=1e-3", ["cg:tol=1e-3"]),
        (" cg , pyamg:cycle=V ,", ["cg", "pyamg:cycle=V"]),
    ],
)
def test_split_solver_list(text, expected):
    assert split_solver_list(text) == expected


def test_split_solver_list_rejects_a_leading_option():
    with pytest.raises(SpecError, match="before any solver"):
        split_solver_list("tol=1e-3,cg")


def test_format_summary_columns():
    rows = [
        {"problem": "p", "solver": "a", "status": "converged", "message": "ok", "nit": 12, "time_s": 0.0123,
         "ratio": 1.0, "fun": -1.5, "f_gap": 2.5e-11},
        {"problem": "p", "solver": "b", "status": "max_iter", "message": "reached the iteration limit", "nit": 1000,
         "time_s": 2.5, "ratio": 203.25, "residual": 1e-3},
    ]
    lines = format_summary(rows).splitlines()
    assert lines[0] == "p  (anchor: a)"
    assert lines[1].split() == ["solver", "status", "metric", "nit", "time", "ratio", "note"]
    assert lines[3].split() == ["a", "converged", "f_gap=2.50e-11", "12", "12.3ms", "1.00"]
    assert lines[4].split()[:6] == ["b", "max_iter", "residual=0.001", "1000", "2.50s", "203.25"]
    assert lines[4].endswith("reached the iteration limit")
    assert len(lines) == 5  # nothing skipped: no count line


def test_solver_target_runs_that_solver_on_another_backend(tmp_path):
    pytest.importorskip("torch")
    bench = run_benchmark(
        ["linear/poisson-2d:n=16"], ["scipy-cg", "cg@torch"], solver_options={"tol": 1e-10},
        out_dir=tmp_path, progress=False,
    )
    rows = {row["solver"]: row for row in bench.summary}
    assert rows["cg@torch"]["status"] == "converged" and rows["scipy-cg"]["status"] == "converged"
    assert rows["cg@torch"]["nit"] == rows["scipy-cg"]["nit"]
    np.testing.assert_allclose(rows["cg@torch"]["residual"], rows["scipy-cg"]["residual"], rtol=1e-3)
    with pytest.raises(SpecError, match="target 'tpu' must be one of numpy, torch, cuda"):
        run_benchmark(["linear/poisson-2d:n=16"], ["cg@tpu"], progress=False)


def test_dual_gap_is_measured_against_the_best_dual_of_the_run():
    pytest.importorskip("ot")
    bench = run_benchmark(
        ["ot/random-assignment:n=40,eta=50"], ["sinkhorn:tol=1e-3", "sns:tol=1e-11"], progress=False
    )
    rows = {row["solver"]: row for row in bench.summary}
    best = max(rows["sinkhorn:tol=1e-3"]["dual"], rows["sns:tol=1e-11"]["dual"])
    for row in rows.values():
        np.testing.assert_allclose(row["dual_gap"], best - row["dual"], rtol=0, atol=0)
    assert rows["sinkhorn:tol=1e-3"]["dual_gap"] > 0 and rows["sns:tol=1e-11"]["dual_gap"] == 0.0
