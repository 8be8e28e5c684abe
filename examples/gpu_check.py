"""Every GPU comparison of optkit in one run, printed as one table.

Run on a machine with CUDA: ``python examples/gpu_check.py`` (a few minutes on one GPU).
``--target torch --small`` runs the same comparisons on the CPU with small sizes (a smoke test).

Comparisons (each anchored on the CPU baseline of the same run):

* ``cg`` on 3-D Poisson 128³ (2.1 M unknowns, 7-point), float64, on CUDA, against
  ``scipy-cg`` on the CPU, both to relative residual 1e-8 (issue: optkit core).
* ``sns`` against POT's ``sinkhorn_log``, both on CUDA in float64, to L1 marginal error
  1e-9 on the hard large OT cases: 2-D point clouds (squared-Euclidean cost / max) with
  reg = 2e-4, and random assignment with eta = 2.4 n, at n = 5000 and 20000 (issue: OT).
  POT runs under a time limit; a limited run reports the error it reached.
"""

import argparse

from optkit.bench import run_benchmark


def comparisons(small: bool):
    """(problems, solvers, options) of each comparison."""
    n3 = 24 if small else 128
    # reg = 2e-4 (eta = 5000) on point clouds, eta = 2.4 n on random assignment; the smoke
    # test keeps the shapes of the runs but not their difficulty
    sizes = (100,) if small else (5000, 20000)
    ot_problems = [spec for n in sizes for spec in (
        f"ot/point-clouds:n={n},eta={100 if small else 5000}",
        f"ot/random-assignment:n={n},eta={100 if small else int(2.4 * n)}",
    )]
    return [
        ([f"linear/poisson-3d:n={n3}"], ["scipy-cg", "cg@{target}"], {"tol": 1e-8}),
        (ot_problems, ["pot-sinkhorn-log@{target}", "sns@{target}"], {"tol": 1e-9, "time_limit": 60}),
    ]


def main(target: str, small: bool, repeat: int) -> None:
    rows = []
    for problems, solvers, options in comparisons(small):
        bench = run_benchmark(
            problems,
            [s.format(target=target) for s in solvers],
            solver_options=options,
            repeat=repeat,
            progress=False,
        )
        rows.extend(bench.summary)
    from optkit.bench import format_summary

    print(format_summary(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cuda", choices=("cuda", "torch"), help="where the GPU solvers run")
    parser.add_argument("--small", action="store_true", help="small sizes (CPU smoke test)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    main(args.target, args.small, args.repeat)
