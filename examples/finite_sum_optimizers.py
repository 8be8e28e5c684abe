"""Torch optimizers and L-BFGS on one finite-sum problem: objective and test accuracy against epochs.

Runs ``scipy-lbfgsb`` (full gradients), ``adamw`` and ``galore-adamw`` (minibatches; GaLore
projects the softmax weight matrix) on a softmax regression through ``optkit.bench``, prints the
table, each run's final test accuracy, and plots the exact objective and the test accuracy
against epochs (passes over the training data: one L-BFGS evaluation, or ``N / batch_size``
minibatch steps).

Run: ``python examples/finite_sum_optimizers.py [--problem ml/softmax/digits] [--epochs 30]
[--out finite_sum.png]``; ``ml/softmax/mnist`` and ``ml/logistic/a9a`` read ``$OPTKIT_DATA``.
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from optkit.bench import format_summary, run_benchmark  # noqa: E402


def main(problem: str, epochs: float, batch_size: int, rank: int, out: str) -> None:
    minibatch = f"batch_size={batch_size},epochs={epochs},lr=0.01,schedule=constant,warmup=0.0,eval_every=10"
    solvers = ["scipy-lbfgsb:max_iter=500", f"adamw:{minibatch}", f"galore-adamw:{minibatch},rank={rank}"]
    bench = run_benchmark([problem], solvers, progress=False)
    print(format_summary(bench.summary), end="\n\n")
    for run in bench.runs:
        print(f"{run.solver.split(':')[0]:13s} test accuracy {run.metrics['test_accuracy']:.4f}  fun {run.fun:.6f}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for run in bench.runs:
        rows = [r for r in run.trace if r.get("fun") is not None]
        label = run.solver.split(":")[0]
        axes[0].semilogy([r["epoch"] for r in rows], [r["fun"] for r in rows], label=label)
        axes[1].plot([r["epoch"] for r in rows], [r["test_accuracy"] for r in rows], label=label)
    for ax, name in zip(axes, ("objective (exact, full data)", "test accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(problem, fontsize="medium")
        ax.grid(True, alpha=0.3)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="ml/softmax/digits")
    parser.add_argument("--epochs", type=float, default=30.0, help="passes of the minibatch optimizers")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rank", type=int, default=4, help="GaLore's rank on the (classes, features) weights")
    parser.add_argument("--out", default="finite_sum.png")
    args = parser.parse_args()
    main(args.problem, args.epochs, args.batch_size, args.rank, args.out)
