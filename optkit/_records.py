"""Benchmark records on disk: the appending writer of results.csv / runs.jsonl, and CSV helpers.

The formats are described in :mod:`optkit.bench`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from .registry import parse_value

__all__ = ["RESULT_COLUMNS", "SUMMARY_COLUMNS", "ResultWriter", "read_csv", "write_csv"]

RESULT_COLUMNS = ("problem", "solver", "options", "rep", "iter", "time", "final", "status")
SUMMARY_COLUMNS = (
    "problem", "solver", "options", "status", "statuses", "message", "reps", "n_converged", "nit", "time_s", "ratio",
)
_TEXT_COLUMNS = frozenset({"problem", "solver", "options", "status", "statuses", "message"})


def _to_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


class ResultWriter:
    """Appends each finished run to results.csv and runs.jsonl, flushing as it goes."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.results = out_dir / "results.csv"
        self.runs = out_dir / "runs.jsonl"
        self.columns = list(RESULT_COLUMNS)
        with open(self.results, "w", newline="") as fh:
            csv.writer(fh).writerow(self.columns)
        self.runs.write_text("")

    def add(self, run: Any) -> None:
        """Append one :class:`optkit.bench.Run`: its record to runs.jsonl, its rows to results.csv."""
        record = {k: v for k, v in asdict(run).items() if k != "trace"}
        with open(self.runs, "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
        if not run.completed:
            return
        base = {
            "problem": run.problem, "solver": run.solver,
            "options": json.dumps(run.options, sort_keys=True, default=str), "rep": run.rep, "status": run.status,
        }
        rows = [{**base, **row, "final": False} for row in run.trace]
        rows.append({**base, **run.metrics, "iter": run.nit, "time": run.time_s, "final": True})
        new = [k for row in rows for k in row if k not in self.columns]
        if new:
            self.columns.extend(dict.fromkeys(new))
            self._rewrite_header()
        with open(self.results, "a", newline="") as fh:
            writer = csv.DictWriter(fh, self.columns)
            writer.writerows({k: _to_cell(v) for k, v in row.items()} for row in rows)

    def _rewrite_header(self) -> None:
        with open(self.results, newline="") as fh:
            old = list(csv.reader(fh))
        tmp = self.results.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.columns)
            pad = [""] * (len(self.columns) - len(old[0]))
            writer.writerows(row + pad for row in old[1:])
        os.replace(tmp, self.results)

    def write_summary(self, summary: list[dict]) -> None:
        write_csv(self.out_dir / "summary.csv", summary, SUMMARY_COLUMNS)


def write_csv(path: Path, rows: Sequence[dict], first: Sequence[str] = ()) -> None:
    """Write dict rows to ``path``: columns ``first`` then the other keys in order of appearance."""
    columns = list(dict.fromkeys([*first, *(k for row in rows for k in row)]))
    tmp = Path(path).with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows({k: _to_cell(v) for k, v in row.items()} for row in rows)
    os.replace(tmp, path)


def read_csv(path: str | Path) -> list[dict]:
    """Read a results or summary CSV back: numbers as int/float, ``True``/``False`` as bool,
    empty cells as ``None``; text columns (problem, solver, options, status, message) stay strings."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        parsed = {}
        for key, text in row.items():
            if key in _TEXT_COLUMNS:
                parsed[key] = text
            elif text == "":
                parsed[key] = None
            elif text in ("True", "False"):
                parsed[key] = text == "True"
            else:
                parsed[key] = parse_value(text)
        out.append(parsed)
    return out
