"""Tests of optkit.report: Dolan–Moré profiles on hand-made tables, and the files of a report."""

from __future__ import annotations

import base64
import html
import json
import re

import numpy as np
import pytest

from optkit._records import ResultWriter
from optkit.bench import RESULT_COLUMNS, SUMMARY_COLUMNS, Run, read_csv, summarize, write_csv
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


def _md_blocks(md: str) -> dict[str, tuple[str, list[list[str]]]]:
    """report.md's problem sections: ``{problem: (anchor heading, table rows as cell lists)}``."""
    blocks = {}
    for section in re.split(r"^## ", md, flags=re.MULTILINE)[1:]:
        heading, _, body = section.partition("\n")
        if heading == "Figures":
            continue
        problem, _, anchor = heading.partition("  ")
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines() if line.startswith("| ")]
        blocks[problem] = (anchor, rows[1:])  # rows[0] is the header
    return blocks


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
    assert md.count("| solver | status | metric | nit | time | ratio | note |") == 2
    assert _md_blocks(md)["lin/b"] == ("(anchor: fast)", [
        ["fast", "converged", "residual=1.00e-04", "4", "12.0ms", "1.00", ""],
        ["slow", "max_iter", "residual=0.002", "9", "27.0ms", "2.25", "max iter"],
    ])
    assert all(f"]({name})" in md for name in pngs)
    assert "skipped" not in md  # no skipped pair, no count line

    page = index.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(pngs)
    assert {base64.b64decode(data) for data in images} == {(bench_dir / name).read_bytes() for name in pngs}
    assert page.count("<table>") == 2 and page.count("<tr>") == 2 * (1 + 2) and "<td>max_iter</td>" in page
    assert "src=\"profile" not in page  # self-contained: no links to files


def _run(problem, solver, status, rep=0, time_s=None, nit=None, message="", residual=None):
    """A Run as the runner records it; a run that returned a result gets a two-row trace."""
    trace = [] if time_s is None else [{"iter": 0, "time": 0.0, "residual": 1.0},
                                       {"iter": nit, "time": time_s, "residual": residual}]
    metrics = {} if time_s is None else {"residual": residual}
    return Run(problem, solver, {"tol": 1e-6}, rep, status, message, nit, time_s, None, {}, metrics, trace)


# Medians over three reps (the middle value): b 0.25 s on p1, 0.5 s on p2; c 0.75 s on p1, 0.2 s on p2.
MEDIAN = {("p1", "b"): 0.25, ("p1", "c"): 0.75, ("p2", "a"): 0.4, ("p2", "c"): 0.2}
NOT_FITTING = "solver 'd' accepts Nothing"


@pytest.fixture
def mixed_bench_dir(tmp_path):
    """Two problems x four solvers a, b, c, d written by the benchmark's own writer and summary.

    On p1 the first solver, a, was stopped by the user (Ctrl-C inside the solver: a result with a
    time, shorter than anyone's), so b is the anchor; on p2 a is the anchor, b failed, c hit
    max_iter. d fits neither problem.
    """
    runs = [_run("p1", "a", "user_stopped", 0, 0.01, 2, "stopped by the callback or by an interrupt (Ctrl-C)", 0.5)]
    for (problem, solver), median in MEDIAN.items():
        status = "max_iter" if (problem, solver) == ("p2", "c") else "converged"
        for rep, factor in enumerate((1.2, 1.0, 0.6)):
            runs.append(_run(problem, solver, status, rep, median * factor, 10 + rep, "", 1e-7))
    runs.append(_run("p2", "b", "error", 0, message="RuntimeError: boom"))
    runs += [_run(problem, "d", "skipped", message=NOT_FITTING) for problem in ("p1", "p2")]
    writer = ResultWriter(tmp_path)
    for run in runs:
        writer.add(run)
    writer.write_summary(summarize(runs, ["p1", "p2"], ["a", "b", "c", "d"]))
    return tmp_path


def test_summary_ratio_skips_stopped_failed_and_skipped_runs(mixed_bench_dir):
    summary = {(r["problem"], r["solver"]): r for r in read_csv(mixed_bench_dir / "summary.csv")}
    for pair in [("p1", "a"), ("p2", "b"), ("p1", "d"), ("p2", "d")]:
        assert summary[pair]["ratio"] is None, pair
    assert summary["p1", "a"]["time_s"] == 0.01  # it stays in the summary, with its time
    assert summary["p1", "b"]["ratio"] == 1.0 and summary["p2", "a"]["ratio"] == 1.0
    np.testing.assert_allclose(summary["p1", "c"]["ratio"], 0.75 / 0.25, rtol=1e-12)
    np.testing.assert_allclose(summary["p2", "c"]["ratio"], 0.2 / 0.4, rtol=1e-12)
    records = [json.loads(line) for line in (mixed_bench_dir / "runs.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records if (r["problem"], r["solver"]) == ("p1", "a")] == ["user_stopped"]
    results = read_csv(mixed_bench_dir / "results.csv")
    assert {r["status"] for r in results if r["solver"] == "a" and r["problem"] == "p1"} == {"user_stopped"}


def test_report_groups_runs_by_problem(mixed_bench_dir):
    make_report(mixed_bench_dir)
    md = (mixed_bench_dir / "report.md").read_text()
    blocks = _md_blocks(md)
    assert list(blocks) == ["p1", "p2"]
    assert blocks["p1"][0] == "(anchor: b)" and blocks["p2"][0] == "(anchor: a)"
    # each block lists only its problem's runs that were not skipped, in the benchmark's order
    assert [row[0] for row in blocks["p1"][1]] == ["a", "b", "c"]
    assert [row[0] for row in blocks["p2"][1]] == ["a", "b", "c"]
    for problem, (_, rows) in blocks.items():
        anchor = blocks[problem][0].removeprefix("(anchor: ").removesuffix(")")
        for solver, status, _metric, _nit, time, ratio, note in rows:
            if (problem, solver) not in MEDIAN:
                assert ratio == "" and status in ("user_stopped", "error") and note, (problem, solver)
                continue
            # the quotient of the medians, shown with two decimals (3.00, 0.50, 1.00: no rounding edge)
            assert ratio == f"{MEDIAN[problem, solver] / MEDIAN[problem, anchor]:.2f}", (problem, solver)
    assert blocks["p2"][1][1][1:] == ["error", "", "", "", "", "RuntimeError: boom"]
    # the skipped pairs: one count line and the folded reasons, never a table row
    assert all(row[0] != "d" for _, rows in blocks.values() for row in rows)
    details = re.search(r"<details>\n<summary>(.*)</summary>\n\n(.*?)\n\n</details>", md, re.DOTALL)
    assert details.group(1) == "2 incompatible pairs skipped"
    assert details.group(2) == f"- {NOT_FITTING}: `d` on `p1`, `p2`"
    assert md.count("incompatible") == 1

    page = (mixed_bench_dir / "index.html").read_text()
    assert re.findall(r"<h2>(.*?)</h2>", page) == ["p1  (anchor: b)", "p2  (anchor: a)", "Figures"]
    tables = re.findall(r"<table>.*?</table>", page, re.DOTALL)
    assert [re.findall(r"<tr><td>([^<]*)</td>", t) for t in tables] == [["a", "b", "c"], ["a", "b", "c"]]
    assert "<td>RuntimeError: boom</td>" in tables[1]
    folded = re.search(r"<details><summary>(.*?)</summary>(.*?)</details>", page, re.DOTALL)
    assert folded.group(1) == "2 incompatible pairs skipped"
    assert folded.group(2) == f"<dl><dt>{html.escape(NOT_FITTING)}</dt><dd>d on p1, p2</dd></dl>"


def test_make_report_needs_a_bench_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="summary.csv"):
        make_report(tmp_path)


def test_legend_labels_break_long_specs_after_commas():
    from optkit.report import _legend_label

    spec = "galore-adamw:batch_size=256,epochs=20,lr=0.01,eval_every=32,max_iter=100000,rank=4"
    lines = _legend_label(spec).split("\n")
    assert "".join(lines) == spec and all(line.endswith(",") for line in lines[:-1])
    assert lines == ["galore-adamw:batch_size=256,epochs=20,", "lr=0.01,eval_every=32,max_iter=100000,rank=4"]
    assert _legend_label("cg") == "cg"
