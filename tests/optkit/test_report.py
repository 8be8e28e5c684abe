"""Tests of optkit.report: Dolan–Moré profiles on hand-made tables, and the files of a report."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from optkit.bench import RESULT_COLUMNS, SUMMARY_COLUMNS, write_csv
from optkit.report import make_report, performance_profile, performance_ratios, profile_costs

INF = np.inf


def test_performance_profile_on_a_hand_made_table():
    # 3 problems x 2 solvers; solver 1 fails on problem 2.
    costs = np.array([[1.0, 2.0], [4.0, 2.0], [3.0, INF]])
    np.testing.assert_allclose(performance_ratios(costs), [[1.0, 2.0], [2.0, 1.0], [1.0, INF]])
    rho = performance_profile(costs, [1.0, 1.5, 2.0, 3.0, 1e6])
    np.testing.assert_allclose(
        rho,
        [
            [2 / 3, 1 / 3],  # tau = 1: best on problems {0, 2} / {1}
            [2 / 3, 1 / 3],
            [1.0, 2 / 3],  # tau = 2: solver 0 within 2x everywhere, solver 1 on {0, 1}
            [1.0, 2 / 3],
            [1.0, 2 / 3],  # a failure never counts
        ],
    )


def test_performance_ratios_edge_cases():
    costs = np.array([[0.0, 0.0, 5.0], [INF, np.nan, -1.0], [2.0, 2.0, 8.0]])
    # a zero best cost: ties are 1, anything larger is infinitely worse; all failed: all inf
    np.testing.assert_allclose(performance_ratios(costs), [[1, 1, INF], [INF, INF, INF], [1, 1, 4]])
    np.testing.assert_allclose(performance_profile(costs, [1.0, 4.0]), [[2 / 3, 2 / 3, 0], [2 / 3, 2 / 3, 1 / 3]])
    with pytest.raises(ValueError, match="2-D"):
        performance_ratios(np.ones(3))


def _summary_row(problem, solver, status, nit, time_s, ratio, **metrics):
    return {"problem": problem, "solver": solver, "options": "{}", "status": status, "statuses": status,
            "message": status.replace("_", " "), "reps": 1, "n_converged": int(status == "converged"),
            "nit": nit, "time_s": time_s, "ratio": ratio, **metrics}


def test_profile_costs_counts_non_converged_as_failed():
    summary = [
        _summary_row("p1", "a", "converged", 10, 0.5, 1.0),
        _summary_row("p1", "b", "max_iter", 100, 0.2, 0.4),
        _summary_row("p2", "a", "skipped", None, None, None),
        _summary_row("p2", "b", "converged", 7, 0.1, None),
    ]
    problems, solvers, costs = profile_costs(summary, "time_s")
    assert problems == ["p1", "p2"] and solvers == ["a", "b"]
    np.testing.assert_allclose(costs, [[0.5, INF], [INF, 0.1]])
    np.testing.assert_allclose(profile_costs(summary, "nit")[2], [[10, INF], [INF, 7]])


@pytest.fixture
def bench_dir(tmp_path):
    """A hand-made benchmark directory: 2 problems x 2 solvers, one pair that did not converge."""
    rows = []
    for problem, scale in (("lin/a:n=4", 1.0), ("lin/b", 3.0)):
        for solver, rate, nit in (("fast", 0.1, 4), ("slow", 0.5, 9)):
            for k in range(nit + 1):
                rows.append({"problem": problem, "solver": solver, "options": '{"tol": 1e-06}', "rep": 0, "iter": k,
                             "time": 1e-3 * k * scale, "final": False, "status": "converged",
                             "residual": rate**k, "fun": 1.0 + rate**k - 1.0})
            rows.append({"problem": problem, "solver": solver, "options": '{"tol": 1e-06}', "rep": 0, "iter": nit,
                         "time": 1e-3 * nit * scale, "final": True, "status": "converged", "residual": rate**nit})
    write_csv(tmp_path / "results.csv", rows, RESULT_COLUMNS)
    summary = [
        _summary_row("lin/a:n=4", "fast", "converged", 4, 4e-3, 1.0, residual=1e-4),
        _summary_row("lin/a:n=4", "slow", "converged", 9, 9e-3, 2.25, residual=2e-3),
        _summary_row("lin/b", "fast", "converged", 4, 12e-3, 1.0, residual=1e-4),
        _summary_row("lin/b", "slow", "max_iter", 9, 27e-3, 2.25, residual=2e-3),
    ]
    write_csv(tmp_path / "summary.csv", summary, SUMMARY_COLUMNS)
    return tmp_path


def test_make_report_writes_every_file(bench_dir):
    index = make_report(bench_dir)
    assert index == bench_dir / "index.html"
    pngs = sorted(p.name for p in bench_dir.glob("*.png"))
    assert pngs == sorted([
        "profile_time.png", "profile_iter.png",
        "conv_lin_a_n_4_residual.png", "conv_lin_a_n_4_fun.png", "conv_lin_b_residual.png", "conv_lin_b_fun.png",
    ])
    for name in [*pngs, "report.md", "index.html"]:
        assert (bench_dir / name).stat().st_size > 0, name
    for name in pngs:
        assert (bench_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    md = (bench_dir / "report.md").read_text()
    assert "| problem | solver | status | metric | nit | time | ratio | note |" in md
    assert "| lin/b | slow | max_iter | residual=0.002 | 9 | 27.0ms | 2.25 | max iter |" in md
    assert all(f"]({name})" in md for name in pngs)

    page = index.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(pngs)
    assert {base64.b64decode(data) for data in images} == {(bench_dir / name).read_bytes() for name in pngs}
    assert page.count("<tr>") == 1 + 4 and "<td>max_iter</td>" in page
    assert "src=\"profile" not in page  # self-contained: no links to files


def test_make_report_needs_a_bench_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="summary.csv"):
        make_report(tmp_path)
