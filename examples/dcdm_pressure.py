"""Train a small DCDM model, then race it against CG, IC(0)-PCG, PyAMG and deflated PCG.

Trains a direction network for ``dcdm`` on small pressure systems (a closed box with spheres and
a liquid pool, ``--train-n`` cells a side), then solves one obstacle geometry it never saw
(``--geometry``, ``--n``) to a relative residual of ``--tol`` with every linear solver through
``optkit.bench``: the model just trained, the model shipped with the package, ``scipy-cg``,
IC(0)-preconditioned CG, PyAMG-preconditioned CG and deflated PCG. Prints the benchmark table
and plots the relative residual against iterations and against time.

    python examples/dcdm_pressure.py                       # ~3 minutes on two CPU cores
    python examples/dcdm_pressure.py --n 64 --geometry spheres --train-steps 1000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from optkit.bench import format_summary, run_benchmark
from solvers.linear.dcdm_training import TrainingConfig, train

SOLVERS = ["scipy-cg", "pcg:preconditioner=ichol", "pyamg", "deflated-pcg", "dcdm"]


def train_small_model(train_n: int, steps: int, workdir: Path) -> Path:
    """A 16-filter, 3-level network trained for ``steps`` Adam steps; the path of its model file."""
    config = TrainingConfig(
        problems=(
            f"linear/pressure-3d:n={train_n},geometry=spheres,seed=0",
            f"linear/pressure-3d:n={train_n},geometry=liquid,seed=0",
        ),
        architecture={"filters": 16, "levels": 3, "down": 2, "bottom": 2, "up": 2},
        lanczos_steps=min(300, train_n**3 // 4),
        steps=steps,
        checkpoint_every=max(1, steps // 10),
    )
    run = train(config, workdir, command="examples/dcdm_pressure.py")
    print(f"trained {steps} steps in {run.elapsed_s:.0f} s: loss {run.losses[0]:.3f} -> {run.losses[-1]:.3f}")
    return workdir / "model.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="cells a side of the test system")
    parser.add_argument("--geometry", default="bunny", choices=("spheres", "bunny", "liquid", "box"))
    parser.add_argument("--seed", type=int, default=1, help="seed of the test geometry (training uses 0)")
    parser.add_argument("--train-n", type=int, default=16, help="cells a side of the training systems")
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--out", default="dcdm_pressure.png")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        model = train_small_model(args.train_n, args.train_steps, Path(workdir))
        problem = f"linear/pressure-3d:n={args.n},geometry={args.geometry},seed={args.seed}"
        solvers = [*SOLVERS, f"dcdm:model={model}"]
        bench = run_benchmark([problem], solvers, solver_options={"tol": args.tol, "max_iter": 5000}, progress=False)
    print(format_summary(bench.summary))
    fig, (by_iteration, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for run in bench.runs:
        label = "dcdm (trained here)" if run.solver.startswith("dcdm:") else run.solver
        rows = [r for r in run.trace if r.get("residual") is not None]
        by_iteration.semilogy([r["iter"] for r in rows], [r["residual"] for r in rows], label=label)
        by_time.semilogy([r["time"] for r in rows], [r["residual"] for r in rows], label=label)
    for ax, xlabel in ((by_iteration, "iteration"), (by_time, "time (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("||b - Ax|| / ||b||")
        ax.grid(True, alpha=0.3)
    by_iteration.legend(fontsize=8)
    fig.suptitle(problem)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
