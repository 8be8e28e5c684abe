"""Sinkhorn-Newton-Sparse (``sns``) against RegOT's compiled solvers, to the same L1 marginal error.

Runs ``sns`` and every ``regot-*`` wrapper through ``optkit.bench`` (median time over the
repeats, final L1 marginal error, status) on ``ot-paper``'s cases: random assignment
n = 500 and MNIST with L1 and L2 costs, all at eta = 1200. The MNIST rows need the data
(``OPTKIT_DATA``) and are left out, with a note, without it. Each RegOT run is calibrated
to stop at the first iterate meeting ``tol`` and timed alone (see
``solvers/baselines/regot_solvers.py``: the calibration runs are not timed, which favours
RegOT). ``--small`` runs two seconds-sized problems instead.

Threads: ``--threads`` (default 1) sets ``OMP_NUM_THREADS`` (RegOT's OpenMP),
``NUMBA_NUM_THREADS`` and the BLAS thread counts before anything is imported, so both sides
run with the same number of threads. On a machine shared with other work, RegOT's OpenMP
threads spin against the load (its SSNS ran 30x slower with 2 threads than with 1 on a loaded
2-core machine): compare at 1 thread there.

Run: ``python examples/ot_vs_regot.py [--small] [--repeat 3] [--tol 1e-9] [--max-iter 1000]
[--threads 1] [--solvers regot-ssns,...] [--problems "SPEC;SPEC"]``.
"""

import argparse
import os
import sys

if __name__ == "__main__":  # before numpy, numba and regot read them
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
    for _var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads

import optkit
import problems  # noqa: F401  (registers the problems and suites)
from optkit.backend import has_module
from optkit.bench import format_summary, run_benchmark

# RegOT's entropic solvers as registered (regot-qrot-* solve another problem), SSNS first
REGOT = sorted(
    (name for name in optkit.list_solvers() if name.startswith("regot-") and not name.startswith("regot-qrot-")),
    key=lambda name: name != "regot-ssns",
)
PAPER = ["ot/random-assignment:n=500,eta=1200", "ot/mnist:cost=l1,eta=1200", "ot/mnist:cost=l2,eta=1200"]
SMALL = ["ot/random-assignment:n=100,eta=100", "ot/digits:cost=l2,eta=100"]


def mnist_available() -> bool:
    try:
        optkit.get_problem("ot/mnist:cost=l2,eta=1200")
    except FileNotFoundError:
        return False
    return True


def main(small: bool, repeat: int, tol: float, max_iter: int, regot: list, problem_specs: list | None) -> None:
    problem_specs = problem_specs or (SMALL if small else PAPER)
    if not small and not mnist_available():
        print("MNIST rows left out: no MNIST data (set OPTKIT_DATA to the folder holding mnist/)")
        problem_specs = [spec for spec in problem_specs if not spec.startswith("ot/mnist")]
    solvers = ["sns"] + (regot if has_module("regot") else [])
    if len(solvers) == 1:
        print("regot is not installed (pip install 'optkit[regot]'): sns alone")
    # sns's own max_iter (Newton steps) is left at its default; the RegOT ones get max_iter
    specs = ["sns"] + [f"{name}:max_iter={max_iter}" for name in solvers[1:]]
    bench = run_benchmark(problem_specs, specs, solver_options={"tol": tol}, repeat=repeat, progress=False)
    print(f"threads: {os.environ.get('OMP_NUM_THREADS', 'unset')}; tol {tol:g} (L1 marginal error)")
    print(format_summary(bench.summary))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="two small problems (seconds)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per pair (the table gives the median time)")
    parser.add_argument("--tol", type=float, default=1e-9, help="L1 marginal error to reach")
    parser.add_argument("--max-iter", type=int, default=1000, help="RegOT iterations per run")
    parser.add_argument("--threads", type=int, default=1, help="threads for RegOT, numba and BLAS (default 1)")
    parser.add_argument("--solvers", help="comma-separated regot-* solvers against sns (default: all of them)")
    parser.add_argument("--problems", help="problem specs separated by semicolons (default: ot-paper's first three)")
    args = parser.parse_args()
    regot = args.solvers.split(",") if args.solvers else REGOT
    unknown = sorted(set(regot) - set(REGOT))
    if unknown:
        parser.error(f"--solvers: unknown {unknown}; choose from {REGOT}")
    problem_specs = args.problems.split(";") if args.problems else None
    repeat, max_iter = (1, 300) if args.small else (args.repeat, args.max_iter)
    main(args.small, repeat, args.tol, max_iter, regot, problem_specs)
