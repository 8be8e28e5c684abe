"""Tests of the ``optkit`` command: in-process on toys registered here, end-to-end in a subprocess
(``python -m optkit.cli``) on the real suite (``linear/poisson-2d`` with ``cg`` and ``scipy-cg``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest

from optkit.bench import SpecError, read_csv
from optkit.cli import main, parse_assignments
from optkit.problem import SmoothProblem
from optkit.registry import register_problem, register_solver, scoped_registrations
from optkit.result import Status
from optkit.solver import IterativeSolver

# ----------------------------------------------------------------------------- toys


def cli_square(n: int = 3, shift: float = 1.0) -> SmoothProblem:
    """f(x) = 1/2 ||x - shift||^2, minimum 0 at x = shift."""
    return SmoothProblem(
        lambda x: 0.5 * float(((x - shift) ** 2).sum()), lambda x: x - shift, np.zeros(n),
        name="test/cli-square", metadata={"f_opt": 0.0},
    )


@dataclass(frozen=True)
class _State:
    x: Any
    g: Any


@dataclass(frozen=True, kw_only=True)
class CliDescent(IterativeSolver):
    """x <- x - lr grad f(x), stopping when ||grad|| <= tol."""

    accepts: ClassVar = (SmoothProblem,)
    lr: float = 0.5

    def init(self, problem, x0):
        return _State(x0, problem.grad(x0))

    def step(self, problem, state):
        x = state.x - self.lr * state.g
        return _State(x, problem.grad(x))

    def terminate(self, problem, state):
        return Status.CONVERGED if np.linalg.norm(state.g) <= self.tol else None

    def metrics(self, problem, state):
        return {"grad_norm": float(np.linalg.norm(state.g))}


@pytest.fixture(scope="module", autouse=True)
def toy_registrations():
    """This module's toy problem and solver, registered for its tests only."""
    with scoped_registrations():
        register_problem("test/cli-square")(cli_square)
        register_solver("test-cli-descent")(CliDescent)
        yield


# ----------------------------------------------------------------------------- in-process


def test_parse_assignments():
    assert parse_assignments(["tol=1e-8", "max_iter=50", "name=ichol", "flag=true"], "--option") == {
        "tol": 1e-8, "max_iter": 50, "name": "ichol", "flag": True
    }
    with pytest.raises(SpecError, match="--param 'n' is not of the form key=value"):
        parse_assignments(["n"], "--param")


def test_solve_json_in_process(capsys):
    code = main(["solve", "test/cli-square:n=4", "--solver", "test-cli-descent:lr=0.5",
                 "--option", "tol=1e-9", "--param", "shift=2", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "converged" and record["success"] is True
    assert record["problem"] == "test/cli-square" and record["params"] == {"n": 4, "shift": 2}
    assert record["options"] == {"tol": 1e-9, "max_iter": 1000, "time_limit": None, "lr": 0.5}
    # gradient norm halves each step from 2 * sqrt(4) = 4: first k with 4 / 2^k <= 1e-9
    assert record["nit"] == int(np.ceil(np.log2(4 / 1e-9)))
    assert record["counters"] == {"grad": record["nit"] + 1}
    np.testing.assert_allclose(record["metrics"]["grad_norm"], 4 / 2 ** record["nit"], rtol=1e-12)
    np.testing.assert_allclose(record["metrics"]["f_gap"], 0.5 * record["metrics"]["grad_norm"] ** 2, rtol=1e-12)


def test_solve_human_summary(capsys):
    assert main(["solve", "test/cli-square", "--solver", "test-cli-descent"]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert lines["status"].startswith("converged:")
    assert lines["nit"] == "21"  # 2 * sqrt(3) / 2^k <= 1e-6
    assert {"problem", "solver", "time", "fun", "grad_norm", "f_gap", "counters"} <= set(lines)


def test_bench_json_in_process(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["bench", "test/cli-square:n=2", "test/cli-square:n=5", "--solvers", "test-cli-descent,lr=0.25",
                 "--solvers", "test-cli-descent:lr=0.5", "--option", "tol=1e-8", "--repeat", "2",
                 "--out", str(out), "--json", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["problem"], r["solver"]) for r in rows] == [
        (p, s) for p in ("test/cli-square:n=2", "test/cli-square:n=5")
        for s in ("test-cli-descent:lr=0.25", "test-cli-descent:lr=0.5")
    ]
    assert all(r["status"] == "converged" and r["reps"] == 2 for r in rows)
    assert [r["ratio"] for r in rows[::2]] == [1.0, 1.0]
    for anchor, other in (rows[0:2], rows[2:4]):
        np.testing.assert_allclose(other["ratio"], other["time_s"] / anchor["time_s"], rtol=1e-12)
    assert rows[0]["options"] == {"tol": 1e-8, "max_iter": 1000, "time_limit": None, "lr": 0.25}
    assert read_csv(out / "summary.csv")[0]["nit"] == rows[0]["nit"]
    assert "wrote" in captured.err


def test_bench_table_and_list_in_process(tmp_path, capsys):
    assert main(["bench", "test/cli-square", "--solvers", "test-cli-descent", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "test/cli-square  (anchor: test-cli-descent)"
    assert table[1].split() == ["solver", "status", "metric", "nit", "time", "ratio", "note"]
    assert table[3].split()[:2] == ["test-cli-descent", "converged"] and table[3].split()[-1] == "1.00"
    assert main(["list", "solvers"]) == 0
    listing = capsys.readouterr().out
    assert "test-cli-descent" in listing and "x <- x - lr grad f(x)" in listing and "problems" not in listing
    assert main(["list", "problems"]) == 0
    assert re.search(r"^test/cli-square +n=3, shift=1\.0 +f\(x\) = 1/2", capsys.readouterr().out, re.MULTILINE)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["solve", "test/cli-square", "--solver", "test-cli-descnt"], "did you mean 'test-cli-descent'"),
        (["solve", "test/cli-square", "--solver", "test-cli-descent", "--option", "step=1"], "'step'"),
        (["solve", "test/cli-square", "--solver", "test-cli-descent", "--param", "size=3"], "'size'"),
        (["solve", "test/cli-square", "--solver", "test-cli-descent", "--device", "cuda"], "needs backend 'torch'"),
        (["bench", "test/cli-square", "--solvers", "test-cli-descent", "--option", "tol"], "not of the form"),
        (["bench", "--solvers", "test-cli-descent"], "at least one problem"),
        (["report", "no-such-dir"], "no summary.csv"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    argv = [*argv, "--out", str(tmp_path / "out")] if argv[0] == "bench" else argv
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("optkit: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_solve_with_missing_data_file_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPTKIT_DATA", str(tmp_path))
    assert main(["solve", "constrained-logreg/a9a", "--solver", "alm-newton"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optkit: error: could not build problem") and "OPTKIT_DATA" in err


# ----------------------------------------------------------------------------- subprocess


def _optkit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "optkit.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_list():
    proc = _optkit("list")
    assert proc.returncode == 0, proc.stderr
    for word in ("solvers (", "problems (", "suites (", "cg", "scipy-cg", "linear/poisson-2d", "demo"):
        assert word in proc.stdout
    assert _optkit("list", "suites").stdout.startswith("suites (")


def test_cli_solve_json():
    proc = _optkit("solve", "linear/poisson-2d:n=16", "--solver", "cg", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["status"] == "converged" and record["solver"] == "cg" and record["n"] == 256
    assert 0 < record["nit"] <= 256
    assert record["metrics"]["residual"] <= 10 * record["options"]["tol"]


def test_cli_bench_then_report(tmp_path):
    out = tmp_path / "bench"
    proc = _optkit("bench", "linear/poisson-2d:n=16", "--solvers", "cg,scipy-cg", "--json", "--out", str(out),
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["solver"], r["status"]) for r in rows] == [("cg", "converged"), ("scipy-cg", "converged")]
    assert rows[0]["ratio"] == 1.0
    np.testing.assert_allclose(rows[1]["ratio"], rows[1]["time_s"] / rows[0]["time_s"], rtol=1e-12)
    results = read_csv(out / "results.csv")
    for row in rows:
        (final,) = [r for r in results if r["solver"] == row["solver"] and r["final"]]
        assert final["iter"] == row["nit"]
        np.testing.assert_allclose(final["residual"], row["residual"])
    assert {p.name for p in out.iterdir()} == {"results.csv", "runs.jsonl", "summary.csv"}

    proc = _optkit("report", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "index.html")
    for name in ("report.md", "index.html", "profile_time.png", "profile_iter.png"):
        assert (out / name).stat().st_size > 0, name
    assert list(out.glob("conv_linear_poisson-2d_n_16_*.png"))


def test_cli_data_path_honours_optkit_data(tmp_path):
    proc = _optkit("data", "path", env={"OPTKIT_DATA": str(tmp_path / "my-data")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "my-data")
    proc = _optkit("data", "list", env={"OPTKIT_DATA": str(tmp_path / "my-data")})
    assert proc.returncode == 0 and proc.stdout.startswith(f"data directory: {tmp_path / 'my-data'}")


def test_cli_unknown_solver_exits_2_with_a_hint():
    proc = _optkit("solve", "linear/poisson-2d:n=16", "--solver", "cgg")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("optkit: error:")]
    assert "unknown solver 'cgg'" in line and "did you mean" in line and "'cg'" in line
