"""Call a solver from a script: the same Poisson system with four solvers, numpy and torch.

Run: ``python examples/quickstart.py [--n 128]``.
"""

import argparse

import numpy as np

import optkit
from optkit.backend import has_module


def main(n: int) -> None:
    problem = optkit.get_problem("linear/poisson-2d", n=n, rhs="manufactured", seed=0)
    print(f"{problem.name}: {problem.n} unknowns")
    for solver, options in [
        ("cg", {}),
        ("pcg", {"preconditioner": "ichol"}),
        ("scipy-cg", {}),
        ("pyamg", {}),
    ]:
        result = optkit.solve(problem, solver, tol=1e-10, **options)
        quality = problem.evaluate(result.x)
        print(
            f"  {solver:9s} {result.status.name:10s} nit={result.nit:5d} time={result.time_s:7.3f}s "
            f"residual={quality['residual']:.2e} error={quality['error']:.2e}"
        )

    if has_module("torch"):
        result = optkit.solve(problem.to("torch"), "cg", tol=1e-10)
        print(f"  cg (torch) {result.status.name:10s} nit={result.nit:5d} time={result.time_s:7.3f}s")
    else:
        print("  cg (torch) skipped: torch is not installed")

    # Any matrix or operator works: here a diagonal operator built directly.
    A = optkit.aslinearoperator(np.diag([1.0, 2.0, 4.0]), tags={"symmetric", "psd"})
    small = optkit.solve(optkit.LinearSystemProblem(A, np.ones(3)), "cg", tol=1e-12)
    print("  diag(1, 2, 4) x = 1  ->  x =", np.round(small.x, 12))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="grid points per side")
    main(parser.parse_args().n)
