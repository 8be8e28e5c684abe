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

__all__ = ["RESULT_COLUMNS", "SUMMARY_COLUMNS", "ResultWriter", "read_csv", "read_run_records", "run_key", "write_csv"]

RESULT_COLUMNS = ("problem", "solver", "options", "rep", "iter", "time", "final", "status", "host")
SUMMARY_COLUMNS = (
    "problem", "solver", "options", "status", "statuses", "message", "reps", "n_converged", "nit", "time_s", "ratio", "hosts",
)
_TEXT_COLUMNS = frozenset({"problem", "solver", "options", "status", "statuses", "message", "host", "hosts"})


def _to_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def run_key(problem: str, solver: str, options: dict | str, rep: int) -> tuple[str, str, str, int]:
    """What identifies a run across sweeps: problem and solver specs, the solver's full options
    (as sorted JSON; a string is taken as that JSON already) and the repetition."""
    if not isinstance(options, str):
        options = json.dumps(options, sort_keys=True, default=str)
    return problem, solver, options, int(rep)


def read_run_records(path: str | Path) -> list[dict]:
    """The run records of a runs.jsonl file; a last line cut short by a killed process is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not a JSON record") from None
    return records


class ResultWriter:
    """Appends each finished run to results.csv and runs.jsonl, flushing as it goes.

    A run's rows go to results.csv before its record goes to runs.jsonl: the record marks the
    run as done, so rows of a run cut short by a kill are never taken for a finished run's.

    Parameters
    ----------
    out_dir : Path
    keep : set of run keys, optional
        ``None`` starts both files afresh. Otherwise the runs already in ``out_dir`` whose
        :func:`run_key` is in ``keep`` stay (records and rows) and new runs are appended:
        how an interrupted sweep is resumed.
    """

    def __init__(self, out_dir: Path, *, keep: set | None = None) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.results = out_dir / "results.csv"
        self.runs = out_dir / "runs.jsonl"
        self.columns = list(RESULT_COLUMNS)
        if keep is not None and self.results.exists():
            self._keep_only(keep)
            return
        with open(self.results, "w", newline="") as fh:
            csv.writer(fh).writerow(self.columns)
        self.runs.write_text("")

    def add(self, run: Any) -> None:
        """Append one :class:`optkit.bench.Run`: its rows to results.csv, then its record to runs.jsonl."""
        if run.completed:
            self._add_rows(run)
        record = {k: v for k, v in asdict(run).items() if k != "trace"}
        with open(self.runs, "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")

    def _add_rows(self, run: Any) -> None:
        base = {
            "problem": run.problem, "solver": run.solver,
            "options": json.dumps(run.options, sort_keys=True, default=str), "rep": run.rep, "status": run.status,
            "host": run.host,
        }
        rows = [{**base, **row, "final": False} for row in run.trace]
        rows.append({**base, **run.metrics, "iter": run.nit, "time": run.time_s, "final": True})
        new = [k for row in rows for k in row if k not in self.columns]
        if new:
            self.columns.extend(dict.fromkeys(new))
            self._rewrite(self.columns, self._read_rows())
        with open(self.results, "a", newline="") as fh:
            writer = csv.DictWriter(fh, self.columns)
            writer.writerows({k: _to_cell(v) for k, v in row.items()} for row in rows)

    def _read_rows(self) -> list[list[str]]:
        with open(self.results, newline="") as fh:
            return list(csv.reader(fh))

    def _rewrite(self, columns: list[str], old: list[list[str]]) -> None:
        """Write ``columns`` and the data rows of ``old`` (header first), padded to the new width."""
        tmp = self.results.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            pad = [""] * (len(columns) - len(old[0]))
            writer.writerows(row + pad for row in old[1:])
        os.replace(tmp, self.results)

    def _keep_only(self, keep: set) -> None:
        records = [
            r for r in read_run_records(self.runs) if run_key(r["problem"], r["solver"], r["options"], r["rep"]) in keep
        ]
        tmp = self.runs.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(record, default=str) + "\n" for record in records))
        os.replace(tmp, self.runs)
        old = self._read_rows()
        header = old[0]
        at = [header.index(name) for name in ("problem", "solver", "options", "rep")]
        kept = [row for row in old[1:] if len(row) == len(header) and run_key(*(row[k] for k in at)) in keep]
        # a file written before a column joined RESULT_COLUMNS gains it at the end
        self.columns = header + [name for name in RESULT_COLUMNS if name not in header]
        self._rewrite(self.columns, [header, *kept])

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
