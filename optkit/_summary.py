"""The benchmark summary: one row per (problem, solver) pair, and its terminal table.

Used by :mod:`optkit.bench` (which re-exports the public names) and the command line.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import TYPE_CHECKING, Any, Sequence

from ._records import SUMMARY_COLUMNS
from ._table import fmt_float, fmt_time, text_table

if TYPE_CHECKING:
    from .bench import Run

__all__ = ["ERROR", "INTERRUPTED", "SKIPPED", "format_summary", "main_metric", "summarize", "summary_cells"]

# Status names that are not members of optkit.Status.
SKIPPED, ERROR, INTERRUPTED = "skipped", "error", "user_stopped"
# Preferred "main" metrics of the terminal table, in order; otherwise the first measure.
_MAIN_METRICS = ("kkt", "f_gap", "residual", "grad_norm", "error", "fun")

def _severity(status: str) -> int:
    return {"converged": 0, SKIPPED: 1, INTERRUPTED: 3, ERROR: 4}.get(status, 2)


def _median(values: list) -> Any:
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not values:
        return None
    med = statistics.median(values)
    return int(med) if all(isinstance(v, int) for v in values) and med == int(med) else float(med)


def summarize(runs: Sequence[Run], problems: Sequence[str], solvers: Sequence[str]) -> list[dict]:
    """One summary row per (problem, solver) pair that ran, in the order of the arguments.

    Columns: ``problem, solver, options`` (JSON), ``status`` (the worst over the reps:
    converged < skipped < a solver failure < user_stopped < error), ``statuses`` (each
    rep's, joined by ``;``), ``message`` (of the worst rep), ``reps``, ``n_converged``,
    and, as medians over the reps that ran: ``nit``, ``time_s``, the ``evaluate``
    measures under their own names and the counters as ``count_<name>``; where the measures
    hold a ``dual`` objective (OT) but no ``dual_gap``, ``dual_gap`` is the gap to the best
    dual reached on that problem by any solver of the benchmark. ``ratio`` is
    this pair's median ``time_s`` over that of the anchor: the first solver in
    ``solvers`` that ran on the same problem (normally the first solver; a later one
    when it was skipped or failed). It is exactly 1 for the anchor, empty without a time.
    """
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.problem, run.solver), []).append(run)
    rows = []
    for problem in problems:
        anchor = None  # (solver, median time) of the first solver that ran on this problem
        for solver in solvers:
            group = sorted(groups.get((problem, solver), []), key=lambda r: r.rep)
            if not group:
                continue
            worst = max(group, key=lambda r: _severity(r.status))
            done = [r for r in group if r.completed]
            time_s = _median([r.time_s for r in done])
            if anchor is None and time_s is not None and time_s > 0:
                anchor = (solver, time_s)
            if time_s is None or anchor is None:
                ratio = None
            else:
                ratio = 1.0 if anchor[0] == solver else time_s / anchor[1]
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
                "time_s": time_s,
                "ratio": ratio,
            }
            for key in dict.fromkeys(k for r in done for k in r.metrics):
                row[key] = _median([r.metrics.get(key) for r in done])
            for key in dict.fromkeys(k for r in done for k in r.counters):
                row[f"count_{key}"] = _median([r.counters.get(key) for r in done])
            rows.append(row)
    _add_dual_gaps(rows)
    return rows


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


def summary_cells(
    rows: Sequence[dict], *, note_width: int | None = 60
) -> tuple[list[str], list[list[str]], list[bool]]:
    """Headers, formatted cells and right-alignment flags of the summary table: problem, solver,
    status, metric (``name=value``, see :func:`main_metric`), nit, time, ratio, and a note
    (the message) for pairs that did not converge."""
    headers = ["problem", "solver", "status", "metric", "nit", "time", "ratio", "note"]
    body = []
    for row in rows:
        name = main_metric(row)
        metric = f"{name}={fmt_float(row[name])}" if name else ""
        note = "" if row["status"] == "converged" else str(row.get("message") or "")
        if note_width is not None and len(note) > note_width:
            note = note[: note_width - 3] + "..."
        ratio = row.get("ratio")
        body.append([
            row["problem"], row["solver"], row["status"], metric, fmt_float(row.get("nit")),
            fmt_time(row.get("time_s")), _fmt_ratio(ratio), note,
        ])
    return headers, body, [False, False, False, False, True, True, True, False]


def _fmt_ratio(ratio: float | None) -> str:
    """Two decimals, or two significant digits below 0.01 (a 1000x speed-up is not "0.00")."""
    if ratio is None:
        return ""
    return f"{ratio:.2f}" if ratio >= 0.01 else f"{ratio:.2g}"


def format_summary(rows: Sequence[dict], *, note_width: int | None = 60, show_skipped: bool = False) -> str:
    """The summary rows as a fixed-width terminal table (see :func:`summary_cells`).

    Skipped (incompatible) pairs are left out unless ``show_skipped``; a last line counts them.
    """
    shown = [row for row in rows if show_skipped or row["status"] != SKIPPED]
    headers, body, right = summary_cells(shown, note_width=note_width)
    table = text_table(headers, body, right=right)
    hidden = len(rows) - len(shown)
    if hidden:
        table += f"\n({hidden} incompatible problem-solver pairs skipped; reasons in summary.csv)"
    return table
