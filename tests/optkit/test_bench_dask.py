"""Sweeps on Dask, resumed sweeps and per-host ratios (optkit.bench with executor="dask", resume=True).

The toys live at module level so that Dask's worker processes import them by reference (the
spec of a run, not its problem's arrays, travels to the worker).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from bench_toys import ToyGD, quadratic

import optkit._dask_executor as dask_executor
from optkit.bench import Run, SpecError, read_csv, run_benchmark, summarize
from optkit.registry import register_problem, register_solver, scoped_registrations

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")


SOLVES = {"runs": 0, "interrupt_at": None}


@dataclass(frozen=True, kw_only=True)
class ToyCountedGD(ToyGD):
    """ToyGD that counts its solves in this process, and raises KeyboardInterrupt at the
    ``SOLVES["interrupt_at"]``-th (a Ctrl-C in the middle of a sweep)."""

    name: ClassVar[str] = "test-counted-gd"

    def solve(self, problem, *, x0=None, callback=None):
        SOLVES["runs"] += 1
        if SOLVES["runs"] == SOLVES["interrupt_at"]:
            raise KeyboardInterrupt
        return super().solve(problem, x0=x0, callback=callback)


@pytest.fixture(scope="module", autouse=True)
def toy_registrations():
    with scoped_registrations():
        register_problem("test/quadratic")(quadratic)
        register_solver("test-gd")(ToyGD)
        register_solver("test-counted-gd")(ToyCountedGD)
        yield


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, with the scheduler settings the runner gives its own LocalCluster."""
    with dask.config.set(dask_executor._LOCAL_SCHEDULER_CONFIG):
        local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with local, distributed.Client(local) as client:
        yield local, client


def _rows(summary, keys=("problem", "solver", "status", "statuses", "reps", "nit")):
    return [[row.get(k) for k in keys] for row in summary]


SWEEP = {
    "problems": ["test/quadratic:n=4", "test/quadratic:n=8,cond=20"],
    "solvers": ["test-gd", "test-gd:lr=0.5", "test-gd:max_iter=5"],
    "solver_options": {"tol": 1e-8},
    "repeat": 2,
    "progress": False,
}


def test_dask_sweep_gives_the_rows_of_the_serial_sweep(tmp_path, cluster):
    local, _ = cluster
    serial = run_benchmark(**SWEEP, out_dir=tmp_path / "serial")
    on_dask = run_benchmark(**SWEEP, executor="dask", scheduler=local.scheduler_address, out_dir=tmp_path / "dask")
    assert _rows(on_dask.summary) == _rows(serial.summary)
    assert {row["status"] for row in serial.summary} == {"converged", "max_iter"}
    for key in ("f_gap", "grad_norm"):  # the same arithmetic in every process: equal to rounding
        np.testing.assert_allclose([r[key] for r in on_dask.summary], [r[key] for r in serial.summary], rtol=1e-12)
    key = lambda r: (r["problem"], r["solver"], r["rep"], r["iter"], r["final"], r["status"])
    serial_rows = read_csv(tmp_path / "serial" / "results.csv")
    dask_rows = read_csv(tmp_path / "dask" / "results.csv")
    assert sorted(map(key, dask_rows)) == sorted(map(key, serial_rows))
    np.testing.assert_allclose(
        [r["grad_norm"] for r in sorted(dask_rows, key=key)],
        [r["grad_norm"] for r in sorted(serial_rows, key=key)],
        rtol=1e-12,
    )
    # each run was timed on its worker, and says where
    assert all(run.host and run.wall_s >= run.time_s > 0 for run in on_dask.runs)


def test_the_time_limit_holds_on_the_workers(tmp_path, cluster):
    local, _ = cluster
    bench = run_benchmark(
        "test/quadratic",
        ["test-gd:pause=0.05,max_iter=1000"],
        repeat=2,
        time_limit=0.3,
        executor="dask",
        scheduler=local.scheduler_address,
        out_dir=tmp_path,
        progress=False,
    )
    assert [run.status for run in bench.runs] == ["time_limit", "time_limit"]
    # the limit is checked after each 0.05 s step: the run stops within a step (plus slack for a busy machine)
    np.testing.assert_allclose([run.time_s for run in bench.runs], [0.3, 0.3], atol=0.15)
    assert all(2 <= run.nit <= 7 for run in bench.runs)


def test_a_killed_worker_leaves_one_error_row_and_resume_redoes_only_it(tmp_path, cluster):
    local, client = cluster
    sweep = {**SWEEP, "solvers": ["test-counted-gd:pause=0.05,max_iter=12"], "repeat": 3}
    out = tmp_path / "killed"
    finished = []
    runner = threading.Thread(
        target=lambda: finished.append(
            run_benchmark(**sweep, executor="dask", scheduler=local.scheduler_address, out_dir=out)
        )
    )
    runner.start()
    victim, pid = min(client.run(os.getpid).items())
    deadline = time.monotonic() + 60
    while not client.processing(workers=[victim])[victim] and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # well inside a 0.6 s run
    os.kill(pid, signal.SIGKILL)
    runner.join(timeout=120)
    (killed,) = finished
    errors = [run for run in killed.runs if run.status == "error"]
    assert len(errors) == 1 and len(killed.runs) == 6
    assert errors[0].message.startswith("worker lost: ") and victim in errors[0].message
    assert all(run.status == "max_iter" and run.nit == 12 for run in killed.runs if run.status != "error")

    SOLVES.update(runs=0, interrupt_at=None)
    resumed = run_benchmark(**sweep, out_dir=out, resume=True, warmup=False)
    assert SOLVES["runs"] == 1
    assert [run.status for run in resumed.runs].count("max_iter") == 6
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["status"] for r in records} == {"max_iter"}


def test_resume_after_an_interrupt_runs_only_what_is_missing(tmp_path):
    SOLVES.update(runs=0, interrupt_at=None)
    whole = run_benchmark(
        **{**SWEEP, "solvers": ["test-counted-gd", "test-gd"]}, out_dir=tmp_path / "whole", warmup=False
    )
    assert SOLVES["runs"] == 4

    out = tmp_path / "interrupted"
    SOLVES.update(runs=0, interrupt_at=3)
    first = run_benchmark(**{**SWEEP, "solvers": ["test-counted-gd", "test-gd"]}, out_dir=out, warmup=False)
    assert first.interrupted and len(first.runs) == 5  # 4 finished, 1 interrupted; 3 never started
    with open(out / "runs.jsonl", "a") as fh:  # a record cut short by a kill
        fh.write('{"problem": "test/quadr')

    SOLVES.update(runs=0, interrupt_at=None)
    resumed = run_benchmark(
        **{**SWEEP, "solvers": ["test-counted-gd", "test-gd"]}, out_dir=out, resume=True, warmup=False
    )
    assert SOLVES["runs"] == 2  # the interrupted run and the one never started; test-gd's 2 runs too
    assert len(resumed.runs) == 8 and not resumed.interrupted
    assert _rows(resumed.summary) == _rows(whole.summary)
    np.testing.assert_allclose([r["f_gap"] for r in resumed.summary], [r["f_gap"] for r in whole.summary], rtol=1e-12)
    key = lambda r: (r["problem"], r["solver"], r["rep"], r["iter"], r["final"], r["status"])
    assert sorted(map(key, read_csv(out / "results.csv"))) == sorted(
        map(key, read_csv(tmp_path / "whole" / "results.csv"))
    )
    assert len((out / "runs.jsonl").read_text().splitlines()) == 8
    assert len(read_csv(out / "summary.csv")) == len(whole.summary)

    SOLVES["runs"] = 0
    again = run_benchmark(**{**SWEEP, "solvers": ["test-counted-gd", "test-gd"]}, out_dir=out, resume=True)
    assert SOLVES["runs"] == 0 and _rows(again.summary) == _rows(whole.summary)


def _run(solver, host, time_s, rep=0, status="converged"):
    return Run("p", solver, {}, rep, status, "", 3, time_s, None, {}, {}, [], host)


def test_ratio_compares_each_host_with_the_anchor_on_the_same_host():
    runs = [
        _run("anchor", "fast", 1.0),
        _run("anchor", "slow", 4.0, rep=1),
        _run("b", "fast", 2.0),
        _run("b", "slow", 12.0, rep=1),  # 2x on one host, 3x on the other
        _run("c", "other", 1.0),
    ]
    rows = summarize(runs, ["p"], ["anchor", "b", "c"])
    assert [r["hosts"] for r in rows] == ["fast;slow", "fast;slow", "other"]
    np.testing.assert_allclose([rows[0]["ratio"], rows[1]["ratio"]], [1.0, 2.5])  # median of 2 and 3
    assert rows[2]["ratio"] is None  # never ran where the anchor ran
    pooled = summarize(runs, ["p"], ["anchor", "b", "c"], across_hosts=True)
    np.testing.assert_allclose([r["ratio"] for r in pooled], [1.0, 7.0 / 2.5, 1.0 / 2.5])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"executor": "spark"}, "executor must be 'local' or 'dask'"),
        ({"workers": 2}, "need executor 'dask'"),
        ({"executor": "dask", "jobs": 2}, "jobs is for the local executor"),
        ({"executor": "dask", "workers": 0}, "workers must be a positive integer"),
        ({"executor": "dask", "workers": 2, "scheduler": "tcp://127.0.0.1:8786"}, "either scheduler"),
        ({"executor": "dask", "scheduler": ""}, "scheduler must be an address"),
        ({"resume": True}, "resume needs the output directory"),
    ],
)
def test_bad_executor_options_are_refused_before_any_run(options, match):
    SOLVES["runs"] = 0
    with pytest.raises(SpecError, match=match):
        run_benchmark("test/quadratic", ["test-counted-gd"], progress=False, **options)
    assert SOLVES["runs"] == 0


def test_an_unreachable_scheduler_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(dask_executor, "_CONNECT_TIMEOUT", "1s")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SpecError, match=f"Dask scheduler at 'tcp://127.0.0.1:{port}'"):
        run_benchmark(
            "test/quadratic",
            ["test-gd"],
            executor="dask",
            scheduler=f"tcp://127.0.0.1:{port}",
            out_dir=tmp_path,
            progress=False,
        )


def _optkit(*args):
    command = [sys.executable, "-m", "optkit.cli", *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)


def test_cli_sweep_on_a_local_cluster_then_resume_runs_nothing(tmp_path):
    out = str(tmp_path / "sweep")
    command = ("bench", "linear/poisson-2d:n=16", "--solvers", "cg,scipy-cg", "--json", "--out", out, "--no-progress")
    proc = _optkit(*command, "--executor", "dask", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["solver"], r["status"]) for r in rows] == [("cg", "converged"), ("scipy-cg", "converged")]
    assert rows[0]["nit"] == rows[1]["nit"] > 0  # the same recurrence
    records = (tmp_path / "sweep" / "runs.jsonl").read_text()

    resumed = _optkit(*command, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "sweep" / "runs.jsonl").read_text() == records  # nothing was run again
    assert [json.loads(line) for line in resumed.stdout.splitlines()] == rows


def test_cli_refuses_workers_without_the_dask_executor(tmp_path):
    proc = _optkit("bench", "linear/poisson-2d:n=16", "--solvers", "cg", "--workers", "2", "--out", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "optkit: error: scheduler and workers need executor 'dask'" in proc.stderr
