"""Running a benchmark's runs on a Dask cluster: ``optkit bench --executor dask``.

Each (problem, solver, repetition) is one Dask task. What travels to a worker is the
resolved spec (the problem's factory, by reference, and its parameters; the solver's option
object): the worker builds the problem itself and keeps the last one built, as the local
runner does, so no large array crosses the network. Runs come back as they finish.

Two scheduler settings make a sweep behave like a benchmark, and are set on the
``LocalCluster`` this module starts (a running cluster named by its address keeps its own):

``distributed.scheduler.allowed-failures = 0``
    A worker that dies mid-run (killed, out of memory, a crash in compiled code) ends that
    run with an ``error`` row naming the lost worker, instead of the run being retried on
    other workers, where it may kill them too.
``distributed.scheduler.worker-saturation = 1.0``
    A worker holds only the run it executes, so a lost worker loses one run, and no run
    waits behind another on a busy worker while a free worker idles. (Dask queues a group of
    tasks on the scheduler only when it has more than twice as many tasks as worker threads;
    a smaller sweep is handed out at once, and a lost worker may take two runs with it.)

To get the same on a running cluster, start its scheduler with these values, e.g. through
the environment: ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0`` and
``DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION=1.0``.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from collections.abc import Iterator

from ._summary import ERROR

__all__ = ["LOST_WORKER", "check_dask", "dask_runs"]

# The message of a run whose worker died under it: such a run is redone by a resumed sweep.
LOST_WORKER = "worker lost"

_LOCAL_SCHEDULER_CONFIG = {
    "distributed.scheduler.allowed-failures": 0,
    "distributed.scheduler.worker-saturation": 1.0,
}
_CONNECT_TIMEOUT = "20s"


def check_dask() -> str | None:
    """``None`` when ``dask.distributed`` imports, else why not (one sentence)."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        return f"executor 'dask' needs dask.distributed ({exc}); install it with pip install 'optkit[dask]'"
    return None


@contextmanager
def _client(scheduler: str | None, workers: int | None):
    """A Client of the cluster at ``scheduler``, or of a new LocalCluster of ``workers`` processes."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=_CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConnectionError(f"could not connect to the Dask scheduler at {scheduler!r}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    # one thread per worker process: runs never share a process, and each worker's BLAS is
    # limited to one thread by Dask's nanny, so the runs of two workers do not compete for cores
    with dask.config.set(_LOCAL_SCHEDULER_CONFIG):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def dask_runs(tasks: list, env: tuple, warmup: bool, *, scheduler: str | None, workers: int | None) -> Iterator:
    """Yield the :class:`~optkit.bench.Run` of each task as it finishes on the cluster.

    Parameters
    ----------
    tasks : list of (ProblemSpec, SolverSpec, int)
    env : tuple
        ``(backend, device, dtype)`` of the problems.
    warmup : bool
        As in :func:`optkit.bench.run_benchmark` (once per pair and worker process).
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``); ``None`` starts a LocalCluster.
    workers : int, optional
        Worker processes of that LocalCluster (default: Dask's, one per core).

    Raises
    ------
    ConnectionError
        When no scheduler answers at ``scheduler``.
    """
    from distributed import KilledWorker, as_completed

    from .bench import Run, _execute

    with _client(scheduler, workers) as client:
        sweep = uuid.uuid4().hex[:8]
        pspecs, sspecs, reps = zip(*tasks)
        # one graph update for the whole sweep: the scheduler sees the group at once and queues
        # it (see worker-saturation above), where tasks submitted one by one go to workers eagerly
        futures = client.map(
            _execute,
            pspecs,
            sspecs,
            reps,
            env=env,
            warmup=warmup,
            key=[f"optkit-run-{sweep}-{k}" for k in range(len(tasks))],
            pure=False,
        )
        task_of = {future.key: task for future, task in zip(futures, tasks)}
        try:
            for future in as_completed(futures):
                try:
                    yield future.result()
                except Exception as exc:  # the task never returned: its worker died, or its result did not arrive
                    pspec, sspec, rep = task_of[future.key]
                    cause = f"{LOST_WORKER}: {exc}" if isinstance(exc, KilledWorker) else f"{type(exc).__name__}: {exc}"
                    yield Run(pspec.label, sspec.label, sspec.solver.options(), rep, ERROR, cause)
        finally:
            client.cancel(futures)
