"""Performance profile of the equality-constrained solvers on CUTEst problems (S2MPJ).

Runs ``alm-sketch``, ``alm-newton`` and the SciPy and IPOPT baselines on a suite (default
``cutest-eq``, the 41 problems of the AdaSketch-Newton paper) through ``optkit.bench``, to
the KKT residual ``tol``, then writes the report: a summary table, the Dolan–Moré
performance profiles of time and iterations, and convergence plots per problem.

Needs ``pip install 'optkit[cutest]'`` (and ``'optkit[ipopt]'`` for the IPOPT baseline,
which is left out when cyipopt is not installed).

Run: ``python examples/cutest_profile.py [--problems cutest/HS28,cutest/BT2] [--out cutest-profile]``.
"""

import argparse

from optkit.backend import has_module
from optkit.bench import format_summary, run_benchmark
from optkit.report import make_report

SOLVERS = ["scipy-trust-constr", "alm-sketch", "alm-newton", "scipy-slsqp", "ipopt"]


def main(problems: list[str], tol: float, time_limit: float, out: str) -> None:
    solvers = [s for s in SOLVERS if s != "ipopt" or has_module("cyipopt")]
    bench = run_benchmark(
        problems, solvers, solver_options={"tol": tol, "max_iter": 3000}, time_limit=time_limit, out_dir=out
    )
    print(format_summary(bench.summary))
    for solver in solvers:
        rows = [r for r in bench.summary if r["solver"] == solver]
        solved = sum(r["status"] == "converged" and r.get("kkt", float("inf")) <= tol for r in rows)
        print(f"{solver:20s} solved {solved}/{len(rows)} to KKT <= {tol:g}")
    print(f"report: {make_report(out)}  (performance profile: {out}/profile_time.png)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="cutest-eq", help="comma-separated problem specs or suite names")
    parser.add_argument("--tol", type=float, default=1e-6, help="KKT residual to reach")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--out", default="cutest-profile")
    args = parser.parse_args()
    main(args.problems.split(","), args.tol, args.time_limit, args.out)
