"""Time and iterations of five ways to solve the first Newton KKT system of constrained problems.

For ``constrained-logreg/<set>`` (LIBSVM data under ``$OPTKIT_DATA``, default ``../shared/data``),
``pde-control:N=...`` and a synthetic dense logistic Hessian, the system
``[[B, J^T], [J, 0]] z = -[grad_x L; c]`` at ``(x0, y0)`` (``B = lag_hess``, ``J = jac``) is solved
to the relative residual ``rtol`` (default 1e-8) by

* ``direct``: ``scipy.linalg.solve`` (dense) or SuperLU of ``K`` (sparse);
* ``minres``: :func:`optkit.krylov.minres` without a preconditioner;
* ``factor`` / ``nystrom``: :class:`optkit.saddle_point.SaddlePointSolver` (set-up included);
* ``factor, GG rho``: ``"factor"`` with Golub & Greif's ``rho = ||B|| / ||J||^2`` instead of the scale rule;
* ``sketch``: Gaussian sketch-and-project (:class:`optkit.sketch.SketchProjector`), stopped at
  the budget ``--sketch-seconds``; the residual it reached is printed.

Every row prints seconds, iterations and the true relative residual. Single-threaded BLAS.

    python examples/kkt_preconditioners.py            # the full table (a few minutes)
    python examples/kkt_preconditioners.py --small    # two small sets and N = 16, seconds
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads BLAS: single-threaded timings

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import optkit
from optkit.krylov import minres
from optkit.saddle_point import SaddlePointSolver
from optkit.sketch import SketchProjector

LOGREG_SETS = ("ionosphere_scale", "sonar_scale", "splice_scale", "mushrooms", "a9a")


def newton_system(problem):
    """``B, J, b`` of the first Newton step at ``(x0, y0)``."""
    x, y = problem.x0, problem.y0
    B, J = problem.lag_hess(x, y), problem.jac(x)
    b = -np.concatenate([problem.grad(x) + J.T @ y, problem.cons(x)])
    return B, J, b


def synthetic_logistic(n: int, m: int = 10, seed: int = 0):
    """A dense logistic-regression Hessian ``X^T D X / N + 1e-3 I`` (column scales decaying as ``1/j``) and ``m``
    Gaussian constraints: the decaying spectrum of a data Hessian, at sizes where a Cholesky costs seconds."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((2 * n, n)) / np.arange(1, n + 1)
    weights = rng.uniform(0.05, 0.25, 2 * n)
    B = (X.T * weights) @ X / (2 * n) + 1e-3 * np.eye(n)
    J = rng.standard_normal((m, n))
    return B, J, rng.standard_normal(n + m)


def kkt_matrix(B, J):
    m = J.shape[0]
    if sp.issparse(B) or sp.issparse(J):
        return sp.block_array([[sp.csr_array(B), sp.csr_array(J).T], [sp.csr_array(J), None]], format="csr")
    return np.block([[B, J.T], [J, np.zeros((m, m))]])


def relative_residual(K, z, b) -> float:
    return float(np.linalg.norm(K @ z - b) / np.linalg.norm(b))


def run_direct(K, b, B, J, args):
    start = time.perf_counter()
    if sp.issparse(K):
        z = spla.splu(sp.csc_array(K)).solve(b)
    else:
        z = sla.solve(K, b, assume_a="sym")
    return time.perf_counter() - start, "1", z, "LU"


def run_minres(K, b, B, J, args):
    start = time.perf_counter()
    deadline = start + args.budget
    result = minres(K, b, rtol=args.rtol, max_iter=100 * b.size, callback=lambda _: time.perf_counter() >= deadline)
    note = "budget" if result.status.name == "USER_STOPPED" else result.status.name.lower()
    return time.perf_counter() - start, str(result.nit), result.x, note


def golub_greif_rho(B, J) -> float:
    """``||B||_2 / ||J||_2^2`` (Golub & Greif 2003), by ARPACK."""
    norm_B = abs(spla.eigsh(spla.aslinearoperator(B), k=1, which="LM", return_eigenvectors=False)[0])
    return norm_B / spla.svds(spla.aslinearoperator(J), k=1, return_singular_vectors=False)[0] ** 2


def run_saddle(method, rho_rule=None):
    def run(K, b, B, J, args):
        start = time.perf_counter()
        rho = None if rho_rule is None else rho_rule(B, J)
        solver = SaddlePointSolver(B, J, preconditioner=method, rho=rho, rng=0)
        result = solver.solve(b, rtol=args.rtol, deadline=start + args.budget)
        note = f"rho={result.rho:.2g}" + ("" if result.rank is None else f" rank={result.rank}")
        if not result.success:
            note += f" {result.status.name.lower()}"
        return time.perf_counter() - start, str(result.nit), result.z, f"{note}, set-up {solver.setup_time_s:.3f} s"

    return run


def run_sketch(K, b, B, J, args):
    start = time.perf_counter()
    projector = SketchProjector(K, b, sketch="gaussian", sampling="uniform", rng=np.random.default_rng(0))
    result = projector.run(np.zeros(b.size), args.rtol, 0.0, 10**12, deadline=start + args.sketch_seconds)
    return time.perf_counter() - start, str(result.nit), result.x, result.status.name.lower()


METHODS = {
    "direct": run_direct,
    "minres": run_minres,
    "factor": run_saddle("factor"),
    "nystrom": run_saddle("nystrom"),
    "factor, GG rho": run_saddle("factor", golub_greif_rho),
    "sketch": run_sketch,
}


def cases(args):
    sets = LOGREG_SETS[:2] if args.small else LOGREG_SETS
    grids = (16,) if args.small else (32, 64, 128)
    for name in sets:
        try:
            problem = optkit.get_problem(f"constrained-logreg/{name}")
        except FileNotFoundError as err:
            print(f"skipped constrained-logreg/{name}: {err}")
            continue
        yield problem.name, newton_system(problem)
    for N in grids:
        yield f"pde-control:N={N}", newton_system(optkit.get_problem(f"pde-control:N={N}"))
    for n in (300,) if args.small else (1000, 2000, 4000, 6000):
        yield f"synthetic logistic Hessian n={n}", synthetic_logistic(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="two LIBSVM sets, N = 16, n = 300: a few seconds")
    parser.add_argument("--rtol", type=float, default=1e-8)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds each MINRES run may take")
    parser.add_argument("--sketch-seconds", type=float, default=5.0, help="sketch-and-project budget")
    args = parser.parse_args()
    if args.small:
        args.sketch_seconds = min(args.sketch_seconds, 0.5)
        args.budget = min(args.budget, 10.0)
    os.environ.setdefault("OPTKIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    # compile the sketch kernels (numba, cached) outside the timings
    warm = np.eye(4)
    SketchProjector(warm, np.ones(4), sketch="gaussian", sampling="uniform", rng=np.random.default_rng(0)).run(
        np.zeros(4), 1e-8, 0.0, 100
    )
    print(f"rtol {args.rtol:g}; threads: {os.environ['OMP_NUM_THREADS']}; sketch budget {args.sketch_seconds:g} s")
    print("| problem | n + m | method | seconds | iterations | residual | note |")
    print("| --- | ---: | --- | ---: | ---: | ---: | --- |")
    for name, (B, J, b) in cases(args):
        K = kkt_matrix(B, J)
        for method, run in METHODS.items():
            if method == "nystrom" and sp.issparse(B) and J.shape[0] > 2000:
                print(f"| {name} | {b.size} | {method} | - | - | - | skipped: rank > m = {J.shape[0]} needs a dense "
                      f"{B.shape[0]} x {J.shape[0]} basis |")  # fmt: skip
                continue
            seconds, iterations, z, note = run(K, b, B, J, args)
            residual = relative_residual(K, z, b)
            print(f"| {name} | {b.size} | {method} | {seconds:.3f} | {iterations} | {residual:.1e} | {note} |")


if __name__ == "__main__":
    main()
