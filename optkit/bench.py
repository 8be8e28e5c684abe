"""Benchmark runner: problems x solvers x repetitions, long-format records and a summary.

:func:`run_benchmark` builds each problem once, runs every solver on it ``repeat``
times (counters reset before every run), skips incompatible pairs with the reason
given by ``solver.check(problem)``, turns a solver that raises into a run with
status ``error``, and goes on. Ctrl-C stops the scheduling; everything finished is
kept on disk, and ``resume=True`` (``optkit bench --resume``) later runs only what is
missing. The runs go one after another in this process, in ``jobs`` local processes
(joblib), or as one task each on a Dask cluster (``executor="dask"``,
:mod:`optkit._dask_executor`), with the same records whichever way they ran.

Files written to ``out_dir`` (all appended and flushed as each run ends, except
``summary.csv`` which is written at the end, also after an interrupt):

``results.csv``
    Long format, one row per recorded trace iteration of every run, with columns
    ``problem, solver, options, rep, iter, time, final, status, host`` followed by the
    union of metric names (in order of first appearance). ``options`` is the JSON of
    the solver's full options; ``time`` is the solver's own clock (seconds, trace
    recording excluded). Each run ends with one extra row with ``final=True``,
    ``iter=nit``, ``time=time_s`` whose metric columns hold the problem's
    ``evaluate(result.x)`` measures, computed the same way for every solver; the
    trace rows (``final=False``) hold the solver's own recorded metrics. ``status`` is
    the run's final status, repeated on its rows, and ``host`` the machine it ran on. When
    a later run brings a new metric name the file is rewritten once with the wider header
    (empty cells for the old rows). A run's rows are written before its record in
    runs.jsonl.
``runs.jsonl``
    One JSON object per run (also skipped and failed ones): ``problem, solver,
    options, rep, status, message, nit, time_s, fun, counters, metrics, host, wall_s``.
``summary.csv``
    One row per (problem, solver) pair: see :func:`summarize`.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import registry
from .backend import has_module
from ._dask_executor import LOST_WORKER, check_dask, dask_runs
from ._records import RESULT_COLUMNS, SUMMARY_COLUMNS, ResultWriter, read_csv, read_run_records, run_key, write_csv
from ._summary import ERROR, INTERRUPTED, SKIPPED, format_summary, main_metric, summarize, summary_cells
from .solver import Solver

__all__ = [
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "Benchmark",
    "ProblemSpec",
    "Run",
    "SolverSpec",
    "SpecError",
    "build_problem",
    "check_backend",
    "format_summary",
    "main_metric",
    "read_csv",
    "resolve_problem",
    "resolve_problems",
    "resolve_solver",
    "run_benchmark",
    "split_solver_list",
    "summarize",
    "summary_cells",
    "write_csv",
]

_WARMUP_ITERS = 2
# the warm-up only has to compile and import: a solver whose first iterations are long (a
# sketched Newton solve) must not spend a second full time limit on it
_WARMUP_SECONDS = 30.0


class SpecError(ValueError):
    """A bad benchmark specification: unknown problem, solver, suite or option, or a malformed spec."""


@dataclass(frozen=True)
class ProblemSpec:
    """A resolved problem spec: the label as given, and the factory with its parameters."""

    label: str
    factory: Callable
    params: dict


@dataclass(frozen=True)
class SolverSpec:
    """A resolved solver spec: the label as given, the validated solver instance and,
    for a spec ``name@target``, the backend and device it runs on (``None``: the benchmark's)."""

    label: str
    solver: Solver
    target: tuple[str, str | None] | None = None


# Targets a solver spec may name after "@": the same problem, moved for that solver only.
_TARGETS = {"numpy": ("numpy", None), "torch": ("torch", "cpu"), "cuda": ("torch", "cuda")}


@dataclass
class Run:
    """The outcome of one run of one solver on one problem.

    ``status`` is the lowercase name of the :class:`~optkit.Status` member, or
    ``"skipped"`` (incompatible pair; the reason is in ``message``) or ``"error"``
    (the solver raised, or the worker running it was lost; the cause is in ``message``).
    ``metrics`` holds the problem's ``evaluate(result.x)`` measures; ``trace`` the solver's
    recorded rows. ``host`` is the machine the run took place on and ``wall_s`` the seconds
    the whole task took there (problem build, warm-up and evaluation included), both taken on
    that machine with its own clock, like ``time_s``.
    """

    problem: str
    solver: str
    options: dict
    rep: int
    status: str
    message: str = ""
    nit: int | None = None
    time_s: float | None = None
    fun: float | None = None
    counters: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    trace: list = field(default_factory=list)
    host: str = ""
    wall_s: float | None = None

    @property
    def completed(self) -> bool:
        """Whether the solver ran and returned a result (any status but skipped/error)."""
        return self.time_s is not None


@dataclass
class Benchmark:
    """What :func:`run_benchmark` returns: every run, the summary rows and where they were written."""

    problems: list[str]
    solvers: list[str]
    runs: list[Run]
    summary: list[dict]
    interrupted: bool = False
    out_dir: Path | None = None

    def table(self) -> str:
        """The summary as a fixed-width terminal table (see :func:`format_summary`)."""
        return format_summary(self.summary)


# ----------------------------------------------------------------------------- specs


def split_solver_list(text: str) -> list[str]:
    """Split ``"cg,pcg:preconditioner=ichol,tol=1e-8,scipy-cg"`` into solver specs.

    A comma-separated piece holding ``=`` but no ``:`` continues the options of the
    spec before it, so options need no quoting.
    """
    specs: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if "=" in piece and ":" not in piece:
            if not specs:
                raise SpecError(f"solver list {text!r}: option {piece!r} comes before any solver name")
            specs[-1] += ("," if ":" in specs[-1] and not specs[-1].endswith(":") else ":") + piece
        else:
            specs.append(piece)
    return specs


def _message(exc: BaseException) -> str:
    # KeyError's str() wraps the message in quotes; the registry's messages are whole sentences.
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def resolve_solver(spec: str, shared_options: dict | None = None) -> SolverSpec:
    """Parse and validate a solver spec ``"name[@target]:key=value,..."``.

    ``shared_options`` apply first and the spec's own options override them. ``@target``
    (``numpy``, ``torch`` or ``cuda``) runs this solver on the problem moved there, so
    that one benchmark compares, e.g., ``scipy-cg`` on numpy with ``cg@cuda``. Raises
    :class:`SpecError` naming the unknown solver, target or option, or the invalid value.
    """
    try:
        name, options = registry.parse_spec(spec, what="solver spec")
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    name, _, target = name.partition("@")
    if target and target not in _TARGETS:
        raise SpecError(f"solver spec {spec!r}: target {target!r} must be one of {', '.join(_TARGETS)}")
    if target:
        check_backend(*_TARGETS[target])
    try:
        cls = registry.SOLVERS.get(name)
        merged = {**(shared_options or {}), **options}
        cls.check_option_names(merged)
        solver = cls(**merged)
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(_message(exc)) from None
    return SolverSpec(spec, solver, _TARGETS.get(target))


def resolve_problem(spec: str, params: dict | None = None) -> ProblemSpec:
    """Parse and validate one problem spec ``"family/name:key=value,..."``; ``params`` override
    the spec's parameters. Raises :class:`SpecError` naming the unknown problem or parameter."""
    try:
        name, spec_params = registry.parse_spec(spec)
        factory = registry.PROBLEMS.get(name)
        merged = {**spec_params, **(params or {})}
        registry.check_params(f"problem {name!r}", factory, merged)
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(_message(exc)) from None
    return ProblemSpec(spec, factory, merged)


def resolve_problems(problems: str | Iterable[str]) -> list[ProblemSpec]:
    """Resolve problem specs and suite names into :class:`ProblemSpec` objects.

    An item without ``:`` that names a suite (and no problem) expands to the suite's
    specs; duplicates are dropped, order is kept. Raises :class:`SpecError`.
    """
    items = [problems] if isinstance(problems, str) else list(problems)
    registry.load_plugins()
    specs: list[str] = []
    for item in items:
        if ":" not in item and item.lower() not in registry.PROBLEMS and item.lower() in registry.SUITES:
            specs.extend(registry.get_suite(item))
        else:
            specs.append(item)
    out = [resolve_problem(spec) for spec in dict.fromkeys(specs)]
    if not out:
        raise SpecError("no problems given")
    return out


def check_backend(backend: str, device: str | None) -> None:
    """Raise :class:`SpecError` unless ``backend``/``device`` is a usable combination."""
    if backend not in ("numpy", "torch"):
        raise SpecError(f"backend must be 'numpy' or 'torch', got {backend!r}")
    if backend == "numpy" and device not in (None, "cpu"):
        raise SpecError(f"device {device!r} needs backend 'torch' (numpy runs on the CPU only)")
    if backend == "torch" and not has_module("torch"):
        raise SpecError("backend 'torch' needs torch, which is not installed (or disabled by OPTKIT_DISABLE_TORCH)")


def build_problem(spec: ProblemSpec, backend: str = "numpy", device: str | None = None, dtype: Any = None):
    """Build the problem of ``spec`` and move it with ``.to`` unless it stays on numpy as is."""
    problem = spec.factory(**spec.params)
    if backend != "numpy" or device not in (None, "cpu") or dtype is not None:
        problem = problem.to(backend, device, dtype)
    return problem


# ----------------------------------------------------------------------------- one run

# The problem last built in this process, on each backend it was asked for (the runner
# goes problem by problem, so each is built once per process and target). Holds the
# exception when building failed.
_CACHE: dict = {}


def _cached_problem(spec: ProblemSpec, env: tuple):
    problem_key = (spec.factory, json.dumps(spec.params, sort_keys=True, default=str))
    key = (problem_key, env)
    if key not in _CACHE:
        if any(cached[0] != problem_key for cached in _CACHE):
            _CACHE.clear()
        try:
            _CACHE[key] = build_problem(spec, *env)
        except Exception as exc:  # reported on every run of this problem
            _CACHE[key] = exc
    return _CACHE[key]


def _scalar(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


# (problem, solver, env) pairs already warmed up in this process.
_WARMED: set = set()


def _warm_up(problem, pspec: ProblemSpec, sspec: SolverSpec, env: tuple) -> None:
    key = (pspec.label, sspec.label, env)
    if key in _WARMED:
        return
    _WARMED.add(key)
    try:
        limit = min(sspec.solver.time_limit or _WARMUP_SECONDS, _WARMUP_SECONDS)
        sspec.solver.replace(max_iter=min(sspec.solver.max_iter, _WARMUP_ITERS), time_limit=limit).solve(problem)
    except Exception:  # the timed run reports the failure
        pass


def _execute(pspec: ProblemSpec, sspec: SolverSpec, rep: int, env: tuple, warmup: bool = False) -> Run:
    """Run ``sspec`` on ``pspec`` once; never raises (failures become the run's status)."""
    start = time.perf_counter()
    run = Run(pspec.label, sspec.label, sspec.solver.options(), rep, ERROR, host=socket.gethostname())
    _execute_into(run, pspec, sspec, env, warmup)
    run.wall_s = time.perf_counter() - start
    return run


def _execute_into(run: Run, pspec: ProblemSpec, sspec: SolverSpec, env: tuple, warmup: bool) -> None:
    """Fill ``run`` with the outcome of one run; never raises."""
    solver = sspec.solver
    if sspec.target is not None:
        env = (*sspec.target, env[2])
    try:
        problem = _cached_problem(pspec, env)
        if isinstance(problem, Exception):
            run.message = f"could not build problem: {type(problem).__name__}: {problem}"
            return
        reason = solver.check(problem)
        if reason is not None:
            run.status, run.message = SKIPPED, reason
            return
        if warmup:
            _warm_up(problem, pspec, sspec, env)
        problem.reset_counters()
        try:
            result = solver.solve(problem)
        except Exception as exc:
            run.message = f"{type(exc).__name__}: {exc}"
            return
        run.status, run.message = result.status.name.lower(), result.message
        run.nit, run.time_s = int(result.nit), float(result.time_s)
        run.fun = _scalar(result.fun)
        run.counters = {k: int(v) for k, v in result.counters.items()}
        run.trace = [{k: _scalar(v) for k, v in row.items()} for row in result.trace]
        try:
            run.metrics = {k: _scalar(v) for k, v in problem.evaluate(result.x, result.extras).items()}
        except Exception as exc:
            run.message += f" (evaluate failed: {type(exc).__name__}: {exc})"
    except KeyboardInterrupt:
        run.status, run.message = INTERRUPTED, "interrupted (Ctrl-C)"


# ----------------------------------------------------------------------------- runner


def run_benchmark(
    problems: str | Iterable[str],
    solvers: str | Iterable[str] | None = None,
    *,
    solver_options: dict | None = None,
    repeat: int = 1,
    time_limit: float | None = None,
    backend: str = "numpy",
    device: str | None = None,
    dtype: Any = None,
    jobs: int = 1,
    executor: str = "local",
    scheduler: str | None = None,
    workers: int | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    across_hosts: bool = False,
    progress: bool = True,
    warmup: bool = True,
) -> Benchmark:
    """Run every solver on every problem ``repeat`` times.

    Parameters
    ----------
    problems : str or iterable of str
        Problem specs (``"linear/poisson-2d:n=512"``) and/or suite names (``"demo"``).
    solvers : str or iterable of str, optional
        Solver specs (``"pcg:preconditioner=ichol,tol=1e-8"``); a string is split with
        :func:`split_solver_list`. Default: every registered solver. The first one
        (that runs on a problem) is the anchor of the summary's ``ratio``.
    solver_options : dict, optional
        Options given to every solver (``{"tol": 1e-8, "max_iter": 500}``); a spec's own
        options take precedence.
    repeat : int
        Repetitions of each pair.
    time_limit : float, optional
        Per-run limit in seconds, passed to the solvers as their ``time_limit`` option.
    backend, device, dtype :
        Where the problems live; a problem is moved with ``.to(backend, device, dtype)``
        unless it stays on numpy with its own dtype. Solvers that do not support the
        backend are skipped with the reason.
    jobs : int
        With the ``"local"`` executor: parallel processes (joblib/loky); results are recorded
        as each run finishes. Each worker builds the problems it needs once. ``1`` runs in
        this process.
    executor : {"local", "dask"}
        ``"dask"`` runs each (problem, solver, repetition) as one task on a Dask cluster
        (see :mod:`optkit._dask_executor`): the one at ``scheduler``, or a new LocalCluster
        of ``workers`` processes on this machine.
    scheduler : str, optional
        Address of a running Dask scheduler, e.g. ``"tcp://10.0.0.5:8786"`` (executor "dask").
    workers : int, optional
        Worker processes of the LocalCluster (executor "dask", no ``scheduler``); default
        one per core.
    out_dir : str or Path, optional
        Where ``results.csv``, ``runs.jsonl`` and ``summary.csv`` go (see the module
        docstring); nothing is written when ``None``.
    resume : bool
        Keep the runs already recorded in ``out_dir`` and run only the missing ones: those
        never recorded, those cut short by an interrupt, and those whose worker was lost. A
        run is the same when its problem spec, solver spec, full solver options and
        repetition are.
    across_hosts : bool
        Compare times measured on different machines in the summary's ``ratio`` (see
        :func:`summarize`); by default each host is compared with the anchor on the same host.
    progress : bool
        Show a tqdm bar on stderr (only when stderr is a terminal).
    warmup : bool
        Before the first timed run of each pair in each process, do one untimed,
        unrecorded run capped at 2 iterations, so that JIT compilation (numba, torch)
        and lazy imports do not land in the first repetition's time.

    Returns
    -------
    Benchmark
        ``interrupted`` is True when Ctrl-C stopped it; what finished is kept.

    Raises
    ------
    SpecError
        Before any run, for an unknown problem, suite, solver or option, or an invalid value.
    """
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise SpecError(f"repeat must be a positive integer, got {repeat!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs == 0:
        raise SpecError(f"jobs must be a non-zero integer (negative counts from the number of CPUs), got {jobs!r}")
    _check_executor(executor, jobs, scheduler, workers)
    if resume and out_dir is None:
        raise SpecError("resume needs the output directory of the sweep to resume (out_dir)")
    check_backend(backend, device)
    pspecs = resolve_problems(problems)
    if solvers is None:
        solvers = registry.list_solvers()
    elif isinstance(solvers, str):
        solvers = split_solver_list(solvers)
    shared = dict(solver_options or {})
    if time_limit is not None:
        shared["time_limit"] = time_limit
    sspecs = [resolve_solver(s, shared) for s in solvers]
    labels = [s.label for s in sspecs]
    if not sspecs:
        raise SpecError("no solvers given")
    if len(set(labels)) != len(labels):
        raise SpecError(f"solver specs must be distinct, got {labels}")

    env = (backend, device, dtype)
    tasks = [(p, s, rep) for p in pspecs for rep in range(repeat) for s in sspecs]
    bench = Benchmark([p.label for p in pspecs], labels, [], [], out_dir=Path(out_dir) if out_dir else None)
    writer = None
    if resume:
        recorded = _recorded_runs(Path(out_dir))
        keys = [run_key(p.label, s.label, s.solver.options(), rep) for p, s, rep in tasks]
        bench.runs = [recorded[key] for key in keys if key in recorded]
        tasks = [task for task, key in zip(tasks, keys) if key not in recorded]
        writer = ResultWriter(Path(out_dir), keep=set(recorded))
    elif out_dir is not None:
        writer = ResultWriter(Path(out_dir))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="bench", unit="run", file=sys.stderr, disable=None if progress else True)
    try:
        for run in _schedule(tasks, env, jobs, warmup, executor, scheduler, workers):
            bench.runs.append(run)
            if writer is not None:
                writer.add(run)
            bar.set_postfix_str(f"{run.problem} {run.solver}: {run.status}", refresh=False)
            bar.update(1)
            if run.status == INTERRUPTED:
                bench.interrupted = True
                break
    except KeyboardInterrupt:
        bench.interrupted = True
    finally:
        bar.close()
        _CACHE.clear()
        _WARMED.clear()
        bench.summary = summarize(bench.runs, bench.problems, bench.solvers, across_hosts=across_hosts)
        if writer is not None:
            writer.write_summary(bench.summary)
    return bench


def _check_executor(executor: str, jobs: int, scheduler: str | None, workers: int | None) -> None:
    if executor not in ("local", "dask"):
        raise SpecError(f"executor must be 'local' or 'dask', got {executor!r}")
    if executor == "local":
        if scheduler is not None or workers is not None:
            raise SpecError("scheduler and workers need executor 'dask' (the local executor takes jobs)")
        return
    if jobs != 1:
        raise SpecError("jobs is for the local executor; with executor 'dask' give workers or scheduler")
    if scheduler is not None and workers is not None:
        raise SpecError("give either scheduler (a running cluster) or workers (a new LocalCluster), not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SpecError(f"workers must be a positive integer, got {workers!r}")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise SpecError(f"scheduler must be an address such as 'tcp://10.0.0.5:8786', got {scheduler!r}")
    reason = check_dask()
    if reason is not None:
        raise SpecError(reason)


def _recorded_runs(out_dir: Path) -> dict:
    """The runs recorded in ``out_dir/runs.jsonl`` that a resumed sweep keeps, by :func:`run_key`:
    all but those cut short by an interrupt and those whose worker was lost."""
    fields = set(Run.__dataclass_fields__)
    kept = {}
    for record in read_run_records(out_dir / "runs.jsonl"):
        lost = record["status"] == ERROR and str(record.get("message", "")).startswith(LOST_WORKER)
        if record["status"] == INTERRUPTED or lost:
            continue
        run = Run(**{k: v for k, v in record.items() if k in fields})
        kept[run_key(run.problem, run.solver, run.options, run.rep)] = run
    return kept


def _schedule(tasks: list, env: tuple, jobs: int, warmup: bool, executor: str, scheduler, workers):
    """Yield the runs of ``tasks`` as they finish (in order when ``jobs == 1``, locally)."""
    if executor == "dask":
        try:
            yield from dask_runs(tasks, env, warmup, scheduler=scheduler, workers=workers)
        except ConnectionError as exc:
            raise SpecError(str(exc)) from None
        return
    if jobs == 1:
        for pspec, sspec, rep in tasks:
            yield _execute(pspec, sspec, rep, env, warmup)
        return
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=jobs, return_as="generator_unordered")
    outputs = parallel(delayed(_execute)(pspec, sspec, rep, env, warmup) for pspec, sspec, rep in tasks)
    try:
        yield from outputs
    finally:
        outputs.close()
