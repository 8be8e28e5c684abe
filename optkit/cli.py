"""The ``optkit`` command: ``list``, ``solve``, ``bench``, ``report``, ``data``.

Every command is a thin layer over the library (:mod:`optkit.registry`,
:mod:`optkit.bench`, :mod:`optkit.report`, :mod:`optkit.data`). A bad name, option or
``key=value`` prints one line to stderr and exits with code 2; see ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from . import registry
from ._table import fmt_float, fmt_time, text_table
from .bench import (
    SpecError,
    build_problem,
    check_backend,
    resolve_problem,
    resolve_solver,
    run_benchmark,
    split_solver_list,
)

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Failure(Exception):
    """A run-time failure reported in one line with exit code 1."""


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["tol=1e-8", "max_iter=50"]`` -> ``{"tol": 1e-08, "max_iter": 50}`` (values as in ``parse_value``)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"{flag} {item!r} is not of the form key=value")
        out[key.strip()] = registry.parse_value(value.strip())
    return out


def _jsonable(obj: Any) -> Any:
    """``obj`` with NaN/inf as ``None`` and unknown objects as strings, so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    try:
        return _jsonable(float(obj))
    except (TypeError, ValueError):
        return str(obj)


def _first_line(doc: str | None) -> str:
    return (inspect.cleandoc(doc).splitlines() or [""])[0] if doc else ""


# ----------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    what = [args.what] if args.what else ["solvers", "problems", "suites"]
    blocks = []
    if "solvers" in what:
        rows = []
        for name in registry.list_solvers():
            cls = registry.SOLVERS.get(name)
            doc = cls.__doc__ or ""
            if doc.startswith(cls.__name__ + "("):  # the signature dataclasses write when there is no docstring
                doc = ""
            rows.append([name, ",".join(sorted(getattr(cls, "backends", ()))), _first_line(doc).replace("``", "")])
        blocks.append(("solvers", ["name", "backends", "description"], rows))
    if "problems" in what:
        rows = []
        for name in registry.list_problems():
            factory = registry.PROBLEMS.get(name)
            try:
                params = ", ".join(
                    p.name if p.default is p.empty else f"{p.name}={p.default!r}"
                    for p in inspect.signature(factory).parameters.values()
                    if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                )
            except (TypeError, ValueError):
                params = ""
            rows.append([name, params, _first_line(factory.__doc__).replace("``", "")])
        blocks.append(("problems", ["name", "parameters", "description"], rows))
    if "suites" in what:
        rows = [[name, " ".join(registry.get_suite(name))] for name in registry.list_suites()]
        blocks.append(("suites", ["name", "problems"], rows))
    out = []
    for title, headers, rows in blocks:
        out.append(f"{title} ({len(rows)}):")
        out.append(text_table(headers, rows) if rows else "  (none registered)")
        out.append("")
    print("\n".join(out).rstrip())
    return 0


# ----------------------------------------------------------------------------- solve


def cmd_solve(args: argparse.Namespace) -> int:
    check_backend(args.backend, args.device)
    pspec = resolve_problem(args.problem, parse_assignments(args.param, "--param"))
    try:
        name, spec_options = registry.parse_spec(args.solver)
    except ValueError as exc:
        raise SpecError(str(exc).replace("problem spec", "solver spec", 1)) from None
    options = {**spec_options, **parse_assignments(args.option, "--option")}
    if args.time_limit is not None:
        options["time_limit"] = args.time_limit
    solver = resolve_solver(name, options).solver
    try:
        problem = build_problem(pspec, args.backend, args.device, args.dtype)
    except (TypeError, ValueError, ImportError, FileNotFoundError) as exc:
        raise SpecError(f"could not build problem {args.problem!r}: {exc}") from None
    reason = solver.check(problem)
    if reason is not None:
        raise SpecError(reason)
    if args.warmup:  # an untimed 2-iteration run, so JIT compilation is not timed
        try:
            solver.replace(max_iter=min(solver.max_iter, 2)).solve(problem)
        except Exception:
            pass
    problem.reset_counters()
    try:
        result = solver.solve(problem)
    except Exception as exc:
        raise _Failure(f"solver {solver.name!r} failed: {type(exc).__name__}: {exc}") from None
    measures = problem.evaluate(result.x, result.extras)
    record = {
        "problem": registry.parse_spec(pspec.label)[0],
        "params": pspec.params,
        "solver": solver.name,
        "options": solver.options(),
        "backend": problem.backend,
        "device": problem.device,
        "n": problem.n,
        "status": result.status.name.lower(),
        "success": result.success,
        "message": result.message,
        "nit": result.nit,
        "time_s": result.time_s,
        "fun": result.fun,
        "counters": dict(result.counters),
        "metrics": dict(measures),
        "solver_metrics": dict(result.metrics),
    }
    if args.json:
        print(json.dumps(_jsonable(record)))
        return 0
    lines = [
        ("problem", f"{problem.name}  ({', '.join(f'{k}={v}' for k, v in pspec.params.items()) or 'defaults'}; "
                    f"{problem.n} unknowns, {problem.backend} on {problem.device})"),
        ("solver", f"{solver.name}  ({', '.join(f'{k}={v}' for k, v in solver.options().items())})"),
        ("status", f"{record['status']}: {result.message}"),
        ("nit", str(result.nit)),
        ("time", fmt_time(result.time_s)),
    ]
    if result.fun is not None:
        lines.append(("fun", fmt_float(result.fun, 6)))
    lines += [(k, fmt_float(v, 4)) for k, v in measures.items()]
    if result.counters:
        lines.append(("counters", ", ".join(f"{k}={v}" for k, v in result.counters.items())))
    width = max(len(k) for k, _ in lines)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in lines))
    return 0


# ----------------------------------------------------------------------------- bench, report


def cmd_bench(args: argparse.Namespace) -> int:
    problems = list(args.problems) + list(args.suite or [])
    if not problems:
        raise SpecError("give at least one problem spec or --suite NAME")
    solvers = [s for text in args.solvers for s in split_solver_list(text)] if args.solvers else None
    bench = run_benchmark(
        problems,
        solvers,
        solver_options=parse_assignments(args.option, "--option"),
        repeat=args.repeat,
        time_limit=args.time_limit,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        jobs=args.jobs,
        executor=args.executor,
        scheduler=args.scheduler,
        workers=args.workers,
        out_dir=args.out,
        resume=args.resume,
        across_hosts=args.compare_across_hosts,
        progress=not args.no_progress,
        warmup=not args.no_warmup,
    )
    if args.json:
        for row in bench.summary:
            print(json.dumps(_jsonable({**row, "options": json.loads(row["options"])})), flush=True)
    else:
        print(bench.table())
    print(f"optkit: wrote results.csv, runs.jsonl, summary.csv to {args.out}", file=sys.stderr)
    if bench.interrupted:
        print(f"optkit: interrupted; kept the {len(bench.runs)} runs that finished", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    try:
        index = make_report(args.dir)
    except FileNotFoundError as exc:
        raise SpecError(str(exc)) from None
    print(index)
    return 0


# ----------------------------------------------------------------------------- data


def cmd_data(args: argparse.Namespace) -> int:
    from .data import data_dir, list_datasets

    if args.action == "path":
        print(data_dir())
        return 0
    rows = [
        [ds.name, "present" if path else "missing", str(path) if path else " | ".join(ds.files), ds.description]
        for ds, path in list_datasets()
    ]
    print(f"data directory: {data_dir()}")
    print(text_table(["name", "state", "file", "description"], rows) if rows else "(no datasets registered)")
    return 0


# ----------------------------------------------------------------------------- parser


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("numpy", "torch"), default="numpy", help="array backend (default numpy)")
    p.add_argument("--device", default=None, help="torch device: cpu, cuda, cuda:1 ... (needs --backend torch)")
    p.add_argument("--dtype", default=None, help="e.g. float32; default keeps the problem's precision")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``optkit`` command."""
    parser = argparse.ArgumentParser(prog="optkit", description="optkit: optimization solvers on one problem suite.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list registered solvers, problems and suites")
    p.add_argument("what", nargs="?", choices=("solvers", "problems", "suites"), help="only this kind")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("solve", help="solve one problem with one solver")
    p.add_argument("problem", help='problem spec, e.g. "linear/poisson-2d:n=64"')
    p.add_argument("--solver", required=True, help='solver name or spec, e.g. "cg" or "cg:tol=1e-8"')
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="solver option (repeatable)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="problem parameter (repeatable)")
    p.add_argument("--time-limit", type=float, default=None, metavar="S", help="time limit in seconds")
    _add_backend(p)
    p.add_argument("--warmup", action="store_true", help="do an untimed 2-iteration run first (JIT compilation)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser("bench", help="benchmark solvers on problems; writes CSVs and prints a table")
    p.add_argument("problems", nargs="*", metavar="PROBLEM", help="problem specs or suite names")
    p.add_argument("--suite", action="append", metavar="NAME", help="add the problems of a suite (repeatable)")
    p.add_argument(
        "--solvers", action="append", metavar="LIST",
        help='comma-separated solver specs, e.g. "cg,pcg:preconditioner=ichol,tol=1e-8" (default: all solvers)',
    )
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="option for every solver (repeatable)")
    p.add_argument("--repeat", type=int, default=1, metavar="K", help="repetitions of each run (default 1)")
    p.add_argument("--time-limit", type=float, default=None, metavar="S", help="per-run time limit in seconds")
    _add_backend(p)
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="parallel processes (default 1)")
    p.add_argument("--executor", choices=("local", "dask"), default="local",
                   help="local: this machine (--jobs); dask: one task per run on a Dask cluster")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786 (--executor dask)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of a LocalCluster on this machine (--executor dask; default one per core)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), metavar="DIR",
                   help="output directory (default bench-results)")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already recorded in --out and run only the missing ones")
    p.add_argument("--compare-across-hosts", action="store_true",
                   help="let the summary's ratio compare times measured on different machines")
    p.add_argument("--json", action="store_true", help="one JSON object per summary row on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the untimed 2-iteration warm-up run of each pair (JIT compilation then gets timed)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="write report.md, figures and index.html from a bench directory")
    p.add_argument("dir", type=Path, help="directory written by optkit bench --out")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("data", help="the data directory and the registered datasets")
    p.add_argument("action", choices=("path", "list"), help="path: print the data directory; list: datasets")
    p.set_defaults(func=cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``optkit`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"optkit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _Failure as exc:
        print(f"optkit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("optkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
