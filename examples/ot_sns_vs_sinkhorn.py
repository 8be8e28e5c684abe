"""Convergence of Sinkhorn-Newton-Sparse against log-domain Sinkhorn (ours and POT's).

Runs ``sns``, ``sinkhorn`` and ``pot-sinkhorn-log`` on one OT problem through
``optkit.bench`` and plots the L1 marginal error against time.

Run: ``python examples/ot_sns_vs_sinkhorn.py [--problem ot/random-assignment:n=500,eta=1200]
[--time-limit 60] [--out ot_convergence.png]``.
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from optkit.bench import format_summary, run_benchmark  # noqa: E402

SOLVERS = ["pot-sinkhorn-log", "sinkhorn", "sns"]


def main(problem: str, time_limit: float, out: str) -> None:
    bench = run_benchmark([problem], SOLVERS, solver_options={"tol": 1e-9, "time_limit": time_limit}, progress=False)
    print(format_summary(bench.summary))
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in bench.runs:
        rows = [r for r in run.trace if r.get("marginal_error") is not None]
        ax.semilogy([r["time"] for r in rows], [r["marginal_error"] for r in rows], label=run.solver)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("L1 marginal error")
    ax.set_title(problem)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="ot/random-assignment:n=500,eta=1200")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per solver")
    parser.add_argument("--out", default="ot_convergence.png")
    args = parser.parse_args()
    main(args.problem, args.time_limit, args.out)
