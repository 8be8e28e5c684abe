"""The benchmark summary: one row per (problem, solver) pair with its time ratio to the
problem's anchor, the per-problem blocks the terminal table and the report share, and the
terminal table.

Used by :mod:`optkit.bench` (which re-exports the public names) and the command line.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ._records import SUMMARY_COLUMNS
from ._table import fmt_float, fmt_time, text_table

if TYPE_CHECKING:
    from .bench import Run

__all__ = [
    "ERROR",
    "INTERRUPTED",
    "SKIPPED",
    "ProblemBlock",
    "block_heading",
    "completed",
    "find_anchor",
    "format_summary",
    "main_metric",
    "problem_blocks",
    "skip_reasons",
    "skipped_line",
    "summarize",
    "summary_cells",
]

# The runner's own statuses: an incompatible pair, a solver that raised, and a run cut short
# by Ctrl-C (the same name as optkit.Status.USER_STOPPED, which a solver returns after one).
SKIPPED, ERROR, INTERRUPTED = "skipped", "error", "user_stopped"
# Preferred "main" metrics of the terminal table, in order; otherwise the first measure.
_MAIN_METRICS = ("kkt", "f_gap", "residual", "grad_norm", "error", "fun")

# Statuses of pairs that get no ratio and never anchor a problem (see summarize).
_NOT_COMPLETED = frozenset({SKIPPED, ERROR, INTERRUPTED})


def _severity(status: str) -> int:
    return {"converged": 0, SKIPPED: 1, INTERRUPTED: 3, ERROR: 4}.get(status, 2)


def _median(values: list) -> Any:
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not values:
        return None
    med = statistics.median(values)
    return int(med) if all(isinstance(v, int) for v in values) and med == int(med) else float(med)


def summarize(
    runs: Sequence[Run], problems: Sequence[str], solvers: Sequence[str], *, across_hosts: bool = False
) -> list[dict]:
    """One summary row per (problem, solver) pair that ran, in the order of the arguments.

    Columns: ``problem, solver, options`` (JSON), ``status`` (the worst over the reps:
    converged < skipped < a solver failure < user_stopped < error), ``statuses`` (each
    rep's, joined by ``;``), ``message`` (of the worst rep), ``reps``, ``n_converged``,
    and, as medians over the reps that returned a result (user-stopped ones included, so
    a stopped row shows how far it got): ``nit``, ``time_s``, the ``evaluate`` measures
    under their own names and the counters as ``count_<name>``; where the measures hold a
    ``dual`` objective (OT) but no ``dual_gap``, ``dual_gap`` is the gap to the best dual
    reached on that problem by any solver of the benchmark.

    ``ratio`` is this pair's median ``time_s`` over that of the problem's *anchor*: the
    first solver in ``solvers`` whose runs on that problem completed, i.e. returned a
    result that was not stopped by the user (see :func:`completed`), in a positive time.
    It is exactly 1 for the anchor, and empty for a pair that did not complete (skipped,
    failed with ``error``, or ``user_stopped``: a Ctrl-C or a callback stop inside the
    solver, or the runner's interrupt; its time measures when it was stopped, not how fast
    it was) and on a problem without an anchor. Such runs stay in ``runs.jsonl`` and
    ``results.csv``.

    Times from different machines are not compared: ``hosts`` lists the hosts a pair ran on,
    and the ratio is the median, over the hosts where both the pair and the anchor ran, of
    the pair's median time on that host over the anchor's there (on one machine: the plain
    ratio of medians); empty when they share no host. ``across_hosts=True`` pools the times
    of all hosts instead.
    """
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.problem, run.solver), []).append(run)
    rows = []
    for problem in problems:
        block = []
        for solver in solvers:
            group = sorted(groups.get((problem, solver), []), key=lambda r: r.rep)
            if group:
                block.append(_pair_row(problem, solver, group))
        anchor = find_anchor(block)
        for row in block:
            if anchor is None or not completed(row["status"]) or row["time_s"] is None:
                continue
            if row is anchor:
                row["ratio"] = 1.0
            elif across_hosts:
                row["ratio"] = row["time_s"] / anchor["time_s"]
            else:
                row["ratio"] = _same_host_ratio(groups[problem, row["solver"]], groups[problem, anchor["solver"]])
        rows.extend(block)
    _add_dual_gaps(rows)
    return rows


def _times_by_host(group: list[Run]) -> dict[str, float]:
    by_host: dict[str, list] = {}
    for run in group:
        if run.completed:
            by_host.setdefault(run.host, []).append(run.time_s)
    return {host: _median(times) for host, times in by_host.items()}


def _same_host_ratio(group: list[Run], anchor_group: list[Run]) -> float | None:
    """Median over shared hosts of (this pair's median time / the anchor's) on that host."""
    mine, anchor = _times_by_host(group), _times_by_host(anchor_group)
    ratios = [mine[h] / anchor[h] for h in mine if h in anchor and anchor[h] and mine[h] is not None]
    return float(statistics.median(ratios)) if ratios else None


def _pair_row(problem: str, solver: str, group: list[Run]) -> dict:
    """The summary row of one pair's reps, without its ratio (see :func:`summarize`)."""
    worst = max(group, key=lambda r: _severity(r.status))
    done = [r for r in group if r.completed]
    row = {
        "problem": problem,
        "solver": solver,
        "options": json.dumps(group[0].options, sort_keys=True, default=str),
        "status": worst.status,
        "statuses": ";".join(r.status for r in group),
        "message": worst.message,
        "reps": len(group),
        "n_converged": sum(r.status == "converged" for r in group),
        "nit": _median([r.nit for r in done]),
        "time_s": _median([r.time_s for r in done]),
        "ratio": None,
        "hosts": ";".join(sorted({r.host for r in group if r.host})),
    }
    for key in dict.fromkeys(k for r in done for k in r.metrics):
        row[key] = _median([r.metrics.get(key) for r in done])
    for key in dict.fromkeys(k for r in done for k in r.counters):
        row[f"count_{key}"] = _median([r.counters.get(key) for r in done])
    return row


def completed(status: str) -> bool:
    """Whether a summary row's ``status`` means every rep returned a result that was not
    stopped by the user: any status but ``skipped``, ``error`` and ``user_stopped``.

    The worst rep sets a row's status, so one stopped or failed rep is enough to make the
    pair not completed. (``Run.completed`` is another test: whether one run returned a
    result at all, user-stopped or not.)
    """
    return status not in _NOT_COMPLETED


def find_anchor(rows: Sequence[dict]) -> dict | None:
    """The anchor among one problem's summary rows (in the benchmark's solver order): the
    first that :func:`completed` in a positive median time, or ``None``."""
    for row in rows:
        time_s = row.get("time_s")
        if completed(row["status"]) and isinstance(time_s, (int, float)) and time_s > 0:
            return row
    return None


def _add_dual_gaps(rows: list[dict]) -> None:
    """Give each row with a ``dual`` value (a maximised dual objective) but no ``dual_gap``
    the gap to the best dual any solver reached on the same problem in this benchmark."""
    best: dict[str, float] = {}
    for row in rows:
        if isinstance(row.get("dual"), float):
            best[row["problem"]] = max(best.get(row["problem"], -math.inf), row["dual"])
    for row in rows:
        if isinstance(row.get("dual"), float) and row.get("dual_gap") is None:
            row["dual_gap"] = best[row["problem"]] - row["dual"]


def main_metric(row: dict) -> str | None:
    """The summary column shown as the "metric" of a row: ``kkt``, ``f_gap``, ``residual``,
    ``grad_norm``, ``error``, ``fun``, whichever comes first, else the first measure."""
    for name in _MAIN_METRICS:
        if row.get(name) is not None:
            return name
    for key, value in row.items():
        if key not in SUMMARY_COLUMNS and not key.startswith("count_") and value is not None:
            return key
    return None


@dataclass(frozen=True)
class ProblemBlock:
    """One problem's part of the summary: its name, its anchor solver (``None`` when no
    solver completed) and its rows that ran (skipped pairs left out), in solver order."""

    problem: str
    anchor: str | None
    rows: list[dict]


def problem_blocks(rows: Sequence[dict]) -> tuple[list[ProblemBlock], list[dict]]:
    """Split summary rows into one :class:`ProblemBlock` per problem (in order of first
    appearance; a problem whose pairs were all skipped gets a block without rows) and the
    skipped rows."""
    by_problem: dict[str, list[dict]] = {}
    for row in rows:
        by_problem.setdefault(row["problem"], []).append(row)
    blocks = []
    for problem, group in by_problem.items():
        anchor = find_anchor(group)
        ran = [row for row in group if row["status"] != SKIPPED]
        blocks.append(ProblemBlock(problem, anchor["solver"] if anchor else None, ran))
    return blocks, [row for row in rows if row["status"] == SKIPPED]


def skip_reasons(rows: Sequence[dict]) -> dict[str, dict[str, list[str]]]:
    """The skipped summary rows grouped by reason (the message), then by solver:
    ``{reason: {solver: [problem, ...]}}``, solvers in the order of ``rows`` (the
    benchmark's), so that one solver's reasons stay together."""
    solver_order = {solver: k for k, solver in enumerate(dict.fromkeys(row["solver"] for row in rows))}
    skipped = sorted((row for row in rows if row["status"] == SKIPPED), key=lambda row: solver_order[row["solver"]])
    reasons: dict[str, dict[str, list[str]]] = {}
    for row in skipped:
        by_solver = reasons.setdefault(str(row.get("message") or ""), {})
        by_solver.setdefault(row["solver"], []).append(row["problem"])
    return reasons


def skipped_line(n_skipped: int) -> str:
    """``"102 incompatible pairs skipped"`` (singular for one)."""
    return f"{n_skipped} incompatible pair{'' if n_skipped == 1 else 's'} skipped"


def block_heading(block: ProblemBlock) -> str:
    """The heading of a problem's block: its name and its anchor solver, or why it has none."""
    if not block.rows:
        return f"{block.problem}  (no solver ran: every pair skipped)"
    if block.anchor is None:
        return f"{block.problem}  (no anchor: no solver completed)"
    return f"{block.problem}  (anchor: {block.anchor})"


def summary_cells(
    rows: Sequence[dict], *, note_width: int | None = 60
) -> tuple[list[str], list[list[str]], list[bool]]:
    """Headers, formatted cells and right-alignment flags of one problem's table: solver,
    status, metric (``name=value``, see :func:`main_metric`), nit, time, ratio, and a note
    (the message) for pairs that did not converge, cut to ``note_width`` characters."""
    headers = ["solver", "status", "metric", "nit", "time", "ratio", "note"]
    body = []
    for row in rows:
        name = main_metric(row)
        metric = f"{name}={fmt_float(row[name])}" if name else ""
        note = "" if row["status"] == "converged" else str(row.get("message") or "")
        if note_width is not None and len(note) > note_width:
            note = note[: note_width - 3] + "..."
        body.append([
            row["solver"], row["status"], metric, fmt_float(row.get("nit")), fmt_time(row.get("time_s")),
            _fmt_ratio(row.get("ratio")), note,
        ])
    return headers, body, [False, False, False, True, True, True, False]


def _fmt_ratio(ratio: float | None) -> str:
    """Two decimals, or two significant digits below 0.01 (a 1000x speed-up is not "0.00")."""
    if ratio is None:
        return ""
    return f"{ratio:.2f}" if ratio >= 0.01 else f"{ratio:.2g}"


def format_summary(rows: Sequence[dict], *, note_width: int | None = 60) -> str:
    """The summary rows as fixed-width terminal text, one block per problem.

    Each block is a heading (:func:`block_heading`) and a table of the solvers that ran on
    the problem (see :func:`summary_cells`); the columns line up across blocks. Skipped
    (incompatible) pairs are only counted, on the last line.
    """
    blocks, skipped = problem_blocks(rows)
    headers, body, right = summary_cells([row for block in blocks for row in block.rows], note_width=note_width)
    lines = text_table(headers, body, right=right).splitlines()
    header, rows_text = lines[:2], iter(lines[2:])
    out = []
    for block in blocks:
        out += ["", block_heading(block)]
        if block.rows:
            out += [*header, *(next(rows_text) for _ in block.rows)]
    if skipped:
        out += ["", f"({skipped_line(len(skipped))}; reasons in summary.csv)"]
    return "\n".join(out[1:])
