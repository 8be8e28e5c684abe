"""One benchmark sweep run twice, in this process and on a Dask LocalCluster: wall time and
scheduling overhead per task.

Both sweeps run the same (problem, solver, repetition) tasks with the same options; the
script prints one table and how many runs agree (same status and iteration count: runs
that hit the time limit may stop at another iteration).

``overhead/task`` is ``(workers x wall - sum of task times) / tasks``: the time a worker
spent not running a task (cluster start-up, scheduling, moving specs and results, writing the
records), per task. A task's time (``wall_s`` in runs.jsonl) is measured on its worker and
includes building the problem and the warm-up run.

Run (one BLAS thread everywhere, as Dask gives its workers)::

    OMP_NUM_THREADS=1 python examples/dask_sweep.py cutest-eq-all \\
        --solvers alm-newton,alm-sketch,scipy-trust-constr,scipy-slsqp --time-limit 5 --workers 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from optkit._table import text_table
from optkit.bench import run_benchmark


def timed_sweep(out: Path, **kwargs):
    start = time.perf_counter()
    bench = run_benchmark(out_dir=out, progress=True, **kwargs)
    return bench, time.perf_counter() - start


def local_cluster_start_s(workers: int) -> float:
    """Seconds to start (and close) an empty LocalCluster of ``workers`` processes."""
    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster):
        ready = time.perf_counter() - start
    return ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("problems", nargs="+", help="problem specs or suite names")
    parser.add_argument("--solvers", required=True)
    parser.add_argument("--time-limit", type=float, default=5.0)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("dask-sweep"))
    args = parser.parse_args()

    common = {
        "problems": args.problems,
        "solvers": args.solvers,
        "solver_options": {"tol": args.tol},
        "time_limit": args.time_limit,
    }
    serial, serial_wall = timed_sweep(args.out / "serial", **common)
    on_dask, dask_wall = timed_sweep(args.out / "dask", executor="dask", workers=args.workers, **common)
    start_s = local_cluster_start_s(args.workers)

    rows = []
    for name, bench, wall, workers in (("serial", serial, serial_wall, 1), ("dask", on_dask, dask_wall, args.workers)):
        busy = sum(run.wall_s or 0.0 for run in bench.runs)
        tasks = len(bench.runs)
        rows.append(
            [
                name,
                str(workers),
                str(tasks),
                f"{wall:.1f}",
                f"{busy:.1f}",
                f"{1e3 * (workers * wall - busy) / tasks:.1f}",
                f"{serial_wall / wall:.2f}",
            ]
        )
    print(text_table(["executor", "workers", "tasks", "wall s", "task s", "overhead/task ms", "speed-up"], rows))
    print(f"LocalCluster start-up ({args.workers} workers, measured apart): {start_s:.1f} s")

    outcome = {(run.problem, run.solver, run.rep): (run.status, run.nit) for run in serial.runs}
    same = sum(outcome.get((run.problem, run.solver, run.rep)) == (run.status, run.nit) for run in on_dask.runs)
    lost = sum(run.message.startswith("worker lost") for run in on_dask.runs)
    print(f"runs with the same status and iteration count: {same}/{len(serial.runs)}; workers lost: {lost}")


if __name__ == "__main__":
    main()
